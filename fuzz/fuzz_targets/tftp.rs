//! What clients send over TFTP: the first bytes are a request to the listening port (through
//! the endpoint, as the server routes it), the rest a stream of packets to the transfer, each
//! with a clock step. Nothing may panic, a transfer must end in bounded time, and it must never
//! send a DATA block larger than it granted.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tftp::endpoint::{Action, Budget, Endpoint};
use tftp::packet::Packet;
use tftp::{Limits, Status};

fuzz_target!(|data: &[u8]| {
    let _ = Packet::parse(data);
    // Request, then packets separated by 0xFF 0xFE (an unlikely pair in TFTP).
    let mut parts = data.split(|&b| b == 0xfe);
    let Some(request) = parts.next() else { return };
    let file: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    let mut e = Endpoint::new(Limits::default(), Budget::default());
    let mut now = Instant::now();
    let peer = "10.0.0.9:1000".parse().unwrap();
    let Action::Start {
        mut transfer, send, ..
    } = e.on_request(peer, request, now, true, |_| Some(file.clone().into()))
    else {
        return;
    };
    let max = usize::from(transfer.negotiated.blksize) + 4;
    let mut out = send;
    for p in parts {
        for o in out.drain(..) {
            assert!(o.len() <= max.max(600), "packet of {} bytes", o.len());
        }
        now += Duration::from_millis(u64::from(p.first().copied().unwrap_or(0)) * 20);
        transfer.on_packet(p, now, &mut out);
        transfer.on_timeout(now, &mut out);
        if transfer.status() != &Status::Running {
            break;
        }
    }
    // Silence from here on: the transfer must give up within its limits.
    let mut rounds = 0;
    while transfer.status() == &Status::Running {
        now = now.max(transfer.deadline());
        transfer.on_timeout(now, &mut out);
        rounds += 1;
        assert!(rounds < 1000, "a silent client keeps a transfer alive");
    }
});
