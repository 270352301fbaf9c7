//! A log writer that never blocks the caller: formatted lines go through a bounded queue to a
//! thread that writes them to stderr. The DHCP path logs every offer, and a slow reader of our
//! stderr (a paused terminal, a busy journald) must not delay the next one. If the queue is ever
//! full, lines are dropped and the count is reported once the writer catches up.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

const QUEUE_LINES: usize = 65_536;

#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Starts the writer thread. Lines still queued when the process exits are flushed by [`Guard`].
pub fn stderr() -> (NonBlocking, Guard) {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let seen = dropped.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            // The stderr lock is taken per burst, never held while waiting: `eprintln!` elsewhere
            // (the final error message) must not wait on this thread.
            let stderr = io::stderr();
            let mut reported = 0;
            // Block for the first line of a burst, then keep draining every few milliseconds
            // until the queue stays empty: while lines keep coming, nobody has to wake this
            // thread, so logging costs the hot path no syscall.
            while let Ok(line) = rx.recv() {
                let _ = stderr.lock().write_all(&line);
                loop {
                    let mut out = stderr.lock();
                    let mut wrote = false;
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(&more);
                        wrote = true;
                    }
                    let d = seen.load(Ordering::Relaxed);
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
            dropped,
        },
        Guard {
            tx: Some(tx),
            thread: Some(thread),
        },
    )
}

/// Flushes the queue on drop (end of `main`).
pub struct Guard {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.tx.take());
        // Other senders live in the global subscriber; give the writer a moment to drain.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// One event's formatted bytes, queued when dropped.
pub struct Line {
    buf: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
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
        match self.tx.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }
}
