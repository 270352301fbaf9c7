//! A machines file (`--machines FILE`): parsed into profiles or refused with a reason; a
//! profile's command line is one iPXE can carry, and each entry's selectors are usable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A cloud_config_file names a file or a URL to read: not the fuzzer's business.
    if text.contains("cloud_config_file")
        || text.contains("iso")
        || text.contains("container_image")
        || text.contains("kernel")
    {
        return;
    }
    if let Ok(p) = daybreak::fleet::Profiles::parse(text, std::path::Path::new("/nonexistent")) {
        for e in &p.entries {
            if let Some(c) = &e.cmdline {
                assert!(daybreak::render::check_ipxe(c).is_ok(), "{c:?}");
            }
        }
    }
});
