//! A log writer that never blocks the caller: formatted lines go through a bounded queue to a
//! thread that writes them to stderr. The DHCP path logs every offer, and a slow reader of our
//! stderr (a paused terminal, a busy journald) must not delay the next one. The queue is bounded in
//! lines and in bytes (lines carry text from clients, so their size is not ours to choose); if it
//! is ever full, lines are dropped and the count is reported once the writer catches up.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

const QUEUE_LINES: usize = 65_536;
/// Most bytes waiting to be written.
const QUEUE_BYTES: u64 = 8 << 20;

#[derive(Clone)]
pub struct NonBlocking {
    tx: Sender<Vec<u8>>,
    counts: Arc<Counts>,
}

/// Lines queued, written and dropped, shared by the senders and the writer thread.
#[derive(Default)]
struct Counts {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    /// Bytes queued and not yet written.
    pending: AtomicU64,
}

/// Starts the writer thread. Lines still queued when the process exits are flushed by [`Guard`].
pub fn stderr() -> (NonBlocking, Guard) {
    // Bounded by the counts, not by the channel, whose memory then grows only with what waits.
    let (tx, rx) = channel::<Vec<u8>>();
    let counts = Arc::new(Counts::default());
    let seen = counts.clone();
    let done = |seen: &Counts, line: &[u8]| {
        seen.pending.fetch_sub(line.len() as u64, Ordering::AcqRel);
        seen.written.fetch_add(1, Ordering::Release);
    };
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            crate::events::background_priority();
            // The stderr lock is taken per burst, never held while waiting: `eprintln!` elsewhere
            // (the final error message) must not wait on this thread.
            let stderr = io::stderr();
            let mut reported = 0;
            // Block for the first line of a burst, then keep draining every few milliseconds
            // until the queue stays empty: while lines keep coming, nobody has to wake this
            // thread, so logging costs the hot path no syscall.
            while let Ok(line) = rx.recv() {
                let _ = stderr.lock().write_all(&line);
                done(&seen, &line);
                loop {
                    let mut out = stderr.lock();
                    let mut wrote = false;
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(&more);
                        done(&seen, &more);
                        wrote = true;
                    }
                    let d = seen.dropped.load(Ordering::Relaxed);
                    if d > reported {
                        let _ = writeln!(
                            out,
                            "daybreak: {} log lines dropped (stderr too slow)",
                            d - reported
                        );
                        reported = d;
                    }
                    let _ = out.flush();
                    drop(out);
                    if !wrote {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        })
        .expect("spawn log writer thread");
    (
        NonBlocking {
            tx: tx.clone(),
            counts: counts.clone(),
        },
        Guard {
            tx: Some(tx),
            thread: Some(thread),
            counts,
        },
    )
}

/// Flushes the queue on drop (end of `main`).
pub struct Guard {
    tx: Option<Sender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl Guard {
    /// Waits until the thread has written every line queued so far (other senders live in the
    /// global subscriber, so the thread itself does not end), half a second at most for a
    /// stalled stderr. True if everything was written.
    fn drain(&mut self) -> bool {
        drop(self.tx.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let queued = self.counts.queued.load(Ordering::Acquire);
        let Some(t) = self.thread.take() else {
            return true;
        };
        loop {
            if self.counts.written.load(Ordering::Acquire) >= queued {
                return true;
            }
            if t.is_finished() || std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.drain();
    }
}

/// One event's formatted bytes, queued when dropped.
pub struct Line {
    buf: Vec<u8>,
    tx: Sender<Vec<u8>>,
    counts: Arc<Counts>,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let len = self.buf.len() as u64;
        // Counted before it is sent, so the writer can never have written more than was queued.
        let before = self.counts.pending.fetch_add(len, Ordering::AcqRel);
        let waiting = self
            .counts
            .queued
            .fetch_add(1, Ordering::AcqRel)
            .saturating_sub(self.counts.written.load(Ordering::Acquire));
        let sent = before + len <= QUEUE_BYTES
            && waiting < QUEUE_LINES as u64
            && self.tx.send(std::mem::take(&mut self.buf)).is_ok();
        if !sent {
            self.counts.pending.fetch_sub(len, Ordering::AcqRel);
            self.counts.queued.fetch_sub(1, Ordering::AcqRel);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
            counts: self.counts.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The global subscriber keeps a sender alive, so the guard cannot wait for the thread to
    /// end: it waits for the queued lines only, and a short-lived command exits at once.
    #[test]
    fn guard_waits_for_queued_lines_not_for_the_thread() {
        let (nb, guard) = stderr();
        let counts = nb.counts.clone();
        for _ in 0..3 {
            let mut line = nb.make_writer();
            line.write_all(b"logwriter test line\n").unwrap();
        }
        let mut guard = guard;
        assert!(guard.drain(), "the guard gave up waiting");
        assert_eq!(counts.written.load(Ordering::Acquire), 3);
        assert_eq!(counts.pending.load(Ordering::Acquire), 0);
        drop(nb);
    }

    /// With nobody writing, the queue holds at most QUEUE_BYTES, however few lines that is.
    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let (tx, _rx) = channel::<Vec<u8>>();
        let nb = NonBlocking {
            tx,
            counts: Arc::default(),
        };
        let big = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            nb.make_writer().write_all(&big).unwrap();
        }
        let c = &nb.counts;
        assert_eq!(c.queued.load(Ordering::Acquire), 8, "8 MiB of 1 MiB lines");
        assert_eq!(c.dropped.load(Ordering::Acquire), 12);
        assert!(c.pending.load(Ordering::Acquire) <= QUEUE_BYTES);
    }

    /// With nobody writing, the queue holds at most QUEUE_LINES lines, however short.
    #[test]
    fn the_queue_is_bounded_in_lines() {
        let (tx, _rx) = channel::<Vec<u8>>();
        let nb = NonBlocking {
            tx,
            counts: Arc::default(),
        };
        for _ in 0..QUEUE_LINES + 10 {
            nb.make_writer().write_all(b"x\n").unwrap();
        }
        let c = &nb.counts;
        assert_eq!(c.queued.load(Ordering::Acquire), QUEUE_LINES as u64);
        assert_eq!(c.dropped.load(Ordering::Acquire), 10);
    }
}
