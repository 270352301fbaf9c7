//! `/metrics` in the Prometheus text format (0.0.4), on the boot HTTP port: what the ProxyDHCP
//! and TFTP servers counted, HTTP bytes by file, boot steps by kind, and how long machines take
//! from their first offer to each later phase (histograms). Written by hand: the format is a few
//! lines of text, and no crate is needed for it.
//!
//! Labels only ever take values this server chose (counter names, file names it serves, phase
//! names), never text from a client, so their number is bounded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::events::{BootEvent, Step};

/// Upper bounds of the phase-duration buckets, in seconds.
const BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// Machines whose boot start is remembered (past this, the oldest are forgotten).
const MAX_BOOTS: usize = 4096;
/// Distinct file names counted (the plan's files, or an API's answers); more go under "other".
const MAX_FILES: usize = 256;
/// The kinds of steps counted.
const STEPS: [&str; 14] = [
    "offer",
    "lease",
    "loader",
    "script",
    "file",
    "booting",
    "config",
    "installed",
    "local_boot",
    "doubted",
    "failed",
    "reported",
    "sending",
    "said",
];
/// Phases timed from a machine's first offer.
const PHASES: [&str; 4] = ["loader", "script", "kernel", "booting"];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// A machine's boot in progress: when its first offer went out, and the phases seen since.
struct Boot {
    started: Instant,
    seen: [bool; PHASES.len()],
}

#[derive(Default)]
struct FromEvents {
    /// Steps by kind, in the order of [`STEPS`].
    steps: [u64; STEPS.len()],
    http_bytes: HashMap<String, u64>,
    boots: HashMap<pxe::Mac, Boot>,
    phases: [Histogram; PHASES.len()],
    /// Failures by (kind, stage): both from fixed sets, so the map stays small.
    failures: std::collections::BTreeMap<(&'static str, &'static str), u64>,
}

/// The machines stalled now, by the step they are stalled after (a gauge: a stall ends when
/// the next step comes or the machine boots afresh).
pub fn render_stalled(s: &mut String, stalled: &[(&'static str, u64)]) {
    let _ = writeln!(
        s,
        "# HELP daybreak_machines_stalled Machines whose next boot step has not come within --stall-after, by the step they are stalled after.\n\
         # TYPE daybreak_machines_stalled gauge"
    );
    for (step, n) in stalled {
        let _ = writeln!(s, "daybreak_machines_stalled{{after=\"{step}\"}} {n}");
    }
}

/// The machine store: changes waiting to be written, and, for a store others write (etcd), how
/// old this replica's snapshot of it is (`None` inside: not current, the store is unreachable).
pub fn render_store(s: &mut String, queued: usize, age: Option<Option<std::time::Duration>>) {
    let _ = writeln!(
        s,
        "# HELP daybreak_store_writes_queued Machine record changes waiting to be written to the store.\n\
         # TYPE daybreak_store_writes_queued gauge\n\
         daybreak_store_writes_queued {queued}"
    );
    if let Some(age) = age {
        let _ = writeln!(
            s,
            "# HELP daybreak_store_snapshot_current Whether this replica's snapshot of the store is known current (its watch answers).\n\
             # TYPE daybreak_store_snapshot_current gauge\n\
             daybreak_store_snapshot_current {}",
            u8::from(age.is_some())
        );
        if let Some(a) = age {
            let _ = writeln!(
                s,
                "# HELP daybreak_store_snapshot_age_seconds Seconds since this replica's snapshot of the store was last known current.\n\
                 # TYPE daybreak_store_snapshot_age_seconds gauge\n\
                 daybreak_store_snapshot_age_seconds {:.3}",
                a.as_secs_f64()
            );
        }
    }
}

/// Everything `/metrics` shows.
pub struct Metrics {
    pub dhcp: Arc<pxe::driver::Stats>,
    pub tftp: Arc<tftp::Stats>,
    http_requests: AtomicU64,
    /// Whose queues count the steps dropped.
    hub: Arc<crate::events::Hub>,
    events: Mutex<FromEvents>,
}

impl Metrics {
    pub fn new(
        dhcp: Arc<pxe::driver::Stats>,
        tftp: Arc<tftp::Stats>,
        hub: Arc<crate::events::Hub>,
    ) -> Metrics {
        Metrics {
            dhcp,
            tftp,
            http_requests: AtomicU64::new(0),
            hub,
            events: Mutex::default(),
        }
    }

    /// Counts a scrape of `/metrics` itself.
    pub fn scraped(&self) {
        self.http_requests.fetch_add(1, Relaxed);
    }

    /// Takes in one boot event.
    pub fn observe(&self, e: &BootEvent) {
        let mut m = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let kind = match &e.step {
            Step::Offer { .. } => 0,
            Step::Lease => 1,
            Step::Loader { .. } => 2,
            Step::Script => 3,
            Step::File { .. } => 4,
            Step::Booting => 5,
            Step::Config => 6,
            Step::Installed => 7,
            Step::LocalBoot => 8,
            Step::Doubted { .. } => 9,
            Step::Failed { stage, kind, .. } => {
                *m.failures.entry((kind, stage)).or_default() += 1;
                10
            }
            Step::NotOffered { .. } => {
                *m.failures.entry(("no offer", "offer")).or_default() += 1;
                10
            }
            Step::Reported { .. } => 11,
            Step::Sending { .. } => 12,
            Step::Said { .. } => 13,
        };
        m.steps[kind] += 1;
        if let Step::File { name, bytes, .. } = &e.step {
            let known = m.http_bytes.contains_key(name) || m.http_bytes.len() < MAX_FILES;
            let key = if known { name.clone() } else { "other".into() };
            *m.http_bytes.entry(key).or_default() += bytes;
        }
        let Some(mac) = e.mac else { return };
        let phase = match &e.step {
            Step::Offer { .. } => {
                // The first offer of a boot starts its clock; offers during a boot do not.
                let fresh = m.boots.get(&mac).is_none_or(|b| {
                    b.seen[PHASES.len() - 1] || b.started.elapsed().as_secs() > 600
                });
                if fresh {
                    crate::bounded::make_room(&mut m.boots, &mac, MAX_BOOTS, |b| b.started);
                    m.boots.insert(
                        mac,
                        Boot {
                            started: Instant::now(),
                            seen: [false; PHASES.len()],
                        },
                    );
                }
                return;
            }
            Step::Loader { ok: true, .. } => 0,
            Step::Script => 1,
            Step::File { name, .. } if name == "kernel" => 2,
            Step::Booting => 3,
            _ => return,
        };
        let FromEvents { boots, phases, .. } = &mut *m;
        if let Some(b) = boots.get_mut(&mac) {
            if !b.seen[phase] {
                b.seen[phase] = true;
                phases[phase].observe(b.started.elapsed().as_secs_f64());
            }
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(
            &mut s,
            "daybreak_dhcp_packets_total",
            "ProxyDHCP datagrams, by what became of them.",
        );
        for (outcome, n) in self.dhcp.snapshot() {
            let _ = writeln!(
                s,
                "daybreak_dhcp_packets_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        counter(
            &mut s,
            "daybreak_dhcp_unanswered_total",
            "ProxyDHCP datagrams not answered, by reason.",
        );
        for (reason, n) in self.dhcp.unanswered_counts() {
            let _ = writeln!(
                s,
                "daybreak_dhcp_unanswered_total{{reason=\"{reason}\"}} {n}"
            );
        }
        counter(
            &mut s,
            "daybreak_tftp_requests_total",
            "TFTP requests, by what became of them.",
        );
        let t = &self.tftp;
        for (outcome, n) in [
            ("completed", &t.completed),
            ("aborted", &t.aborted),
            ("timed_out", &t.timed_out),
            ("refused", &t.refused),
            ("malformed", &t.malformed),
            ("rate_limited", &t.rate_limited),
            ("busy", &t.busy),
            ("evicted", &t.evicted),
        ] {
            let _ = writeln!(
                s,
                "daybreak_tftp_requests_total{{outcome=\"{outcome}\"}} {}",
                n.load(Relaxed)
            );
        }
        for (name, help, value) in [
            (
                "daybreak_tftp_sent_bytes_total",
                "Bytes of data sent over TFTP.",
                t.bytes_sent.load(Relaxed),
            ),
            (
                "daybreak_tftp_retransmits_total",
                "TFTP packets sent again after a timeout.",
                t.retransmits.load(Relaxed),
            ),
            (
                "daybreak_metrics_scrapes_total",
                "Requests for these metrics.",
                self.http_requests.load(Relaxed),
            ),
            (
                "daybreak_events_dropped_total",
                "Boot steps not recorded because their queue was full (the answers went out; their log lines, timeline steps and these metrics miss them).",
                self.hub.dropped(),
            ),
        ] {
            counter(&mut s, name, help);
            let _ = writeln!(s, "{name} {value}");
        }
        counter(
            &mut s,
            "daybreak_identity_doubts_total",
            "Requests that named a machine they may not speak for, and got nothing of its own, by why.",
        );
        for (reason, n) in self.hub.identities.doubts() {
            let _ = writeln!(
                s,
                "daybreak_identity_doubts_total{{reason=\"{reason}\"}} {n}"
            );
        }
        counter(
            &mut s,
            "daybreak_syslog_lines_total",
            "Syslog lines from iPXE, by what became of them: filed under their machine, from an address no machine booting here holds, over the rate, or not syslog.",
        );
        for (outcome, n) in self.hub.syslog.outcomes() {
            let _ = writeln!(
                s,
                "daybreak_syslog_lines_total{{outcome=\"{outcome}\"}} {n}"
            );
        }

        let m = self.events.lock().unwrap_or_else(|p| p.into_inner());
        counter(
            &mut s,
            "daybreak_http_sent_bytes_total",
            "Bytes of boot files sent over HTTP, by file.",
        );
        let mut files: Vec<_> = m.http_bytes.iter().collect();
        files.sort();
        for (file, n) in files {
            let _ = writeln!(
                s,
                "daybreak_http_sent_bytes_total{{file=\"{}\"}} {n}",
                escape(file)
            );
        }
        counter(
            &mut s,
            "daybreak_boot_steps_total",
            "Boot steps seen, by kind.",
        );
        // Progress reports (`sending`) are not steps of their own.
        for (step, n) in STEPS.iter().zip(m.steps).take(STEPS.len() - 1) {
            let _ = writeln!(s, "daybreak_boot_steps_total{{step=\"{step}\"}} {n}");
        }
        counter(
            &mut s,
            "daybreak_boot_failures_total",
            "Boots that failed, by what failed (not found, cut off, loader transfer, install failed) and the stage it failed at.",
        );
        for ((kind, stage), n) in &m.failures {
            let _ = writeln!(
                s,
                "daybreak_boot_failures_total{{kind=\"{kind}\",stage=\"{stage}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP daybreak_boot_phase_seconds Time from a machine's first offer to each phase of its boot.\n\
             # TYPE daybreak_boot_phase_seconds histogram"
        );
        for (phase, h) in PHASES.iter().zip(&m.phases) {
            for (le, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    s,
                    "daybreak_boot_phase_seconds_bucket{{phase=\"{phase}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                s,
                "daybreak_boot_phase_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "daybreak_boot_phase_seconds_sum{{phase=\"{phase}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "daybreak_boot_phase_seconds_count{{phase=\"{phase}\"}} {}",
                h.count
            );
        }
        s
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_are_timed_from_their_first_offer() {
        let m = Metrics::new(Default::default(), Default::default(), Default::default());
        let mac = "52:54:00:00:00:01".parse().ok();
        let peer = Some("10.0.0.5:1000".parse().unwrap());
        let offer = Step::Offer {
            client: crate::events::tests::client(pxe::Arch::EfiX64, pxe::Firmware::Pxe),
            loader: pxe::Loader::Ipxe,
            target: "ipxe.efi".into(),
            port: pxe::Port::Dhcp,
        };
        for step in [
            offer.clone(),
            offer,
            Step::Loader {
                file: "ipxe.efi".into(),
                bytes: 9,
                ok: true,
            },
            Step::Script,
            Step::File {
                name: "kernel".into(),
                bytes: 1000,
                ms: 1,
            },
            Step::File {
                name: "kernel".into(),
                bytes: 1000,
                ms: 1,
            },
            Step::Booting,
        ] {
            m.observe(&crate::events::BootEvent {
                at: std::time::SystemTime::now(),
                mac,
                peer,
                step,
            });
        }
        let text = m.render();
        assert!(
            text.contains("daybreak_boot_steps_total{step=\"offer\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("daybreak_http_sent_bytes_total{file=\"kernel\"} 2000\n"),
            "{text}"
        );
        // Each phase once, in the first bucket.
        for phase in PHASES {
            assert!(
                text.contains(&format!(
                    "daybreak_boot_phase_seconds_bucket{{phase=\"{phase}\",le=\"0.5\"}} 1\n"
                )),
                "{phase}: {text}"
            );
            assert!(text.contains(&format!(
                "daybreak_boot_phase_seconds_count{{phase=\"{phase}\"}} 1\n"
            )));
        }
        assert!(text.contains("daybreak_dhcp_packets_total{outcome=\"answered\"} 0\n"));
    }

    #[test]
    fn labels_stay_bounded_and_escaped() {
        let m = Metrics::new(Default::default(), Default::default(), Default::default());
        for i in 0..(MAX_FILES + 50) {
            let step = Step::File {
                name: format!("f{i}"),
                bytes: 1,
                ms: 0,
            };
            m.observe(&crate::events::BootEvent {
                at: std::time::SystemTime::now(),
                mac: None,
                peer: None,
                step,
            });
        }
        let text = m.render();
        assert_eq!(
            text.matches("daybreak_http_sent_bytes_total{").count(),
            MAX_FILES + 1
        );
        assert!(text.contains("{file=\"other\"} 50\n"), "{text}");
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
