//! Any datagram on UDP 67 or 4011: decoded, answered for either port, the answer encoded and
//! decoded again. Nothing may panic, and an answer must be a well-formed reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pxe::message::Message;
use pxe::{answer, BootFiles, Context, Port};

fuzz_target!(|data: &[u8]| {
    // The whole decision as the driver asks it, from a few sources and ports.
    let settings = pxe::endpoint::Settings {
        http: pxe::HttpAddress::default(),
        boot_files: BootFiles::default(),
        interfaces: vec![],
    };
    for (src, sport) in [
        ([0u8, 0, 0, 0], 68u16),
        ([10, 0, 0, 9], 4011),
        ([10, 0, 0, 9], 53),
    ] {
        for port in [Port::Dhcp, Port::ProxyBoot] {
            let d = pxe::endpoint::Datagram {
                bytes: data,
                source: std::net::SocketAddrV4::new(src.into(), sport),
                ifindex: 2,
                local: [10, 0, 0, 1].into(),
                truncated: false,
            };
            if let Ok(t) = pxe::endpoint::handle(&d, port, &settings, |_| None).outcome {
                assert!(!t.destination.ip().is_loopback() && !t.destination.ip().is_multicast());
            }
        }
    }
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let files = BootFiles {
        efi_arm64: Some("ipxe-arm64.efi".into()),
        ..BootFiles::default()
    };
    let ctx = Context {
        server: [10, 0, 0, 1].into(),
        http_port: 8090,
        boot_files: &files,
    };
    for port in [Port::Dhcp, Port::ProxyBoot] {
        if let Ok(reply) = answer(&msg, &ctx, port) {
            let bytes = reply.message.encode();
            let back = Message::decode(&bytes).expect("our own reply decodes");
            assert_eq!(back.xid, msg.xid);
            assert!(bytes.len() >= 300 && bytes.len() <= 1500, "{}", bytes.len());
        }
    }
    let _ = msg.encode();
});
