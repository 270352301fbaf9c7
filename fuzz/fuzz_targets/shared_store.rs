//! What a store replicas share holds besides records (etcd values written by anyone who can
//! write the store): machine profiles (`PREFIX/profiles/...`), members (`PREFIX/members/...`),
//! machines' steps (`PREFIX/timeline/...`) and what a replica published of a build
//! (`PREFIX/artifacts/...`).
//! Profiles are refused with a reason or never name a file on this host nor a URL to fetch for a
//! cloud-config; a member is taken only as Daybreak writes one.
#![no_main]

use daybreak::fleet::profiles::{from_shared, Image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = from_shared(data) {
        for e in &p.entries {
            match &e.image {
                Some(Image::Files { .. }) => panic!("a shared profile names local files"),
                Some(Image::Container(c)) => assert!(c.starts_with("oci://"), "{c:?}"),
                Some(Image::Iso(i)) => assert!(artifacts::is_url(i), "{i:?}"),
                None => {}
            }
        }
    }
    if let Ok(m) = serde_json::from_slice::<daybreak::store::Member>(data) {
        if m.is_valid() {
            assert!(m.id.len() <= 100 && m.addresses.len() <= 16);
            assert!(m.artifacts.len() <= daybreak::store::MAX_HELD);
        }
    }
    if let Ok(s) = serde_json::from_slice::<daybreak::store::Steps>(data) {
        if s.is_valid() {
            assert!(s.steps.len() <= daybreak::store::MAX_STEPS);
            assert!(s
                .steps
                .iter()
                .all(|(_, t)| !t.chars().any(char::is_control)));
        }
    }
    if let Ok(p) = serde_json::from_slice::<daybreak::store::Published>(data) {
        let key = p.key.clone();
        if p.is_valid(&key) {
            for f in &p.files {
                assert!(daybreak::store::PUBLISHED_NAMES.contains(&f.name.as_str()));
                assert!(!f.name.contains('/') && f.size <= daybreak::store::MAX_PUBLISHED_SIZE);
            }
            assert!(!key.contains('/') && !key.contains(".."));
        }
    }
});
