//! A registry that lies about digests. Index entries, configs and layers whose "digest" is a
//! path (`../../../x`, `/abs`), a manifest served under a digest it does not have, and a digest
//! full of escape codes: each pull fails with a clear error, and nothing outside the state
//! directory is created, renamed or removed.

mod common;

use std::path::Path;

use artifacts::Digest;
use artifacts::{BootSet, SourceError};

/// Through the one entry, as `daybreak` does it.
fn pull(host: &str, state: &Path) -> Result<BootSet, SourceError> {
    common::open_quietly(&format!("{host}/evil/img:v1"), state)
}

/// Every path under `root`, sorted, for before/after comparisons.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn index_with(digest: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":100,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    )
    .into_bytes()
}

fn manifest_with(config: &str, layer: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{config}","size":2}},"layers":[{{"digest":"{layer}","size":10}}]}}"#
    )
    .into_bytes()
}

/// Serves `doc` as the tag `v1` (and under every path the hostile digest would be asked by),
/// pulls it into `ROOT/a/b/state`, and returns the error; `ROOT` must be unchanged but for
/// the state directory.
fn refused(tag: &str, doc: Vec<u8>, extra: Vec<(String, Vec<u8>)>) -> String {
    let root = testkit::tempdir(&format!("hostile-{tag}"));
    let state = root.join("a/b/state");
    std::fs::create_dir_all(&state).unwrap();
    // A directory a successful attack would rename away and delete.
    std::fs::create_dir_all(root.join("victim")).unwrap();
    std::fs::write(root.join("victim/keep"), b"keep").unwrap();
    let mut routes = vec![("/v2/evil/img/manifests/v1".to_string(), doc.clone())];
    routes.extend(extra);
    let srv = common::serve(routes, "", 0);
    let host = srv.base.trim_start_matches("http://").to_string();
    let before: Vec<String> = tree(&root)
        .into_iter()
        .filter(|p| !p.starts_with(&state.display().to_string()))
        .collect();
    let e = pull(&host, &state).expect_err("a hostile registry must not be pulled from");
    let after: Vec<String> = tree(&root)
        .into_iter()
        .filter(|p| !p.starts_with(&state.display().to_string()))
        .collect();
    assert_eq!(before, after, "nothing outside the state directory changes");
    assert_eq!(std::fs::read(root.join("victim/keep")).unwrap(), b"keep");
    let msg = e.to_string();
    assert!(
        !msg.contains('\n') && !msg.contains('\x1b'),
        "hostile text is shown escaped: {msg}"
    );
    eprintln!("{tag}: {msg}");
    msg
}

#[test]
fn index_entry_digest_that_is_a_relative_path_is_refused() {
    let msg = refused("rel", index_with("../../../victim"), vec![]);
    assert!(msg.contains("not a digest"), "{msg}");
}

#[test]
fn index_entry_digest_that_is_an_absolute_path_is_refused() {
    let root = testkit::tempdir("hostile-abs-target");
    let target = root.join("cron.d");
    let msg = refused(
        "abs",
        index_with(&target.display().to_string()),
        vec![(
            format!("/v2/evil/img/manifests/{}", target.display()),
            manifest_with("x", "x"),
        )],
    );
    assert!(msg.contains("not a digest"), "{msg}");
    assert!(!target.exists(), "no directory made at the absolute path");
}

#[test]
fn layer_and_config_digests_are_checked_too() {
    let good = Digest::of(b"{}").to_string();
    let msg = refused("layer", manifest_with(&good, "../../../victim"), vec![]);
    assert!(msg.contains("not a digest"), "{msg}");
    let msg = refused("config", manifest_with("/etc/passwd", &good), vec![]);
    assert!(msg.contains("not a digest"), "{msg}");
}

#[test]
fn a_manifest_fetched_by_digest_must_have_that_digest() {
    // The index names a well-formed digest, but the registry serves other bytes under it.
    let claimed = Digest::of(b"what the index promised");
    let served = manifest_with(&Digest::of(b"{}").to_string(), &claimed.to_string());
    let msg = refused(
        "mismatch",
        index_with(claimed.as_str()),
        vec![(format!("/v2/evil/img/manifests/{claimed}"), served)],
    );
    assert!(msg.contains("does not match its digest"), "{msg}");
}

#[test]
fn a_digest_of_escape_codes_is_shown_escaped() {
    let evil = format!("sha256:\\u001b[2J\\nforged log line{}", "a".repeat(3000));
    let msg = refused("escape", index_with(&evil), vec![]);
    assert!(msg.len() < 1000, "bounded: {} bytes", msg.len());
}
