//! The cluster benchmark's etcd side, through etcd's JSON gateway (plain HTTP on its client
//! port): filling a store with machine records as Daybreak writes them, and timing how long a
//! change written to etcd takes to show on a replica's `/api/machines/MAC`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request to `addr`, its status and body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

/// Machine `i`'s MAC in the seeded store: 52:54:bb:HH:MM:LL.
fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0xbb, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn record(i: usize, installed: bool) -> (String, String) {
    let m = mac(i);
    let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
    let text: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
    let installed = if installed {
        ",\"installed_at\":1796000100"
    } else {
        ""
    };
    (
        hex,
        format!(
            "{{\"mac\":\"{}\",\"first_seen\":1796000000,\"last_seen\":1796000000,\"boots\":3,\"arch\":\"amd64\",\"firmware\":\"UEFI PXE, then iPXE\"{installed}}}",
            text.join(":")
        ),
    )
}

/// `etcd-seed ETCD PREFIX N`: N records under PREFIX/machines/, 128 to a transaction.
pub fn seed(etcd: SocketAddr, prefix: &str, n: usize) -> Result<()> {
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let ops: Vec<String> = (i..(i + 128).min(n))
            .map(|k| {
                let (hex, value) = record(k, k % 4 == 0);
                format!(
                    "{{\"requestPut\":{{\"key\":\"{}\",\"value\":\"{}\"}}}}",
                    base64(format!("{prefix}/machines/{hex}").as_bytes()),
                    base64(value.as_bytes())
                )
            })
            .collect();
        let (code, body) = request(
            etcd,
            "POST",
            "/v3/kv/txn",
            &format!("{{\"success\":[{}]}}", ops.join(",")),
        )?;
        if code != 200 {
            bail!("etcd answered {code}: {body}");
        }
        i += 128;
    }
    println!("seeded={n} seconds={:.2}", start.elapsed().as_secs_f64());
    Ok(())
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `etcd-lag ETCD PREFIX ADMIN N`: N times, a machine's install written to etcd (as another
/// replica would), then the replica's `/api/machines/MAC` asked every millisecond until it says
/// so; p50 and p99 of that lag.
pub fn lag(etcd: SocketAddr, prefix: &str, admin: SocketAddr, n: usize) -> Result<()> {
    let mut lags = Vec::new();
    for k in 0..n {
        let i = 0x00f0_0000 + k;
        let (hex, value) = record(i, true);
        let text: Vec<String> = mac(i).iter().map(|b| format!("{b:02x}")).collect();
        let put = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(format!("{prefix}/machines/{hex}").as_bytes()),
            base64(value.as_bytes())
        );
        let t = Instant::now();
        let (code, body) = request(etcd, "POST", "/v3/kv/put", &put)?;
        if code != 200 {
            bail!("etcd answered {code}: {body}");
        }
        loop {
            let (code, body) = request(
                admin,
                "GET",
                &format!("/api/machines/{}", text.join(":")),
                "",
            )?;
            if code == 200 && body.contains("\"installed_at\"") {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("machine {k}'s install not seen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        lags.push(t.elapsed());
    }
    println!(
        "lag_n={n} lag_p50_ms={:.1} lag_p99_ms={:.1}",
        percentile(&mut lags, 0.5),
        percentile(&mut lags, 0.99)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_rfc_4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
