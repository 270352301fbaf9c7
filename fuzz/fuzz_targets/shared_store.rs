//! What a store replicas share holds besides records (etcd values written by anyone who can
//! write the store): machine profiles (`PREFIX/profiles/...`) and members (`PREFIX/members/...`).
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
        }
    }
});
