//! Helpers shared by Daybreak's integration tests: running the binary, waiting for it, and
//! deciding whether a test that needs root or system tools can run here.

#![allow(dead_code)]

pub mod oci;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_daybreak");

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[allow(unused_imports)]
pub use testkit::{have, is_root, require, skip};

/// Runs `bash tests/e2e/SCRIPT ARGS…`, shows its output, and fails the test unless it exits 0
/// and prints `pass` (the scripts print their own verdict line with the logs that explain it).
pub fn run_e2e(script: &str, args: &[&str], pass: &str) {
    let out = Command::new("bash")
        .arg(workspace_root().join("tests/e2e").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains(pass),
        "{script} {args:?} failed:\n{text}"
    );
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tempdir(tag: &str) -> PathBuf {
    testkit::tempdir(&format!("test-{tag}"))
}

/// A running `daybreak`, killed on drop; its stderr goes to a log file.
pub struct Daybreak {
    pub child: Child,
    pub log: PathBuf,
}

impl Daybreak {
    pub fn start(args: &[&str], dir: &Path) -> Daybreak {
        let log = dir.join(format!("daybreak-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut d = Daybreak { child, log };
        d.wait_for_any(
            &[" ready\n", "\"message\":\"ready\""],
            Duration::from_secs(10),
        );
        d
    }

    /// `daybreak ARGS… --listen 127.0.0.1 --http-port H --tftp-port T --no-proxy-dhcp` on free
    /// loopback ports; returns the server and its (HTTP, TFTP) ports.
    pub fn start_loopback(args: &[&str], dir: &Path) -> (Daybreak, u16, u16) {
        let (http, tftp) = (free_tcp_port(), free_udp_port());
        let (h, t) = (http.to_string(), tftp.to_string());
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--listen",
            "127.0.0.1",
            "--http-port",
            &h,
            "--tftp-port",
            &t,
            "--no-proxy-dhcp",
        ]);
        (Daybreak::start(&all, dir), http, tftp)
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle`; panics with the log on timeout or early exit.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) {
        self.wait_for_any(&[needle], limit)
    }

    pub fn wait_for_any(&mut self, needles: &[&str], limit: Duration) {
        let needle = needles[0];
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if needles.iter().any(|n| log.contains(n)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daybreak exited ({status}) before {needle:?}:\n{}",
                    self.log_text()
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "daybreak did not log {needle:?} within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daybreak {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion, killing it after `limit` (a hang fails the test, not CI).
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs `BIN args…` as user nobody without capabilities. `None` (after saying so) when this
/// machine's build directory is not reachable by an unprivileged user.
pub fn run_as_nobody(args: &[&str]) -> Option<(std::process::ExitStatus, String)> {
    let out = output_within(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                BIN,
            ])
            .args(args),
        Duration::from_secs(30),
    );
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    if e.contains("Permission denied") && e.contains(BIN) {
        skip("the test binary is not executable by an unprivileged user here");
        return None;
    }
    Some((out.status, e))
}

/// The body of `url` as text, fetched with curl; panics with curl's error when it fails.
pub fn get_text(url: &str) -> String {
    let o = output_within(
        Command::new("curl").args(["-sSf", "--max-time", "10", url]),
        Duration::from_secs(20),
    );
    assert!(
        o.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `config_url=` of an iPXE script or kernel command line (the cloud-config's secret URL).
pub fn config_url(script: &str) -> String {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("config_url="))
        .unwrap_or_else(|| panic!("no config_url= in {script}"))
        .to_string()
}
