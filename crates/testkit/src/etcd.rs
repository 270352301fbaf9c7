//! A real etcd (Debian's `etcd-server`) for tests: one member on loopback, or the members of one
//! cluster, each in a network namespace of its own. Stopped with `kill -9` (as a crash) when
//! dropped.

use std::path::PathBuf;
use std::time::Duration;

use crate::{require, tempdir};

/// One etcd member.
pub struct Etcd {
    child: Option<std::process::Child>,
    /// Its name in the cluster (`m0`, `m1`...).
    pub name: String,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
    /// `ADDR:PORT` of its client URL, for `etcd://`.
    pub endpoint: String,
    peer: String,
    cluster: String,
    pub dir: PathBuf,
}

/// A port nothing listens on now (bound and released: another may take it, rarely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl Etcd {
    /// One member on loopback, answering (waited for at most 20 s); `None` when etcd is not
    /// installed (the test is then skipped, or fails under CI: [`require`]).
    pub fn start(tag: &str) -> Option<Etcd> {
        if !require(false, &["etcd", "etcdctl"]) {
            return None;
        }
        let (client, peer) = (free_port(), free_port());
        let m = &[(
            None,
            format!("127.0.0.1:{client}"),
            format!("127.0.0.1:{peer}"),
        )];
        Etcd::members(tag, m).pop()
    }

    /// A cluster of one member per `(namespace, address)`, ports 2379 (clients) and 2380
    /// (peers) on each address, all started, then waited for until each answers.
    pub fn cluster(tag: &str, members: &[(&str, std::net::Ipv4Addr)]) -> Option<Vec<Etcd>> {
        if !require(true, &["etcd", "etcdctl", "ip"]) {
            return None;
        }
        let m: Vec<_> = members
            .iter()
            .map(|(ns, a)| {
                (
                    Some(ns.to_string()),
                    format!("{a}:2379"),
                    format!("{a}:2380"),
                )
            })
            .collect();
        Some(Etcd::members(tag, &m))
    }

    fn members(tag: &str, m: &[(Option<String>, String, String)]) -> Vec<Etcd> {
        let cluster: Vec<String> = m
            .iter()
            .enumerate()
            .map(|(i, (_, _, peer))| format!("m{i}=http://{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut all: Vec<Etcd> = m
            .iter()
            .enumerate()
            .map(|(i, (netns, endpoint, peer))| Etcd {
                child: None,
                name: format!("m{i}"),
                netns: netns.clone(),
                endpoint: endpoint.clone(),
                peer: peer.clone(),
                cluster: cluster.clone(),
                dir: tempdir(&format!("{tag}-m{i}")),
            })
            .collect();
        for e in &mut all {
            e.spawn();
        }
        for e in &mut all {
            e.wait_healthy();
        }
        all
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs etcd: the child is etcd itself.
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => std::process::Command::new("etcd"),
        };
        let (endpoint, peer) = (&self.endpoint, &self.peer);
        cmd.args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                &format!("--listen-client-urls=http://{endpoint}"),
                &format!("--advertise-client-urls=http://{endpoint}"),
                &format!("--listen-peer-urls=http://{peer}"),
                &format!("--initial-advertise-peer-urls=http://{peer}"),
                &format!("--initial-cluster={}", self.cluster),
                "--initial-cluster-token=daybreak-test",
                "--log-level=error",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Kills it (`kill -9`): its clients find nobody there.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its data and its address, after [`Etcd::kill`]; waits until it
    /// answers (a member of a cluster only answers with a quorum up).
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        for _ in 0..200 {
            if self.ctl(&["endpoint", "health"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd {} did not come up in 20 s: {}",
            self.name,
            std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
        );
    }

    /// `etcdctl ARGS` against this member (from its namespace): its stdout, or its stderr as
    /// the error.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
            None => std::process::Command::new("etcdctl"),
        };
        let out = cmd
            .arg(format!("--endpoints=http://{}", self.endpoint))
            .arg("--command-timeout=3s")
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Whether this member is the cluster's leader now.
    pub fn is_leader(&self) -> bool {
        self.ctl(&["endpoint", "status", "-w", "json"])
            .is_ok_and(|j| {
                // {"Status":{"header":{"member_id":X,...},"leader":X,...}}
                let id = field(&j, "\"member_id\":");
                id.is_some() && id == field(&j, "\"leader\":")
            })
    }
}

/// The number after `key` in `json`.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let rest = &json[json.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
