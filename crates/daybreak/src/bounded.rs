//! Tables keyed by what clients send (a MAC, an address) are bounded. When one is full, the
//! eighth of it seen longest ago goes at once: the cost per insert stays constant (a scan per
//! insert would make a flood of made-up MACs quadratic).
//!
//! And queues: [`queue`] holds at most its cap, in memory that grows and shrinks with what it
//! holds (std's `sync_channel` takes all of its cap up front, whether or not a step ever waits).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// At most `cap` log lines of one kind a second; the rest are counted and told in one line
/// when the second is over (a flood of requests must not fill the disk with lines).
#[derive(Debug)]
pub struct LineBudget {
    second: std::time::Instant,
    logged: u32,
    held: u64,
    cap: u32,
    /// What the lines are about, for the count's line.
    what: &'static str,
}

impl LineBudget {
    pub fn new(now: std::time::Instant, cap: u32, what: &'static str) -> LineBudget {
        LineBudget {
            second: now,
            logged: 0,
            held: 0,
            cap,
            what,
        }
    }

    /// Whether a line may be logged at `now`.
    pub fn admit(&mut self, now: std::time::Instant) -> bool {
        self.roll(now);
        if self.logged < self.cap {
            self.logged += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }

    /// Starts a new second once the current one is over, and logs how many lines it held
    /// back: that count, when there was one.
    pub fn roll(&mut self, now: std::time::Instant) -> Option<u64> {
        if now.saturating_duration_since(self.second) < Duration::from_secs(1) {
            return None;
        }
        self.second = now;
        self.logged = 0;
        self.flush()
    }

    /// Logs the count held back so far now (also at shutdown, whatever the second).
    pub fn flush(&mut self) -> Option<u64> {
        let held = std::mem::take(&mut self.held);
        (held > 0).then(|| {
            tracing::info!(
                not_logged = held,
                "{held} more lines not logged (over {} a second): {}",
                self.cap,
                self.what
            );
            held
        })
    }
}

/// A queue of at most `cap` items, for any number of senders and one receiver.
pub fn queue<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    let len = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            len: len.clone(),
            cap,
        },
        Receiver { rx, len },
    )
}

pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    len: Arc<AtomicUsize>,
    cap: usize,
}

impl<T> Sender<T> {
    /// Queues `t`, or gives it back when the queue is full or its receiver gone.
    pub fn try_send(&self, t: T) -> Result<(), T> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(t);
        }
        self.tx.send(t).map_err(|e| {
            self.len.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    len: Arc<AtomicUsize>,
}

impl<T> Receiver<T> {
    fn took(&self, t: T) -> T {
        self.len.fetch_sub(1, Ordering::AcqRel);
        t
    }

    pub fn try_recv(&self) -> Result<T, mpsc::TryRecvError> {
        self.rx.try_recv().map(|t| self.took(t))
    }

    pub fn recv_timeout(&self, d: Duration) -> Result<T, mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(d).map(|t| self.took(t))
    }
}

/// At most `n` of something per key (a source address) in each `window`, in a table of at most
/// `cap` keys: what one source may cost is bounded, whatever it sends.
#[derive(Debug)]
pub struct PerKey<K> {
    used: std::sync::Mutex<HashMap<K, (std::time::Instant, u32)>>,
    n: u32,
    window: Duration,
    cap: usize,
}

impl<K: Copy + Eq + Hash> PerKey<K> {
    pub fn new(n: u32, window: Duration, cap: usize) -> PerKey<K> {
        PerKey {
            used: Default::default(),
            n,
            window,
            cap,
        }
    }

    /// Takes one for `key` at `now`; false when its window's are used up.
    pub fn take(&self, key: K, now: std::time::Instant) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        make_room(&mut used, &key, self.cap, |(start, _)| *start);
        let (start, count) = used.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= self.window {
            (*start, *count) = (now, 0);
        }
        if *count >= self.n {
            return false;
        }
        *count += 1;
        true
    }
}

/// Makes room for `key` in `map` (at most `cap` entries): when it is full and `key` is new, the
/// eighth of the entries whose `age` is smallest (the oldest) is removed.
pub fn make_room<K: Copy + Eq + Hash, V, A: Ord + Copy>(
    map: &mut HashMap<K, V>,
    key: &K,
    cap: usize,
    age: impl Fn(&V) -> A,
) {
    if map.len() < cap || map.contains_key(key) {
        return;
    }
    let mut by_age: Vec<(A, K)> = map.iter().map(|(k, v)| (age(v), *k)).collect();
    let n = (cap / 8).max(1).min(by_age.len());
    by_age.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
    for (_, k) in &by_age[..n] {
        map.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_holds_its_cap_and_takes_more_as_it_empties() {
        let (tx, rx) = queue(3);
        assert!((0..3).all(|i| tx.try_send(i).is_ok()));
        assert_eq!(tx.try_send(9), Err(9), "full");
        assert_eq!(rx.try_recv(), Ok(0));
        assert!(tx.try_send(3).is_ok());
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, [1, 2, 3]);
        drop(rx);
        assert_eq!(tx.try_send(4), Err(4), "nobody reads");
    }

    #[test]
    fn a_key_gets_its_n_per_window_and_others_theirs() {
        let b = PerKey::new(2, Duration::from_secs(60), 4);
        let t = std::time::Instant::now();
        assert!(b.take(1, t) && b.take(1, t));
        assert!(!b.take(1, t), "its two are used");
        assert!(b.take(2, t), "another key has its own");
        assert!(b.take(1, t + Duration::from_secs(60)), "a new window");
        // A flood of keys keeps the table at its cap.
        for k in 10..1000 {
            b.take(k, t);
        }
        assert!(b.used.lock().unwrap().len() <= 4);
    }

    #[test]
    fn the_oldest_eighth_goes_and_the_rest_stays() {
        let mut m: HashMap<u32, u64> = (0..64).map(|i| (i, i as u64)).collect();
        make_room(&mut m, &1000, 64, |v| *v);
        assert_eq!(m.len(), 56);
        assert!((0..8).all(|i| !m.contains_key(&i)) && (8..64).all(|i| m.contains_key(&i)));
        // Not full, or a key it holds: nothing goes.
        make_room(&mut m, &2000, 64, |v| *v);
        make_room(&mut m, &10, 56, |v| *v);
        assert_eq!(m.len(), 56);
    }
}
