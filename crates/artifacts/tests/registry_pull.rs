//! The registry client against a local server that drops a blob download halfway (the pull
//! resumes with a Range request and re-hashes what it had) or serves bytes that do not match
//! the digest (refused, nothing cached).

mod common;

use std::sync::atomic::Ordering;

use artifacts::oci::Reference;
use artifacts::registry::{Client, RegistryError};
use artifacts::Digest;

fn routes(blob: &[u8], served: Vec<u8>) -> (Vec<(String, Vec<u8>)>, Digest) {
    let digest = Digest::of(blob);
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":1}},"layers":[{{"digest":"{digest}","size":{n}}}]}}"#,
        d = Digest::of(b"{}"),
        n = blob.len()
    );
    (
        vec![
            ("/v2/test/img/manifests/v1".into(), manifest.into_bytes()),
            (format!("/v2/test/img/blobs/{digest}"), served),
        ],
        digest,
    )
}

fn tmp(tag: &str) -> std::path::PathBuf {
    testkit::tempdir(&format!("pull-{tag}"))
}

#[test]
fn dropped_blob_download_resumes_and_verifies() {
    let blob = testkit::pattern(2_000_000, 2);
    let (routes, digest) = routes(&blob, blob.clone());
    let srv = common::serve(routes, &format!("/v2/test/img/blobs/{digest}"), 1);
    let host = srv.base.trim_start_matches("http://");
    let r = Reference::parse(&format!("{host}/test/img:v1")).unwrap();
    let client = Client::new(&r, false);
    let (manifest, mdigest) = client.manifest_by_tag("v1").unwrap();
    assert_eq!(mdigest, Digest::of(&manifest));
    let dest = tmp("resume").join("blobs").join(digest.hex());
    let n = client
        .blob(&digest, blob.len() as u64, &dest, &|_| {})
        .unwrap();
    assert_eq!(n, blob.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == blob);
    assert_eq!(srv.requests.load(Ordering::SeqCst), 2);
    assert_eq!(srv.ranged.load(Ordering::SeqCst), 1, "resumed with a Range");
}

#[test]
fn blob_with_wrong_bytes_is_refused_and_not_cached() {
    let blob = testkit::pattern(500_000, 3);
    let mut evil = blob.clone();
    evil[1234] ^= 1;
    let (routes, digest) = routes(&blob, evil);
    let srv = common::serve(routes, "", 0);
    let host = srv.base.trim_start_matches("http://");
    let client = Client::new(
        &Reference::parse(&format!("{host}/test/img:v1")).unwrap(),
        false,
    );
    let dir = tmp("evil");
    let dest = dir.join(digest.hex());
    let e = client
        .blob(&digest, blob.len() as u64, &dest, &|_| {})
        .unwrap_err();
    assert!(matches!(e, RegistryError::Digest { .. }), "{e}");
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no partial file left"
    );
    // A manifest pinned by a digest it does not have is refused too.
    let bad = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
    let e = client.manifest_by_digest(&bad).unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::NotFound { .. } | RegistryError::Digest { .. }
        ),
        "{e}"
    );
}

#[test]
fn bearer_token_from_the_realm_the_registry_names() {
    let blob = testkit::pattern(300_000, 4);
    let (routes, digest) = routes(&blob, blob.clone());
    let srv = common::serve_auth(routes, "", 0, Some("tok-123"));
    let host = srv.base.trim_start_matches("http://");
    let client = Client::new(
        &Reference::parse(&format!("{host}/test/img:v1")).unwrap(),
        false,
    );
    client.manifest_by_tag("v1").unwrap();
    let dest = tmp("bearer").join(digest.hex());
    client
        .blob(&digest, blob.len() as u64, &dest, &|_| {})
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == blob);
    assert_eq!(
        srv.tokens.load(Ordering::SeqCst),
        1,
        "one token, reused for the blob"
    );
}

#[test]
fn a_blob_longer_than_its_descriptor_is_refused_as_it_arrives() {
    let blob = testkit::pattern(100_000, 5);
    let mut long = blob.clone();
    long.extend(testkit::pattern(5_000_000, 6));
    let (routes, digest) = routes(&blob, long);
    let srv = common::serve(routes, "", 0);
    let host = srv.base.trim_start_matches("http://");
    let client = Client::new(
        &Reference::parse(&format!("{host}/test/img:v1")).unwrap(),
        false,
    );
    let dir = tmp("long");
    let dest = dir.join(digest.hex());
    let e = client
        .blob(&digest, blob.len() as u64, &dest, &|_| {})
        .unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing kept");
    // A descriptor without a size is refused before asking.
    let e = client.blob(&digest, 0, &dest, &|_| {}).unwrap_err();
    assert!(e.to_string().contains("no size"), "{e}");
}

/// The way from a tag to its artifacts asks the store at each digest, and stops at the first it
/// has: a second run of a tagged multi-arch image costs one request (the index), and a run by a
/// digest the store has built costs none.
#[test]
fn a_built_image_costs_one_manifest_request_and_a_pinned_one_none() {
    use testkit::Layer;
    let layer = Layer::new()
        .dir("boot", 0o755)
        .file("boot/vmlinuz-6.1.0", 0o644, 0, &testkit::pattern(4096, 1))
        .file(
            "boot/initrd.img-6.1.0",
            0o644,
            0,
            &testkit::pattern(2048, 2),
        )
        .file("etc/os-release", 0o644, 0, b"ID=test\n")
        .bytes();
    let layer_digest = Digest::of(&layer);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{cn}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{n}}}]}}"#,
        c = Digest::of(&config),
        cn = config.len(),
        n = layer.len()
    );
    let manifest_digest = Digest::of(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{n},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        n = manifest.len()
    );
    let by_digest = format!("/v2/test/img/manifests/{manifest_digest}");
    let srv = common::serve(
        vec![
            ("/v2/test/img/manifests/v1".into(), index.into_bytes()),
            (by_digest.clone(), manifest.into_bytes()),
            (
                format!("/v2/test/img/blobs/{}", Digest::of(&config)),
                config,
            ),
            (format!("/v2/test/img/blobs/{layer_digest}"), layer),
        ],
        &by_digest,
        0,
    );
    let host = srv.base.trim_start_matches("http://").to_string();
    let state = tmp("cached-once");
    let first = common::open_quietly(&format!("{host}/test/img:v1"), &state).unwrap();
    assert_eq!(srv.requests.load(Ordering::SeqCst), 1, "the manifest once");
    let asked = srv.all.load(Ordering::SeqCst);
    let again = common::open_quietly(&format!("{host}/test/img:v1"), &state).unwrap();
    assert_eq!(again.kernel.path, first.kernel.path);
    assert_eq!(
        srv.all.load(Ordering::SeqCst),
        asked + 1,
        "only the index, the second time"
    );
    let pinned =
        common::open_quietly(&format!("{host}/test/img@{manifest_digest}"), &state).unwrap();
    assert_eq!(pinned.kernel.path, first.kernel.path);
    assert_eq!(
        srv.all.load(Ordering::SeqCst),
        asked + 1,
        "nothing for a digest the store has"
    );
    let _ = std::fs::remove_dir_all(state);
}
