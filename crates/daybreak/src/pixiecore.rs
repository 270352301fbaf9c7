//! pixiecore's log lines, so whatever reads pixiecore's output (AuroraBoot's web UI runs
//! start-pixie and shows its lines as they come; scripts wait for "Offering to boot") keeps
//! working. Its commands are in the command line's `pixiecore` module.

use crate::events::{BootEvent, Step};

/// The line pixiecore logs for this step of a boot, if it logs one:
/// `[DHCP] Offering to boot MAC`, `[HTTP] Sending ipxe boot script to IP:PORT` and
/// `[HTTP] Sent file "NAME" to IP:PORT`, with its file names (`kernel`, `initrd-0`, …).
pub fn line(e: &BootEvent) -> Option<String> {
    match &e.step {
        Step::Offer {
            port: pxe::Port::Dhcp,
            ..
        } => Some(format!("[DHCP] Offering to boot {}", e.mac?)),
        Step::Script => Some(format!("[HTTP] Sending ipxe boot script to {}", e.peer?)),
        Step::File { name, .. } => {
            let name = match name.strip_prefix("initrd") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("initrd-{n}")
                }
                _ => name.clone(),
            };
            Some(format!("[HTTP] Sent file \"{name}\" to {}", e.peer?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_steps_read_as_pixiecore_logs_them() {
        let ev = |peer, mac, step| BootEvent {
            at: std::time::SystemTime::now(),
            mac,
            peer,
            step,
        };
        let peer = Some("192.168.1.49:4371".parse().unwrap());
        let offer = Step::Offer {
            client: crate::events::tests::client(pxe::Arch::EfiX64, pxe::Firmware::Pxe),
            loader: pxe::Loader::Ipxe,
            target: "ipxe.efi".into(),
            port: pxe::Port::Dhcp,
        };
        let file = |name: &str| Step::File {
            name: name.into(),
            bytes: 1,
            ms: 1,
        };
        let cases = [
            (
                ev(None, "08:00:27:E5:22:8C".parse().ok(), offer),
                Some("[DHCP] Offering to boot 08:00:27:e5:22:8c"),
            ),
            (
                ev(peer, None, Step::Script),
                Some("[HTTP] Sending ipxe boot script to 192.168.1.49:4371"),
            ),
            (
                ev(peer, None, file("kernel")),
                Some("[HTTP] Sent file \"kernel\" to 192.168.1.49:4371"),
            ),
            (
                ev(peer, None, file("initrd0")),
                Some("[HTTP] Sent file \"initrd-0\" to 192.168.1.49:4371"),
            ),
            (
                ev(peer, None, file("kairos.squashfs")),
                Some("[HTTP] Sent file \"kairos.squashfs\" to 192.168.1.49:4371"),
            ),
            (ev(peer, None, Step::Booting), None),
        ];
        for (e, want) in cases {
            assert_eq!(line(&e).as_deref(), want, "{e:?}");
        }
    }
}
