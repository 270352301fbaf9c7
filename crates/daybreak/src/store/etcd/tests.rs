//! The etcd store against a real etcd on loopback (Debian's `etcd-server`).

use std::time::Duration;

use pxe::Mac;

use super::super::contract::eventually;
use super::super::{update, Change, Location, MachineStore, StoreConfig, StoreError};
use super::{EtcdStore, Target};

fn config(endpoint: &str, prefix: &str) -> StoreConfig {
    StoreConfig {
        location: Location::Etcd(Target {
            endpoints: vec![endpoint.to_string()],
            prefix: prefix.to_string(),
        }),
        ..Default::default()
    }
}

/// A real etcd and two stores on it under `prefix` (two replicas); `None` when etcd is not here.
fn two_replicas(tag: &str, prefix: &str) -> Option<(testkit::Etcd, EtcdStore, EtcdStore)> {
    let etcd = testkit::Etcd::start(tag)?;
    let c = config(&etcd.endpoint, prefix);
    let (a, b) = (
        EtcdStore::connect(&c).unwrap(),
        EtcdStore::connect(&c).unwrap(),
    );
    Some((etcd, a, b))
}

/// A replica of its own id (one test process plays several).
fn member(id: &str, address: &str) -> crate::store::Member {
    crate::store::Member {
        id: id.into(),
        ..crate::store::Member::me(vec![address.into()], 8090)
    }
}

fn booted(at: u64) -> Change {
    Change::Booted {
        at,
        arch: None,
        firmware: None,
        uuid: None,
    }
}

#[test]
fn the_etcd_store_keeps_the_contract() {
    let Some(etcd) = testkit::Etcd::start("etcd-contract") else {
        return;
    };
    let c = config(&etcd.endpoint, "/contract");
    super::super::contract::check(&|| Box::new(EtcdStore::connect(&c).unwrap()));
}

#[test]
fn store_urls_are_read_strictly() {
    let ok: Location = "etcd://10.0.0.5:2379,etcd-1.lan:2379/site-a/daybreak"
        .parse()
        .unwrap();
    assert_eq!(
        ok,
        Location::Etcd(Target {
            endpoints: vec!["10.0.0.5:2379".into(), "etcd-1.lan:2379".into()],
            prefix: "/site-a/daybreak".into(),
        })
    );
    let Location::Etcd(t) = "etcd://[fd00::5]:2379".parse().unwrap() else {
        panic!()
    };
    assert_eq!(t.prefix, "/daybreak");
    assert_eq!("file".parse::<Location>().unwrap(), Location::File);
    for bad in [
        "etcd://",
        "etcd://host",
        "etcd://host:0",
        "etcd://host:99999",
        "etcd://host:2379/",
        "etcd://host:2379/a//b",
        "etcd://host:2379/a b",
        "etcd://ho st:2379",
        "etcd://:2379",
        "http://host:2379",
        "/var/lib/daybreak",
    ] {
        let e = bad.parse::<Location>().unwrap_err();
        assert!(e.contains("etcd://HOST:PORT"), "{bad}: {e}");
    }
}

/// Item: an unreachable cluster at start is one clear line naming the endpoint and the fix.
#[test]
fn an_unreachable_etcd_is_named_with_the_fix() {
    let port = testkit::free_port();
    let c = config(&format!("127.0.0.1:{port}"), "/daybreak");
    let t = std::time::Instant::now();
    let e = EtcdStore::connect(&c).err().expect("nothing listens there");
    let text = format!("{e:#}");
    assert!(
        text.contains(&format!("etcd://127.0.0.1:{port}/daybreak")) && text.contains("--store"),
        "{text}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Item: nothing in etcd is trusted blindly: a hostile or corrupt value is skipped with a log
/// line, never a crash, and the machine's next write replaces it.
#[test]
fn hostile_values_in_etcd_are_skipped_and_replaced() {
    let Some(etcd) = testkit::Etcd::start("etcd-hostile") else {
        return;
    };
    let put = |k: &str, v: &str| etcd.ctl(&["put", k, v]).unwrap();
    put("/h/machines/525400aabb01", "{not json");
    put("/h/machines/525400aabb02", r#"{"mac":"52:54:00:aa:bb:09"}"#);
    put("/h/machines/525400aabb03", &" ".repeat(20 << 10));
    put("/h/machines/not-a-mac", r#"{"mac":"52:54:00:aa:bb:04"}"#);
    put("/h/machines/525400AABB05", r#"{"mac":"52:54:00:aa:bb:05"}"#);
    put(
        "/h/machines/525400aabb06",
        r#"{"mac":"52:54:00:aa:bb:06","boots":3,"grant":{"nonce":"../../x","at":1}}"#,
    );
    let s = EtcdStore::connect(&config(&etcd.endpoint, "/h")).unwrap();
    assert_eq!(s.len(), 1, "only the one good record");
    let six = s.cached("52:54:00:aa:bb:06".parse().unwrap()).unwrap();
    assert_eq!(six.record.boots, 3);
    assert_eq!(
        six.record.grant, None,
        "a grant Daybreak could not have made"
    );
    // Arriving through the watch: skipped too, and a good record turned bad leaves the snapshot.
    put("/h/machines/525400aabb07", "[]");
    put("/h/machines/525400aabb06", "garbage");
    eventually(Duration::from_secs(2), || s.is_empty().then_some(()));
    // The next write of a machine whose value is hostile replaces it.
    let one: Mac = "52:54:00:aa:bb:01".parse().unwrap();
    let r = update(&s, one, &booted(7)).unwrap().unwrap();
    assert_eq!((r.mac, r.boots), (one, 1));
    let stored = etcd
        .ctl(&["get", "--print-value-only", "/h/machines/525400aabb01"])
        .unwrap();
    assert!(stored.contains("\"mac\":\"52:54:00:aa:bb:01\""), "{stored}");
    eventually(Duration::from_secs(2), || (s.len() == 1).then_some(()));
}

/// Item: the URL-tag secret is created once, by whichever replica is first, in a transaction:
/// every replica tags with the same key; one not made by Daybreak is refused, never used.
#[test]
fn every_replica_shares_one_url_key_made_once() {
    let Some(etcd) = testkit::Etcd::start("etcd-secret") else {
        return;
    };
    let c = config(&etcd.endpoint, "/s");
    let keys: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let c = c.clone();
                scope.spawn(move || {
                    let s = EtcdStore::connect(&c).unwrap();
                    s.shared_secret(format!("{i:064x}")).unwrap().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    assert_eq!(
        etcd.ctl(&["get", "--print-value-only", "/s/secret"])
            .unwrap()
            .trim(),
        keys[0]
    );
    let dir = testkit::tempdir("etcd-secret-state");
    let s = EtcdStore::connect(&c).unwrap();
    let a = crate::tokens::Tokens::for_store(&s, &dir).unwrap();
    let b = crate::tokens::Tokens::for_store(&EtcdStore::connect(&c).unwrap(), &dir).unwrap();
    let mac: Mac = "52:54:00:aa:bb:01".parse().unwrap();
    let kind = crate::decision::PersonalKind::Config;
    assert_eq!(a.tag(kind, mac, "n"), b.tag(kind, mac, "n"));
    assert!(
        !dir.join("url.key").exists(),
        "the key is the store's, not the host's"
    );
    etcd.ctl(&["put", "/s/secret", "../../etc/passwd"]).unwrap();
    let e = crate::tokens::Tokens::for_store(&s, &dir).err().unwrap();
    assert!(format!("{e}").contains("not made by Daybreak"), "{e}");
}

/// Item: the data plane never waits on etcd: with etcd gone, records are read from the
/// snapshot at once, a write says the store is unavailable (within the call timeout), the
/// snapshot is said not current, and when etcd is back the watch catches up by itself.
#[test]
fn with_etcd_gone_the_snapshot_answers_and_writes_say_unavailable() {
    let Some(mut etcd) = testkit::Etcd::start("etcd-gone") else {
        return;
    };
    let c = config(&etcd.endpoint, "/g");
    let s = EtcdStore::connect(&c).unwrap();
    let a: Mac = "52:54:00:aa:bb:01".parse().unwrap();
    update(&s, a, &booted(5)).unwrap();
    assert!(matches!(s.snapshot_age(), Some(Some(_))));
    etcd.kill();
    let t = std::time::Instant::now();
    assert_eq!(s.cached(a).unwrap().record.boots, 1);
    assert!(t.elapsed() < Duration::from_millis(50));
    let e = update(&s, a, &booted(6)).unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(format!("{e}").contains(&etcd.endpoint), "{e}");
    eventually(Duration::from_secs(10), || {
        matches!(s.snapshot_age(), Some(None)).then_some(())
    });
    etcd.restart();
    // Written meanwhile by another replica: seen once the watch is back.
    etcd.ctl(&[
        "put",
        "/g/machines/525400aabb02",
        r#"{"mac":"52:54:00:aa:bb:02","boots":9}"#,
    ])
    .unwrap();
    let b: Mac = "52:54:00:aa:bb:02".parse().unwrap();
    eventually(Duration::from_secs(15), || s.cached(b).map(|_| ()));
    assert!(matches!(s.snapshot_age(), Some(Some(_))));
    update(&s, a, &booted(7)).unwrap();
    assert_eq!(s.cached(a).unwrap().record.boots, 2);
}

/// Item: the machine profiles live in etcd, put by one (`daybreak machines apply`) and seen by
/// every replica: written in chunks under a generation, then the head that names it, so a
/// replica never reads half of one; a head or chunks not as Daybreak writes them are skipped.
#[test]
fn profiles_are_shared_whole_by_generation_and_hostile_ones_skipped() {
    let Some((etcd, a, b)) = two_replicas("etcd-profiles", "/p") else {
        return;
    };
    let c = config(&etcd.endpoint, "/p");
    assert!(b.shared_profiles().is_none());
    // 2.5 MiB: three chunks.
    let big: Vec<u8> = std::iter::repeat_n(b"- hostname: x\n".as_slice(), 190_000)
        .flatten()
        .copied()
        .collect();
    assert!(a.put_profiles(&big).unwrap());
    let (got, v1) = eventually(Duration::from_secs(2), || b.shared_profiles());
    assert_eq!(&got[..], &big[..]);
    let chunks = |etcd: &testkit::Etcd| {
        etcd.ctl(&["get", "/p/profiles/", "--prefix", "--keys-only"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty() && !l.ends_with("current"))
            .count()
    };
    assert_eq!(chunks(&etcd), 3);
    a.put_profiles(b"[]").unwrap();
    let (got, _) = eventually(Duration::from_secs(2), || {
        b.shared_profiles().filter(|(_, v)| *v != v1)
    });
    assert_eq!(&got[..], b"[]");
    assert_eq!(chunks(&etcd), 1, "the old generation is gone");
    // Hostile heads: garbage, a digest that does not match, chunks that are not there.
    let good = etcd
        .ctl(&["get", "--print-value-only", "/p/profiles/current"])
        .unwrap();
    for bad in [
        "garbage".to_string(),
        good.replace("\"sha256\":\"", "\"sha256\":\"00"),
        good.replace("\"chunks\":1", "\"chunks\":2"),
        r#"{"generation":"../../../etc/x1","chunks":1,"bytes":2,"sha256":"x"}"#.into(),
    ] {
        etcd.ctl(&["put", "/p/profiles/current", bad.trim()])
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(&b.shared_profiles().unwrap().0[..], b"[]", "{bad}");
        let fresh = EtcdStore::connect(&c).unwrap();
        assert!(fresh.shared_profiles().is_none(), "{bad}");
    }
    // The file store shares nothing.
    let d = testkit::tempdir("etcd-profiles-file");
    let f = super::super::FileStore::open(&d).unwrap();
    assert!(!f.put_profiles(b"[]").unwrap() && f.shared_profiles().is_none());
}

/// Item: members: one key per replica bound to a lease (id, addresses, version); gone when
/// its replica stops; a value not as Daybreak writes one is not a member.
#[test]
fn replicas_are_members_while_they_run() {
    let Some((etcd, a, b)) = two_replicas("etcd-members", "/m") else {
        return;
    };
    let me = member("a-000001", "10.0.0.2");
    a.join(me.clone());
    b.join(member("b-000002", "10.0.0.3"));
    etcd.ctl(&["put", "/m/members/x", "{\"id\":\"\\u0007\"}"])
        .unwrap();
    etcd.ctl(&["put", "/m/members/y", "garbage"]).unwrap();
    let seen = eventually(Duration::from_secs(2), || {
        let m = b.members();
        (m.len() == 2).then_some(m)
    });
    assert!(seen.contains(&me), "{seen:?}");
    assert!(seen.iter().all(|m| m.version == env!("CARGO_PKG_VERSION")));
    let lease = etcd
        .ctl(&["get", &format!("/m/members/{}", me.id), "-w", "json"])
        .unwrap();
    assert!(lease.contains("\"lease\":"), "bound to a lease: {lease}");
    // A stops (its runtime ends): its lease lapses, and it is gone from B's view.
    drop(a);
    eventually(Duration::from_secs(super::MEMBER_TTL as u64 + 5), || {
        (b.members().len() == 1).then_some(())
    });
}

/// Item: each machine's recent timeline in etcd, bounded, on a lease: a replica's steps reach
/// the others (never itself back), each key on a lease of [`crate::store::STEPS_KEPT`], and a
/// key or value not as Daybreak writes them is skipped.
#[test]
fn machines_steps_are_shared_on_a_lease_and_hostile_ones_skipped() {
    use crate::store::{StepFailure, Steps};
    let Some((etcd, a, b)) = two_replicas("etcd-steps", "/t") else {
        return;
    };
    let (ma, mb) = (
        member("a-000001", "10.0.0.2"),
        member("b-000002", "10.0.0.3"),
    );
    a.join(ma.clone());
    b.join(mb.clone());
    let mac: Mac = "52:54:00:aa:cc:01".parse().unwrap();
    let steps = Steps {
        member: ma.id.clone(),
        phase: "kernel".into(),
        last_good: Some("kernel".into()),
        failure: Some(StepFailure {
            kind: "not found".into(),
            stage: "initrd".into(),
            text: "initrd0: 404".into(),
            at: 5,
        }),
        ip: Some("10.0.0.31".into()),
        last: 1_000,
        steps: vec![
            (900, "boot script".into()),
            (1_000, "kernel: 10 bytes".into()),
        ],
    };
    a.share_steps(&[(mac, steps.clone())]).unwrap();
    let seen = eventually(Duration::from_secs(3), || {
        let mut got = None;
        b.with_steps(&mut |m| got = m.get(&mac).cloned());
        got
    });
    assert_eq!(*seen[0], steps);
    // A never gets its own steps back.
    let mut own = 1;
    a.with_steps(&mut |m| own = m.len());
    assert_eq!(own, 0);
    let json = etcd
        .ctl(&[
            "get",
            &format!("/t/timeline/{}/{}", mac.hex(), ma.id),
            "-w",
            "json",
        ])
        .unwrap();
    let lease = json
        .split("\"lease\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("bound to a lease: {json}"));
    let ttl = etcd
        .ctl(&[
            "lease",
            "timetolive",
            &format!("{:x}", lease.parse::<i64>().unwrap()),
        ])
        .unwrap();
    let secs: u64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ttl}"));
    assert!(
        secs > 3000 && secs <= crate::store::STEPS_KEPT.as_secs(),
        "{ttl}"
    );
    // Hostile keys and values: skipped, the good one kept.
    let good = serde_json::to_string(&Steps {
        member: "x".into(),
        ..steps.clone()
    })
    .unwrap();
    let put = |k: &str, v: &str| etcd.ctl(&["put", k, v]).unwrap();
    put("/t/timeline/525400aacc02/x", "{not json");
    put("/t/timeline/525400aacc03/other", &good);
    put("/t/timeline/not-a-mac/x", &good);
    put("/t/timeline/525400aacc04/", &good);
    put(
        "/t/timeline/525400aacc05/x",
        &good.replace("boot script", "boot\u{7}script"),
    );
    put("/t/timeline/525400aacc06/x", &good);
    eventually(Duration::from_secs(3), || {
        let mut n = 0;
        b.with_steps(&mut |m| n = m.len());
        (n == 2).then_some(())
    });
    let mut macs = Vec::new();
    b.with_steps(&mut |m| macs = m.keys().map(|m| m.hex()).collect());
    macs.sort();
    assert_eq!(macs, ["525400aacc01", "525400aacc06"]);
    // Gone from etcd, gone from the view.
    etcd.ctl(&["del", "/t/timeline/525400aacc06/x"]).unwrap();
    eventually(Duration::from_secs(3), || {
        let mut n = 0;
        b.with_steps(&mut |m| n = m.len());
        (n == 1).then_some(())
    });
}

/// Item: one build per image: the turn to build is one replica's at a time and goes when it is
/// dropped; what a builder published is read as hostile (names, sizes, sha256s, the key).
#[test]
fn one_replica_builds_at_a_time_and_what_it_published_is_checked() {
    use crate::store::{Published, PublishedFile};
    let Some((etcd, a, b)) = two_replicas("etcd-builds", "/b") else {
        return;
    };
    let key = format!("sha256-{}", "ab".repeat(32));
    let turn = a
        .lock_build(&key)
        .unwrap()
        .expect("the first asks, the first builds");
    assert!(b.lock_build(&key).unwrap().is_none(), "one at a time");
    drop(turn);
    eventually(Duration::from_secs(3), || b.lock_build(&key).unwrap());
    let file = |name: &str| PublishedFile {
        name: name.into(),
        size: 10,
        sha256: "0f".repeat(32),
    };
    let good = Published {
        key: key.clone(),
        by: "a-000001".into(),
        files: vec![file("kernel"), file("initrd"), file("rootfs.squashfs")],
        meta: artifacts::Meta {
            source: "quay.io/kairos/ubuntu:24.04".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            arch: "amd64".into(),
            compression: "gzip".into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd".into(),
            created: 1,
            sizes: None,
        },
    };
    assert_eq!(b.published(&key).unwrap(), None);
    a.publish_built(&good).unwrap();
    assert_eq!(b.published(&key).unwrap(), Some(good.clone()));
    // The first stays.
    let other = Published {
        by: "b-000002".into(),
        ..good.clone()
    };
    b.publish_built(&other).unwrap();
    assert_eq!(b.published(&key).unwrap().unwrap().by, "a-000001");
    let hostile = |p: Published| {
        let k = format!("sha256-{}", "cd".repeat(32));
        etcd.ctl(&[
            "put",
            &format!("/b/artifacts/{k}"),
            &serde_json::to_string(&p).unwrap(),
        ])
        .unwrap();
        b.published(&k).unwrap()
    };
    let mut bad = Vec::new();
    bad.push(good.clone()); // another key's
    let mut p = good.clone();
    p.key = format!("sha256-{}", "cd".repeat(32));
    let base = p.clone();
    p.files[0].name = "../../etc/passwd".into();
    bad.push(p.clone());
    p = base.clone();
    p.files[2].size = u64::MAX;
    bad.push(p.clone());
    p = base.clone();
    p.files[1].sha256 = "zz".repeat(32);
    bad.push(p.clone());
    p = base.clone();
    p.files.pop();
    bad.push(p.clone());
    p = base.clone();
    p.files.push(file("kernel"));
    bad.push(p.clone());
    p = base.clone();
    p.meta.source = "a\nb".into();
    bad.push(p);
    for p in bad {
        assert_eq!(hostile(p.clone()), None, "{p:?}");
    }
    let mut ok = base.clone();
    ok.files.push(file("shimx64.efi"));
    ok.files.push(file("grubx64.efi"));
    assert!(hostile(ok).is_some());
    etcd.ctl(&["put", "/b/artifacts/sha256-ee", "{not json"])
        .unwrap();
    assert_eq!(b.published("sha256-ee").unwrap(), None);
}

/// Item: credentials from a file, never the command line; a wrong password or a user without
/// read and write on the prefix is one clear line naming the store and the fix.
#[test]
fn etcd_users_and_permissions_are_named_with_the_fix() {
    let Some(etcd) = testkit::Etcd::start("etcd-auth") else {
        return;
    };
    for a in [
        &["user", "add", "root:rootpw1", "--interactive=false"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "fleet"],
        &[
            "role",
            "grant-permission",
            "fleet",
            "--prefix=true",
            "readwrite",
            "/fleet/",
        ],
        &["user", "add", "db:dbpw1234", "--interactive=false"],
        &["user", "grant-role", "db", "fleet"],
        &["auth", "enable"],
    ] {
        etcd.ctl(a).unwrap();
    }
    let dir = testkit::tempdir("etcd-auth");
    let with = |prefix: &str, creds: Option<&str>| {
        let mut c = config(&etcd.endpoint, prefix);
        if let Some(text) = creds {
            let f = dir.join(format!("auth-{}", text.len()));
            std::fs::write(&f, format!("{text}\n")).unwrap();
            c.auth_file = Some(f);
        }
        EtcdStore::connect(&c)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    };
    with("/fleet", Some("db:dbpw1234")).expect("its own prefix");
    let e = with("/fleet", Some("db:wrong")).unwrap_err();
    assert!(
        e.contains(&etcd.endpoint) && e.contains("--store-auth-file") && !e.contains("wrong"),
        "{e}"
    );
    let e = with("/other", Some("db:dbpw1234")).unwrap_err();
    assert!(
        e.contains("permission denied") && e.contains("/other/") && e.contains("grant-permission"),
        "{e}"
    );
    let e = with("/fleet", None).unwrap_err();
    assert!(e.contains("--store-auth-file"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Item: TLS to etcd: an etcd that asks for client certificates (`--client-cert-auth`) is
/// reached with `--store-ca`, `--store-cert` and `--store-key`; without the certificate, or
/// trusting another CA, it is one line naming the store and the fix.
#[test]
fn tls_to_etcd_with_a_client_certificate() {
    if !testkit::require(true, &["etcd", "openssl"]) {
        return;
    }
    let dir = testkit::tempdir("etcd-tls");
    let sh = |script: &str| {
        let o = std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    sh("q() { openssl \"$@\" 2>/dev/null; }
        for ca in ca other; do q req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.pem -days 1 -subj /CN=$ca; done
        printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext
        printf 'extendedKeyUsage=clientAuth\\n' > client.ext
        q req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=etcd
        q x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.ext
        q req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=daybreak
        q x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 -extfile client.ext");
    let (client, peer) = (testkit::free_port(), testkit::free_port());
    let url = format!("https://127.0.0.1:{client}");
    let mut etcd = std::process::Command::new("etcd")
        .current_dir(&dir)
        .args([
            "--name",
            "tls",
            "--data-dir",
            "data",
            "--log-level",
            "error",
        ])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}")])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--trusted-ca-file", "ca.pem", "--client-cert-auth"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let with = |ca: &str, cert: bool| {
        let mut c = config(&format!("127.0.0.1:{client}"), "/tls");
        c.ca = Some(dir.join(ca));
        if cert {
            c.cert = Some(dir.join("client.pem"));
            c.key = Some(dir.join("client.key"));
        }
        EtcdStore::connect(&c).map_err(|e| format!("{e:#}"))
    };
    let s = eventually(Duration::from_secs(10), || with("ca.pem", true).ok());
    let mac: Mac = "52:54:00:aa:dd:01".parse().unwrap();
    update(&s, mac, &booted(3)).unwrap();
    assert_eq!(s.get(mac).unwrap().unwrap().record.boots, 1);
    for (ca, cert) in [("ca.pem", false), ("other.pem", true)] {
        let e = with(ca, cert).err().expect("refused");
        assert!(
            e.contains(&format!("127.0.0.1:{client}")) && e.contains("--store-ca"),
            "{ca} {cert}: {e}"
        );
    }
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = std::fs::remove_dir_all(dir);
}
