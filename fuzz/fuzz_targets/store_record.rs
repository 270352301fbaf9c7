//! A machine record as the store holds it (a file another process wrote, or a value in a
//! distributed store): a record of that MAC, with a grant Daybreak could have made, or a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mac = daybreak_mac();
    if let Ok(v) = daybreak::store::file::parse_record(data, &mac) {
        assert_eq!(v.record.mac, mac);
        assert!(v.record.grant.as_ref().is_none_or(|g| g.is_valid()));
        // What it becomes after a change is a record too.
        let _ = daybreak::store::Change::Reinstall.apply(Some(&v.record), mac);
    }
});

fn daybreak_mac() -> pxe::Mac {
    pxe::Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])
}
