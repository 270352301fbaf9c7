//! Headless Chromium driven over its DevTools pipe (`--remote-debugging-pipe`: messages of JSON,
//! each ended by a NUL, on descriptors 3 and 4), so a page runs on the real clock. A page with a
//! stream of events open never settles under `--virtual-time-budget` (the virtual clock stops
//! while a download is open), so the live page is looked at this way.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<serde_json::Value>,
    session: String,
    next: u64,
}

/// A pipe: its read end and its write end.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Chromium with `url` open in a tab, its profile in `home`.
    pub fn open(url: &str, home: &Path) -> Browser {
        use std::os::fd::AsRawFd as _;
        let (chrome_reads, we_write) = pipe();
        let (we_read, chrome_writes) = pipe();
        let (r, w) = (chrome_reads.as_raw_fd(), chrome_writes.as_raw_fd());
        let mut c = Command::new("chromium");
        c.env("HOME", home)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .args(["--no-first-run", "--remote-debugging-pipe"])
            .arg(format!("--user-data-dir={}", home.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only dup2 between fork and exec (async-signal-safe); the duplicates are
        // not close-on-exec, so Chromium finds them as 3 and 4.
        unsafe {
            c.pre_exec(move || {
                // Out of the way first: either end may be 3 or 4 already.
                let (r, w) = (
                    libc::fcntl(r, libc::F_DUPFD, 10),
                    libc::fcntl(w, libc::F_DUPFD, 10),
                );
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("start chromium");
        drop((chrome_reads, chrome_writes));
        let (tx, from) = mpsc::channel();
        let mut reader = BufReader::new(std::fs::File::from(we_read));
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match reader.read_until(0, &mut msg) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    msg.pop();
                    if let Ok(v) = serde_json::from_slice(&msg) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to: std::fs::File::from(we_write),
            from,
            session: String::new(),
            next: 0,
        };
        let target = b.call("Target.createTarget", serde_json::json!({ "url": url }));
        let id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": id, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        b
    }

    /// Sends `method` (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let mut msg = serde_json::json!({ "id": self.next, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"].as_u64() == Some(self.next) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// What `expression` gives in the page, as text.
    pub fn eval(&mut self, expression: &str) -> String {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        match &r["result"]["value"] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }

    /// `expression` once it gives text containing `want` (or what it gives after `limit`).
    pub fn eval_until(&mut self, expression: &str, want: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let got = self.eval(expression);
            if got.contains(want) || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
