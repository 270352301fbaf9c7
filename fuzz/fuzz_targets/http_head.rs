//! A request head as a client sends it, and the Range header, percent-encoding and query
//! parsing the server applies to it (the `http` crate's `wire` module).
#![no_main]

use http::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(head) = wire::parse_head(data) {
        let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
        if let Some(p) = wire::percent_decode(path) {
            assert_eq!(
                wire::percent_decode(&wire::percent_encode(&p)).as_deref(),
                Some(&p[..])
            );
        }
        let _ = wire::query_param(query, "mac");
        for len in [0u64, 1, 4096, u64::MAX] {
            match wire::parse_range(head.range.as_deref(), len) {
                wire::Range::Part(a, b) => assert!(a <= b && b < len, "{a}-{b} of {len}"),
                wire::Range::Full | wire::Range::Unsatisfiable => {}
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = wire::parse_range(Some(&text), 1 << 40);
    let extents = [(1000u64, 10u64), (u64::MAX - 5, 20), (9000, 5)];
    let n = data.len() as u64;
    let _ = wire::pieces(&extents, n.wrapping_mul(7919), n.wrapping_mul(104_729));
});
