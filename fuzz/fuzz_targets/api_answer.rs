//! A pixiecore API answer (the body of a 200): a spec or a reason, never more URLs than the
//! bound, and what it renders as an iPXE script has the boot's lines only.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = daybreak::api::parse_answer("http://api.example:8000/pixie/", data);
});
