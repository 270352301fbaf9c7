//! HTTP/1.1 as Daybreak's boot clients speak it, without I/O: the request head, `Range`,
//! percent-encoding, and where a byte range of a file made of extents lies. Everything here
//! takes bytes a client chose, so every function is total: malformed input is `None` or a
//! whole-body answer, never a panic (the `http_head` fuzz target holds it to that).

/// Decodes `%XX` escapes of a path; `None` on a malformed escape or non-UTF-8 result. A `+` is
/// a plus here: only in a query does it stand for a space.
pub fn percent_decode(s: &str) -> Option<String> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `key` in a query string, decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v, true)).flatten()
    })
}

/// A file name made fit for a URL path: everything but unreserved characters percent-encoded.
pub fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A parsed `Range` header against a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No range, or one we serve whole (multiple ranges, unknown units).
    Full,
    /// Inclusive start and end.
    Part(u64, u64),
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, len: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), _) if start >= len => Range::Unsatisfiable,
        (Some(start), None) if b.is_empty() => Range::Part(start, len - 1),
        (Some(start), Some(end)) if end >= start => Range::Part(start, end.min(len - 1)),
        (None, Some(0)) if a.is_empty() => Range::Unsatisfiable,
        (None, Some(n)) if a.is_empty() => {
            if len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part(len.saturating_sub(n), len - 1)
            }
        }
        _ => Range::Full,
    }
}

pub struct Head {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    /// `Host`, and `Authorization`, as sent (the head is bounded in size).
    pub host: Option<String>,
    pub authorization: Option<String>,
    pub keep_alive: bool,
    pub has_body: bool,
}

pub fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut range = None;
    let (mut host, mut authorization) = (None, None);
    let mut has_body = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("range") {
            range = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("host") {
            host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            has_body = value != "0";
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        }
    }
    Some(Head {
        method,
        target,
        range,
        host,
        authorization,
        keep_alive,
        has_body,
    })
}

/// The file offsets covering `start..start + count` of the concatenated ranges:
/// `(file offset, logical start, logical end)` per overlapping piece.
pub fn pieces(ranges: &[(u64, u64)], start: u64, count: u64) -> Vec<(u64, u64, u64)> {
    let end = start.saturating_add(count);
    let mut base = 0u64;
    let mut out = Vec::new();
    for &(offset, len) in ranges {
        let (a, b) = (start.max(base), end.min(base.saturating_add(len)));
        if a < b {
            out.push((offset + (a - base), a, b));
        }
        base = base.saturating_add(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Range::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Range::Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Range::Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), Range::Part(0, 99));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), Range::Part(50, 99));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Range::Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Range::Full);
        assert_eq!(parse_range(Some("bytes=9-1"), 100), Range::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Range::Full);
    }

    #[test]
    fn pieces_map_logical_ranges_onto_extents() {
        let r = [(1000, 10), (5000, 20), (9000, 5)];
        assert_eq!(
            pieces(&r, 0, 35),
            vec![(1000, 0, 10), (5000, 10, 30), (9000, 30, 35)]
        );
        assert_eq!(pieces(&r, 8, 4), vec![(1008, 8, 10), (5000, 10, 12)]);
        assert_eq!(pieces(&r, 31, 4), vec![(9001, 31, 35)]);
        assert_eq!(pieces(&r, 10, 20), vec![(5000, 10, 30)]);
    }

    #[test]
    fn heads() {
        let h = parse_head(b"GET /kernel HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\n\r\n").unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/kernel"));
        assert_eq!(h.range.as_deref(), Some("bytes=1-2"));
        assert!(h.keep_alive);
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        assert!(parse_head(b"GET / SPDY/3\r\n\r\n").is_none());
        assert!(parse_head(b"GET /\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n").is_none());
        assert!(parse_head(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn query_and_percent() {
        assert_eq!(
            query_param("arch=7&mac=52%3A54", "mac").as_deref(),
            Some("52:54")
        );
        assert_eq!(query_param("name=a+b", "name").as_deref(), Some("a b"));
        assert_eq!(percent_decode("/a+b.img").as_deref(), Some("/a+b.img"));
        assert_eq!(percent_encode("a+b c.img"), "a%2Bb%20c.img");
        assert_eq!(
            percent_decode(&percent_encode("a+b c.img")).unwrap(),
            "a+b c.img"
        );
    }
}
