//! Helpers shared by Daybreak's integration tests: running the binary, waiting for it, and
//! deciding whether a test that needs root or system tools can run here.

#![allow(dead_code)]

pub mod browser;
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
        Daybreak::start_with(args, dir, None)
    }

    /// As [`Daybreak::start`], under a hard limit of `nofile` descriptors when given (the
    /// common 1,024: the server cannot raise it).
    pub fn start_with(args: &[&str], dir: &Path, nofile: Option<u64>) -> Daybreak {
        let mut d = Daybreak::spawn_with(args, dir, nofile);
        d.wait_for_any(
            &[" ready\n", "\"message\":\"ready\""],
            Duration::from_secs(10),
        );
        d
    }

    /// As [`Daybreak::start_with`], without waiting for it to be ready.
    pub fn spawn_with(args: &[&str], dir: &Path, nofile: Option<u64>) -> Daybreak {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("daybreak-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        Daybreak { child, log }
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
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        (Daybreak::start(&all, dir), http, tftp)
    }

    /// Where its admin listener is, as its log says: `http://ADDR:PORT`.
    pub fn admin(&self) -> String {
        let log = self.log_text();
        let at = log
            .lines()
            .filter(|l| l.contains("admin ("))
            .find_map(|l| l.split_once(" on http://"))
            .map(|(_, rest)| rest.split(['/', '"', ' ']).next().unwrap_or("").to_string());
        match at {
            Some(a) => format!("http://{a}"),
            None => panic!("no admin listener in the log:\n{log}"),
        }
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

/// Lets this test hold a few thousand sockets (its soft descriptor limit up to the hard one).
pub fn raise_own_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    assert!(
        l.rlim_cur >= 4096,
        "the test needs 4096 descriptors, has {}",
        l.rlim_cur
    );
}

/// Network namespaces removed when dropped.
pub struct Netns {
    pub names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `ip ARGS…`; panics unless it succeeds.
pub fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// Runs `f` on a thread that has entered network namespace `ns` (processes it starts are in
/// that namespace too).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .unwrap()
}

/// A client namespace and a server namespace joined by a veth pair (`c0` ~ `s0`), with the
/// given addresses (prefix length included); removed when the guards drop.
pub fn veth_pair(tag: &str, client: &str, server: &[&str]) -> (String, String, [Netns; 2]) {
    let id = std::process::id();
    let (cns, sns) = (format!("db{tag}{id}c"), format!("db{tag}{id}s"));
    ip(&["netns", "add", &cns]);
    let guard_c = Netns {
        names: vec![cns.clone()],
    };
    ip(&["netns", "add", &sns]);
    let guard_s = Netns {
        names: vec![sns.clone()],
    };
    ip(&["-n", &cns, "link", "set", "lo", "up"]);
    ip(&["-n", &sns, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &cns, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", &sns,
    ]);
    ip(&["-n", &cns, "addr", "add", client, "dev", "c0"]);
    for a in server {
        ip(&["-n", &sns, "addr", "add", a, "dev", "s0"]);
    }
    ip(&["-n", &cns, "link", "set", "c0", "up"]);
    ip(&["-n", &sns, "link", "set", "s0", "up"]);
    (cns, sns, [guard_c, guard_s])
}

/// A machine and the server on one link: the machine's namespace (its end of the link has the
/// MAC it plays, so the server's neighbour entry for it says who it is, as on a real LAN) and
/// the server's, subnet 10.77.`net`.0/24 (the machine .10, the server .2).
pub struct Lan {
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: std::net::Ipv4Addr,
    _guards: [Netns; 2],
}

impl Lan {
    pub fn new(tag: &str, net: u8, mac: &str) -> Lan {
        let (cns, sns, guards) = veth_pair(
            tag,
            &format!("10.77.{net}.10/24"),
            &[&format!("10.77.{net}.2/24")],
        );
        ip(&["-n", &cns, "link", "set", "c0", "address", mac]);
        Lan {
            client_ns: cns,
            server_ns: sns,
            server_ip: std::net::Ipv4Addr::new(10, 77, net, 2),
            _guards: guards,
        }
    }

    /// `daybreak ARGS… --http-port 8090 --no-proxy-dhcp` in the server's namespace.
    pub fn start(&self, args: &[&str], dir: &Path) -> Daybreak {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--no-proxy-dhcp".to_string()]);
        let dir = dir.to_path_buf();
        in_netns(&self.server_ns, move || {
            let a: Vec<&str> = all.iter().map(String::as_str).collect();
            Daybreak::start(&a, &dir)
        })
    }

    /// `http://SERVER:8090`.
    pub fn base(&self) -> String {
        format!("http://{}:8090", self.server_ip)
    }

    /// Runs `f` as the machine (in its namespace).
    pub fn machine<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.client_ns, f)
    }
}
