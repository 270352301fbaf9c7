//! The status page live: what every open page's stream of server-sent events
//! (`/api/machines/events`, [`crate::admin::EVENTS`]) is sent. One thread makes a round of the
//! list a second while pages are open; a page gets the whole list once, then only the machines
//! whose rows changed since the round it saw and those gone. Pages never wait on the making.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use crate::admin::{Machines, MAX_PAGE};

/// The machines as every open page's event stream sends them, made once a second for all of
/// them ([`Rounds`]) by one thread that runs while pages are open. A page is sent, after the whole
/// list at first, only the machines whose rows changed since the round it saw, and those gone: a
/// page of 5,000 idle machines costs nothing, a storm what its machines change. A page never
/// waits on the making: it takes the round made last.
#[derive(Clone, Default)]
pub struct Live(Arc<LiveInner>);

#[derive(Default)]
pub struct LiveInner {
    rounds: Mutex<Rounds>,
    /// Pages open now; the maker stops when none is.
    pages: std::sync::atomic::AtomicUsize,
    /// Whether the maker runs.
    making: std::sync::atomic::AtomicBool,
}

impl Live {
    /// A page's stream of `machines`, the maker started when it is the first.
    pub fn open(&self, machines: &Arc<dyn Machines>) -> Stream {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.pages.fetch_add(1, SeqCst);
        if !self.0.making.swap(true, SeqCst) {
            let (live, machines) = (self.clone(), machines.clone());
            let started = std::thread::Builder::new()
                .name("admin-pages".into())
                .spawn(move || live.make(&*machines));
            if started.is_err() {
                self.0.making.store(false, SeqCst);
            }
        }
        Stream { live: self.clone() }
    }

    /// Makes a round a second while pages are open.
    fn make(&self, machines: &dyn Machines) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let json = machines.list_json(0, MAX_PAGE);
            let made = Rounds::rows_of(&json);
            if let Some(made) = made {
                self.0
                    .rounds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .update(made);
            }
            std::thread::sleep(http::EVENT_TICK);
            if self.0.pages.load(SeqCst) == 0 {
                self.0.making.store(false, SeqCst);
                // A page that opened meanwhile saw the maker running: make for it.
                if self.0.pages.load(SeqCst) == 0 || self.0.making.swap(true, SeqCst) {
                    return;
                }
            }
        }
    }
}

/// A list made: the rest of it (as members of an object), and each machine's row by MAC.
type Made = (String, Vec<(String, Arc<str>)>);

/// Machines gone remembered for the pages that have not seen them go; a page further behind
/// gets the whole list again.
const GONE_KEPT: usize = 16_384;

/// The list of machines as rounds of change: each machine's row (JSON) with the round it last
/// changed in, the machines gone with the round they went in, and the rest of the list.
#[derive(Default)]
pub struct Rounds {
    /// The round last made (0: none yet).
    round: u64,
    rows: HashMap<String, (Arc<str>, u64)>,
    gone: VecDeque<(String, u64)>,
    /// Rounds up to this one may have lost machines gone (past [`GONE_KEPT`]).
    forgot: u64,
    /// `"total":N` and the replicas, as members of the event's object.
    rest: String,
    /// The event for a page that saw the round before, and for a page that saw none, once made.
    delta: Option<(u64, Arc<[u8]>)>,
    full: Option<(u64, Arc<[u8]>)>,
}

impl Rounds {
    /// `/api/machines`'s first page as rows by MAC (each serialized), and the rest of the
    /// list (`"total":N` and the replicas, as members of an object); `None` if it is not one.
    fn rows_of(json: &[u8]) -> Option<Made> {
        let serde_json::Value::Object(mut list) = serde_json::from_slice(json).ok()? else {
            return None;
        };
        let machines = match list.remove("machines") {
            Some(serde_json::Value::Array(m)) => m,
            _ => Vec::new(),
        };
        list.remove("offset");
        let rest = serde_json::to_string(&list).unwrap_or_default();
        let rest = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or("")
            .to_string();
        let rows = machines
            .iter()
            .filter_map(|m| {
                let mac = m.get("mac")?.as_str()?.to_string();
                Some((mac, serde_json::to_string(m).ok()?.into()))
            })
            .collect();
        Some((rest, rows))
    }

    /// Takes in the list made again ([`Rounds::rows_of`]): a new round when anything in it
    /// changed.
    fn update(&mut self, (rest, machines): Made) {
        let next = self.round + 1;
        let mut changed = rest != self.rest;
        self.rest = rest;
        let mut present = HashSet::with_capacity(machines.len());
        for (mac, row) in machines {
            present.insert(mac.clone());
            match self.rows.get_mut(&mac) {
                Some((old, _)) if *old == row => {}
                _ => {
                    self.rows.insert(mac, (row, next));
                    changed = true;
                }
            }
        }
        let before = self.rows.len();
        let gone: Vec<String> = self
            .rows
            .keys()
            .filter(|m| !present.contains(*m))
            .cloned()
            .collect();
        for mac in gone {
            self.rows.remove(&mac);
            self.gone.push_back((mac, next));
        }
        changed |= self.rows.len() != before;
        while self.gone.len() > GONE_KEPT {
            if let Some((_, r)) = self.gone.pop_front() {
                self.forgot = self.forgot.max(r);
            }
        }
        if changed || self.round == 0 {
            self.round = next;
        }
    }

    /// The event for a page that saw round `seen` (0: none): everything, or what changed since.
    fn event(&self, seen: u64) -> Arc<[u8]> {
        let full = seen == 0 || seen <= self.forgot;
        let mut e = format!("{{\"round\":{},\"full\":{full},", self.round);
        if !self.rest.is_empty() {
            e.push_str(&self.rest);
            e.push(',');
        }
        e.push_str("\"machines\":[");
        let mut first = true;
        for (row, _) in self.rows.values().filter(|(_, r)| full || *r > seen) {
            if !first {
                e.push(',');
            }
            first = false;
            e.push_str(row);
        }
        e.push_str("],\"gone\":[");
        if !full {
            let gone = self.gone.iter().filter(|(_, r)| *r > seen);
            for (i, (mac, _)) in gone.enumerate() {
                if i > 0 {
                    e.push(',');
                }
                e.push_str(&serde_json::to_string(mac).unwrap_or_default());
            }
        }
        e.push_str("]}");
        e.into_bytes().into()
    }
}

/// One page's stream of the machines.
pub struct Stream {
    live: Live,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.live
            .0
            .pages
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl http::Events for Stream {
    fn next(&self, seen: u64) -> Option<(u64, Arc<[u8]>)> {
        // Being remade: this page gets it next time.
        let mut r = self.live.0.rounds.try_lock().ok()?;
        if r.round == 0 || seen == r.round {
            return None;
        }
        let round = r.round;
        // Most pages saw the round before, or none: those events are made once for all.
        let shared = seen == 0 || (seen + 1 == round && seen > r.forgot);
        let cached = match seen {
            0 => r.full.as_ref(),
            _ => r.delta.as_ref(),
        };
        if let Some((_, e)) = cached.filter(|(at, _)| shared && *at == round) {
            return Some((round, e.clone()));
        }
        let e = r.event(seen);
        match (shared, seen) {
            (true, 0) => r.full = Some((round, e.clone())),
            (true, _) => r.delta = Some((round, e.clone())),
            _ => {}
        }
        Some((round, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list as `/api/machines` gives it, of machines `(mac, phase)`.
    fn list(machines: &[(&str, &str)]) -> Vec<u8> {
        let rows: Vec<String> = machines
            .iter()
            .map(|(m, p)| format!(r#"{{"mac":"{m}","phase":"{p}"}}"#))
            .collect();
        format!(
            r#"{{"total":{},"offset":0,"machines":[{}]}}"#,
            machines.len(),
            rows.join(",")
        )
        .into_bytes()
    }

    fn event(r: &Rounds, seen: u64) -> serde_json::Value {
        serde_json::from_slice(&r.event(seen)).unwrap()
    }

    #[test]
    fn pages_are_sent_what_changed_since_the_round_they_saw() {
        let mut r = Rounds::default();
        r.update(Rounds::rows_of(&list(&[("a", "seen"), ("b", "kernel")])).unwrap());
        assert_eq!(r.round, 1);
        let full = event(&r, 0);
        assert_eq!(full["full"], true);
        assert_eq!(full["machines"].as_array().unwrap().len(), 2);
        // The same list again: no new round.
        r.update(Rounds::rows_of(&list(&[("b", "kernel"), ("a", "seen")])).unwrap());
        assert_eq!(r.round, 1);
        // One machine moves on, one goes, one comes.
        r.update(Rounds::rows_of(&list(&[("b", "rootfs"), ("c", "offered")])).unwrap());
        assert_eq!(r.round, 2);
        let delta = event(&r, 1);
        assert_eq!(delta["full"], false);
        assert_eq!(delta["total"], 2);
        let macs: HashSet<&str> = delta["machines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mac"].as_str().unwrap())
            .collect();
        assert_eq!(macs, HashSet::from(["b", "c"]));
        assert_eq!(delta["gone"], serde_json::json!(["a"]));
        // A page that saw round 2 gets nothing new from round 3's change of b only.
        r.update(Rounds::rows_of(&list(&[("b", "config"), ("c", "offered")])).unwrap());
        assert_eq!(event(&r, 2)["machines"].as_array().unwrap().len(), 1);
        assert_eq!(event(&r, 2)["gone"], serde_json::json!([]));
        // Garbage is no list.
        assert!(Rounds::rows_of(b"not json").is_none());
        assert_eq!(r.round, 3);
        // Past what is remembered of the gone, a page behind gets everything.
        r.forgot = 2;
        assert_eq!(event(&r, 2)["full"], true);
    }
}
