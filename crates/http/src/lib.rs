//! A small HTTP/1.1 server for boot files: GET and HEAD, single byte ranges (dracut resumes the
//! squashfs download with them), keep-alive, and file bodies sent with `sendfile(2)` straight
//! from the page cache, so memory stays flat however many machines download at once.
//!
//! It serves only what a [`Router`] names; request paths never become filesystem paths. What
//! happens is told to an [`Observer`]: which clients are machines booting now (their
//! connections are kept when a flood crowds in), how far a large body has gone, and each
//! response sent. The server knows nothing of machines or boots beyond that.

#![warn(unreachable_pub)]

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod wire;

use wire::{parse_head, parse_range, pieces, Head, Range};
pub use wire::{percent_decode, percent_encode, query_param};

/// What the server tells its owner. Called on the connections' tasks: it must not block.
pub trait Observer: Send + Sync + 'static {
    /// Whether `ip` is a machine booting with us now: its connections are kept when a flood of
    /// connections from strangers crowds in.
    fn known(&self, ip: IpAddr) -> bool;
    /// A large body on its way: the bytes of this response sent so far (at most once a second).
    fn progress(&self, peer: SocketAddr, name: &str, bytes: u64);
    /// A response ended, whole or not.
    fn sent(&self, report: &Report);
    /// A request for something this server does not have (404); `path` as the router shows it.
    fn not_found(&self, _peer: SocketAddr, _path: &str) {}
}

/// No one to tell: every client is a stranger.
pub struct Unobserved;

impl Observer for Unobserved {
    fn known(&self, _: IpAddr) -> bool {
        false
    }
    fn progress(&self, _: SocketAddr, _: &str, _: u64) {}
    fn sent(&self, _: &Report) {}
}

/// How a response ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub peer: SocketAddr,
    /// The resource's name as the router gave it (names starting with `_` are the server
    /// owner's own: scripts, pages).
    pub name: String,
    pub code: u16,
    /// The byte range sent: `start`, and `count` bytes from it.
    pub start: u64,
    pub count: u64,
    /// Bytes of the body that went out (`count` when whole).
    pub sent: u64,
    pub ms: u64,
    /// `None` when the body went out whole; else why it did not.
    pub error: Option<String>,
}

impl Report {
    /// One of the server owner's own resources (a script, a page), not a boot file.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with('_')
    }
}

/// The log line of a response; `mac` is the client's, when the caller knows it.
pub fn log_report(r: &Report, mac: Option<&dyn std::fmt::Display>) {
    let (peer, name, count, ms) = (r.peer, r.name.as_str(), r.count, r.ms);
    let mac = mac.unwrap_or(&"-");
    match &r.error {
        None if r.is_internal() => {
            tracing::debug!(client = %peer, mac = %mac, file = %name, bytes = count, ms, "http sent")
        }
        None if r.code == 206 => tracing::info!(
            client = %peer, mac = %mac, file = %name, bytes = count, ms,
            range = %format_args!("{}-{}", r.start, r.start + count - 1),
            "http sent"
        ),
        None => {
            tracing::info!(client = %peer, mac = %mac, file = %name, bytes = count, ms, "http sent")
        }
        Some(e) => {
            tracing::warn!(client = %peer, mac = %mac, file = %name, error = %e, "http transfer interrupted")
        }
    }
}

const MAX_HEAD: usize = 16 * 1024;

/// What clients may hold of the server. Every connection costs a descriptor, and anyone on the
/// LAN can open them: the caps keep the server answering whatever a flood does, by shedding
/// the connections that are doing nothing (the oldest idle keep-alive first) before refusing
/// new ones, and by cutting off clients that read too slowly to be booting anything.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// How long a connection may wait between requests, or take to send a request head.
    pub idle: Duration,
    /// Slowest a response body may be read, averaged over `rate_window` (which is also how
    /// long a client may stall outright).
    pub min_rate: u64,
    pub rate_window: Duration,
    /// Connections of one known address that are a booting machine's (kept when strangers
    /// crowd in); its others are a stranger's. Being known is one forgeable packet away: it
    /// buys a share, not the server.
    pub known_share: usize,
    /// How long a known connection may wait for its first request before it counts as idle
    /// (a machine sends its request the moment it connects).
    pub first_request: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_per_address: 32,
            idle: Duration::from_secs(30),
            min_rate: 16 * 1024,
            rate_window: Duration::from_secs(30),
            known_share: 4,
            first_request: Duration::from_secs(5),
        }
    }
}

struct Conn {
    ip: IpAddr,
    /// From a machine booting with us (it did its PXE exchange moments ago).
    known: bool,
    /// It has sent a request: idle now means between requests, not before the first.
    served: bool,
    /// Since when it waits for a request, if it does.
    idle_since: Option<Instant>,
    shed: CancellationToken,
}

/// The open connections, for the caps.
#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Conn>,
    per_address: HashMap<IpAddr, usize>,
    next: u64,
}

impl Registry {
    /// Makes room for a connection from `ip` and registers it; `None` when nothing could be
    /// shed. At an address's cap, that address's oldest idle connection goes. At the server's,
    /// the oldest idle connection of an address nobody knows goes, else (for a `known` newcomer,
    /// a booting machine) the oldest known one idle between requests. A booting machine's
    /// connection that has not sent its first request yet is not shed for
    /// [`Limits::first_request`]: like a TFTP transfer before its first ACK, it looks idle, but
    /// its request is on the way, and a flood of new connections must not push it out. A known
    /// address holds [`Limits::known_share`] such connections; its others are a stranger's.
    fn admit(
        &mut self,
        ip: IpAddr,
        known: bool,
        limits: &Limits,
    ) -> Option<(u64, CancellationToken)> {
        if self.per_address.get(&ip).copied().unwrap_or(0) >= limits.max_per_address
            && !self.shed_oldest_idle(|c| c.ip == ip)
        {
            return None;
        }
        // A known address's share; its connections beyond it are a stranger's.
        let known = known
            && self
                .conns
                .values()
                .filter(|c| c.known && c.ip == ip)
                .count()
                < limits.known_share;
        let first = limits.first_request;
        if self.conns.len() >= limits.max_connections
            && !self.shed_oldest_idle(|c| {
                !c.known
                    || (known && c.served)
                    || (!c.served && c.idle_since.is_some_and(|t| t.elapsed() >= first))
            })
        {
            return None;
        }
        let id = self.next;
        self.next += 1;
        let shed = CancellationToken::new();
        self.conns.insert(
            id,
            Conn {
                ip,
                known,
                served: false,
                idle_since: Some(Instant::now()),
                shed: shed.clone(),
            },
        );
        *self.per_address.entry(ip).or_insert(0) += 1;
        Some((id, shed))
    }

    /// Sheds the idle connection `may_go` that is oldest, unknown ones first.
    fn shed_oldest_idle(&mut self, may_go: impl Fn(&Conn) -> bool) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| may_go(c))
            .filter_map(|(id, c)| Some((c.known, c.idle_since?, *id)))
            .min();
        match oldest {
            Some((_, _, id)) => {
                if let Some(c) = self.remove(id) {
                    c.shed.cancel();
                }
                true
            }
            None => false,
        }
    }

    fn set_idle(&mut self, id: u64, idle: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.idle_since = idle.then(Instant::now);
            c.served |= !idle;
        }
    }

    fn remove(&mut self, id: u64) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&c.ip);
            }
        }
        Some(c)
    }
}

type Shared = Arc<Mutex<Registry>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unregisters a connection however its task ends.
struct Admitted {
    id: u64,
    registry: Shared,
    shed: CancellationToken,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.registry).remove(self.id);
    }
}

/// Checks that a client keeps reading: at least `min_rate` bytes per `window`.
struct Pace {
    min_rate: u64,
    window: Duration,
    since: Instant,
    bytes: u64,
}

impl Pace {
    fn new(limits: &Limits) -> Pace {
        Pace {
            min_rate: limits.min_rate,
            window: limits.rate_window,
            since: Instant::now(),
            bytes: 0,
        }
    }

    fn sent(&mut self, n: u64) -> io::Result<()> {
        self.bytes += n;
        let elapsed = self.since.elapsed();
        if elapsed >= self.window {
            if (self.bytes as f64) < self.min_rate as f64 * elapsed.as_secs_f64() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("client reads slower than {} KiB/s", self.min_rate / 1024),
                ));
            }
            self.since = Instant::now();
            self.bytes = 0;
        }
        Ok(())
    }
}

/// Where a response body comes from. Files are descriptors opened before serving started,
/// never paths: nothing a request does, and nothing done to the filesystem since, can make the
/// server open another file.
#[derive(Debug, Clone)]
pub enum Body {
    Memory(bytes::Bytes),
    File(Arc<File>),
    /// The concatenation of byte ranges `(offset, len)` of a file: a file inside an ISO, served
    /// without extracting it.
    Ranges(Arc<File>, Arc<[(u64, u64)]>),
}

/// Where a proxied body comes from: opened on a thread of its own (it may block), it gives
/// the body's length (iPXE needs one) and a reader.
pub trait Upstream: Send + Sync {
    fn open(&self) -> Result<(u64, Box<dyn std::io::Read + Send>), String>;
    /// What it is, for log lines (no secrets).
    fn describe(&self) -> String;
}

/// What the router decided for a request.
#[derive(Clone)]
pub enum Reply {
    /// A named resource; `name` is used in logs.
    Resource {
        name: String,
        content_type: &'static str,
        body: Body,
    },
    /// Plain 404.
    NotFound,
    /// Another status with an empty body (401, 403), and its extra header lines, each ending
    /// in CRLF (`WWW-Authenticate: ...\r\n`).
    Refused { code: u16, headers: &'static str },
    /// An answer that has to wait on something slow (the disk, another server): made on a
    /// thread of its own, never on the threads serving every other connection.
    Later(Arc<dyn Fn() -> Reply + Send + Sync>),
    /// The body of an upstream, passed through as it comes, with its length: pixiecore's API
    /// mode proxies what the API names. A failed fetch is a 502.
    Proxy {
        name: String,
        upstream: Arc<dyn Upstream>,
    },
    /// Server-sent events (`text/event-stream`) for as long as the client reads them and the
    /// server runs: a page's live view.
    Events(Arc<dyn Events>),
}

/// What a stream of server-sent events sends ([`Reply::Events`]): asked every
/// [`EVENT_TICK`], on the threads that answer every connection, so it must not wait (what takes
/// time is made elsewhere, and taken when it is ready).
pub trait Events: Send + Sync {
    /// The event after the one with id `seen` (0 before the first): its id (not 0) and its
    /// data, one line; `None` while there is nothing new.
    fn next(&self, seen: u64) -> Option<(u64, Arc<[u8]>)>;
}

/// How often an event stream asks for its next event.
pub const EVENT_TICK: Duration = Duration::from_secs(1);
/// A stream with nothing new sends a comment this often, so a client gone away is noticed.
const EVENT_KEEPALIVE: Duration = Duration::from_secs(15);

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Resource {
                name, content_type, ..
            } => write!(f, "Resource({name}, {content_type})"),
            Reply::NotFound => f.write_str("NotFound"),
            Reply::Refused { code, .. } => write!(f, "Refused({code})"),
            Reply::Later(_) => f.write_str("Later"),
            Reply::Proxy { name, upstream } => {
                write!(f, "Proxy({name}, {})", upstream.describe())
            }
            Reply::Events(_) => f.write_str("Events"),
        }
    }
}

impl Reply {
    /// A resource made in memory (a script, a page, JSON); `name` is used in logs, and names
    /// starting with `_` are Daybreak's own, logged at debug.
    pub fn memory(name: &str, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Reply {
        Reply::Resource {
            name: name.into(),
            content_type,
            body: Body::Memory(body.into()),
        }
    }
}

/// What the router sees of a request.
#[derive(Debug)]
pub struct Request<'a> {
    pub path: &'a str,
    pub query: &'a str,
    /// Our address on the connection: what the client used to reach us.
    pub local: IpAddr,
    pub peer: SocketAddr,
    /// The `Host` and `Authorization` headers, when sent.
    pub host: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

pub trait Router: Send + Sync + 'static {
    fn route(&self, req: &Request<'_>) -> Reply;

    /// A request path as it may go into a log line. A router whose paths carry secrets
    /// (capability URLs) leaves them out.
    fn shown(&self, path: &str) -> String {
        loggable(path).into_owned()
    }
}

/// Client-chosen text (a path, a query value) as it may go into a log line: as it is when it is
/// short and plain, else quoted with control characters escaped and cut to 200 characters.
pub fn loggable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= 200 && !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == 200 {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out.into()
}

/// Reads one request head into `buf`, returning its length. Bytes after it (a pipelined request)
/// stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut scanned: usize = 0;
    loop {
        if let Some(pos) = buf[scanned.saturating_sub(3)..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            return Ok(Some(scanned.saturating_sub(3) + pos + 4));
        }
        scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-request",
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How long a client may stall reading a response before it is dropped.
const WRITE_STALL: Duration = Duration::from_secs(30);

async fn write_all(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_STALL, stream.write_all(data))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}

/// Sends `len` bytes of `file` from `offset` with sendfile(2), waiting for socket writability.
async fn send_file(
    stream: &TcpStream,
    file: &File,
    mut offset: u64,
    mut len: u64,
    pace: &mut Pace,
    progress: &mut Progress<'_>,
) -> io::Result<()> {
    let (sock, fd) = (stream.as_raw_fd(), file.as_raw_fd());
    while len > 0 {
        tokio::time::timeout(pace.window, stream.writable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
        let chunk = len.min(1 << 30) as usize;
        let res = stream.try_io(Interest::WRITABLE, || {
            let mut off = offset as libc::off_t;
            // SAFETY: both fds are open for the duration of the call; `off` is a valid pointer.
            let n = unsafe { libc::sendfile(sock, fd, &mut off, chunk) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as u64)
            }
        });
        match res {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ))
            }
            Ok(n) => {
                offset += n;
                len -= n;
                pace.sent(n)?;
                progress.sent(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// TCP_CORK holds partial segments until uncorked: the header rides in the first full segment of
/// the body, and sendfile's output goes out in full segments (nginx's `tcp_nopush`).
fn set_cork(stream: &TcpStream, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: a valid socket fd and a pointer to an int of the stated size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sends bytes `start..start + count` of the concatenation of `ranges` of `file`.
async fn send_ranges(
    stream: &TcpStream,
    file: &File,
    ranges: &[(u64, u64)],
    start: u64,
    count: u64,
    pace: &mut Pace,
    progress: &mut Progress<'_>,
) -> io::Result<()> {
    for (offset, a, b) in pieces(ranges, start, count) {
        send_file(stream, file, offset, b - a, pace, progress).await?;
    }
    Ok(())
}

/// Files smaller than this go out without progress reports.
const PROGRESS_MIN: u64 = 4 << 20;
/// The most often a transfer's progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Reports how far a large body has gone, at most once a second: the status page's progress
/// bar while a machine downloads its squashfs.
struct Progress<'a> {
    to: Option<(&'a dyn Observer, &'a str, SocketAddr)>,
    sent: u64,
    last: Instant,
}

impl Progress<'_> {
    fn sent(&mut self, n: u64) {
        self.sent += n;
        if let Some((observer, name, peer)) = self.to {
            if self.last.elapsed() >= PROGRESS_EVERY {
                self.last = Instant::now();
                observer.progress(peer, name, self.sent);
            }
        }
    }
}

/// Sends `source`'s events until the client goes or the server stops; the connection closes
/// after.
async fn send_events(
    stream: &mut TcpStream,
    source: Arc<dyn Events>,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let header = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    write_all(stream, header.as_bytes()).await?;
    let (mut seen, mut quiet) = (0, Instant::now());
    loop {
        match source.next(seen) {
            Some((id, data)) => {
                seen = id;
                write_all(stream, format!("id: {id}\ndata: ").as_bytes()).await?;
                // One line: a newline in it would end the data early. The data is shared by
                // every stream: written as it is, not copied, when it is one line already.
                match data.contains(&b'\n') {
                    false => write_all(stream, &data).await?,
                    true => {
                        let line: Vec<u8> = data
                            .iter()
                            .map(|&b| if b == b'\n' { b' ' } else { b })
                            .collect();
                        write_all(stream, &line).await?
                    }
                }
                write_all(stream, b"\n\n").await?;
                quiet = Instant::now();
            }
            None if quiet.elapsed() >= EVENT_KEEPALIVE => {
                write_all(stream, b": nothing new\n\n").await?;
                quiet = Instant::now();
            }
            None => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(EVENT_TICK) => {}
        }
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn simple(code: u16, keep_alive: bool, extra: &str) -> Vec<u8> {
    let body = format!("{} {}\n", code, status_text(code));
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}Connection: {}\r\n\r\n{body}",
        status_text(code),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    )
    .into_bytes()
}

/// Handles one connection until it closes, times out, errs, or shutdown is asked between requests.
async fn connection<R: Router>(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Arc<R>,
    cancel: CancellationToken,
    limits: Arc<Limits>,
    admitted: Admitted,
    observer: Arc<dyn Observer>,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => match a.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        },
        Err(_) => return,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        lock(&admitted.registry).set_idle(admitted.id, buf.is_empty());
        let head_len = tokio::select! {
            _ = cancel.cancelled(), if buf.is_empty() => return,
            _ = admitted.shed.cancelled(), if buf.is_empty() => {
                tracing::debug!(client = %peer, "http: idle connection closed to make room");
                return;
            }
            r = tokio::time::timeout(limits.idle, read_head(&mut stream, &mut buf)) => match r {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "http: bad request");
                    let _ = write_all(&mut stream, &simple(400, false, "")).await;
                    return;
                }
                Err(_) => return,
            },
        };
        lock(&admitted.registry).set_idle(admitted.id, false);
        let head = parse_head(&buf[..head_len]);
        buf.drain(..head_len);
        let Some(head) = head else {
            let _ = write_all(&mut stream, &simple(400, false, "")).await;
            return;
        };
        // Boot clients never send request bodies; rather than parse one, answer and close.
        let keep_alive = head.keep_alive && !head.has_body && !cancel.is_cancelled();
        let exchange = Exchange {
            local,
            peer,
            keep_alive,
            pace: Pace::new(&limits),
            observer: &*observer,
            cancel: &cancel,
        };
        match respond(&mut stream, &head, &*router, exchange).await {
            Ok(()) if keep_alive => continue,
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "http: connection ended");
                return;
            }
        }
    }
}

/// One request's circumstances: the two ends, whether the connection stays open after it, the
/// reader's pace, and who is told.
struct Exchange<'a> {
    local: IpAddr,
    peer: SocketAddr,
    keep_alive: bool,
    pace: Pace,
    observer: &'a dyn Observer,
    /// The server is stopping: a stream of events ends.
    cancel: &'a CancellationToken,
}

async fn respond<R: Router>(
    stream: &mut TcpStream,
    head: &Head,
    router: &R,
    exchange: Exchange<'_>,
) -> io::Result<()> {
    let Exchange {
        local,
        peer,
        keep_alive,
        mut pace,
        observer,
        cancel,
    } = exchange;
    let pace = &mut pace;
    let is_head = head.method == "HEAD";
    if head.method != "GET" && !is_head {
        return write_all(stream, &simple(405, keep_alive, "Allow: GET, HEAD\r\n")).await;
    }
    let target = head
        .target
        .strip_prefix("http://")
        .map_or(head.target.as_str(), |t| {
            t.find('/').map_or("/", |i| &t[i..])
        });
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(path) = percent_decode(raw_path) else {
        return write_all(stream, &simple(400, keep_alive, "")).await;
    };
    let req = Request {
        path: &path,
        query,
        local,
        peer,
        host: head.host.as_deref(),
        authorization: head.authorization.as_deref(),
    };
    let mut reply = router.route(&req);
    if let Reply::Later(make) = reply {
        reply = tokio::task::spawn_blocking(move || make())
            .await
            .unwrap_or(Reply::Refused {
                code: 500,
                headers: "",
            });
    }
    let (name, content_type, body) = match reply {
        Reply::Resource {
            name,
            content_type,
            body,
        } => (name, content_type, body),
        Reply::NotFound => {
            let shown = router.shown(&path);
            tracing::info!(client = %peer, path = %shown, "http 404");
            observer.not_found(peer, &shown);
            return write_all(stream, &simple(404, keep_alive, "")).await;
        }
        Reply::Refused { code, headers } => {
            tracing::info!(client = %peer, path = %router.shown(&path), code, "http refused");
            return write_all(stream, &simple(code, keep_alive, headers)).await;
        }
        Reply::Later(_) => {
            tracing::error!(client = %peer, path = %router.shown(&path), "http: an answer made later gave another later one");
            return write_all(stream, &simple(500, false, "")).await;
        }
        Reply::Events(source) if !is_head => {
            tracing::debug!(client = %peer, path = %router.shown(&path), "http: event stream");
            return send_events(stream, source, cancel).await;
        }
        Reply::Events(_) => {
            let header =
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
            return write_all(stream, header.as_bytes()).await;
        }
        Reply::Proxy { name, upstream } => {
            let started = Instant::now();
            let to = Sent {
                name: &name,
                peer,
                observer,
            };
            let (count, result) = proxy(stream, upstream, keep_alive, is_head, pace, &to).await;
            if !is_head {
                let sent = if result.is_ok() { count } else { 0 };
                to.report(200, (0, count, sent), started, &result);
            }
            return result;
        }
    };
    let started = Instant::now();
    let file = match &body {
        Body::File(f) | Body::Ranges(f, _) => Some(f.clone()),
        Body::Memory(_) => None,
    };
    let len = match &body {
        Body::Memory(b) => b.len() as u64,
        Body::Ranges(_, r) => r.iter().map(|(_, l)| l).sum(),
        // Now, not when it was opened: a file rewritten in place is served as it is.
        Body::File(f) => f.metadata()?.len(),
    };
    let (code, start, count, range_hdr) = match parse_range(head.range.as_deref(), len) {
        Range::Full => (200, 0, len, String::new()),
        Range::Part(a, b) => (
            206,
            a,
            b - a + 1,
            format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
        ),
        Range::Unsatisfiable => {
            let extra = format!("Content-Range: bytes */{len}\r\n");
            return write_all(stream, &simple(416, keep_alive, &extra)).await;
        }
    };
    let header = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {count}\r\nAccept-Ranges: bytes\r\n{range_hdr}Connection: {}\r\n\r\n",
        status_text(code),
        if keep_alive { "keep-alive" } else { "close" },
    );
    let corked = file.is_some() && !is_head;
    if corked {
        set_cork(stream, true);
    }
    write_all(stream, header.as_bytes()).await?;
    if is_head {
        tracing::debug!(client = %peer, file = %name, "http HEAD");
        return Ok(());
    }
    let mut progress = Progress {
        to: (count >= PROGRESS_MIN && !name.starts_with('_')).then_some((
            observer,
            name.as_str(),
            peer,
        )),
        sent: 0,
        last: Instant::now(),
    };
    let result = match (&body, &file) {
        (Body::Memory(b), _) => {
            write_all(stream, &b[start as usize..(start + count) as usize]).await
        }
        (Body::Ranges(_, ranges), Some(f)) => {
            send_ranges(stream, f, ranges, start, count, pace, &mut progress).await
        }
        (_, Some(f)) => send_file(stream, f, start, count, pace, &mut progress).await,
        _ => Ok(()),
    };
    if corked {
        set_cork(stream, false);
    }
    let to = Sent {
        name: &name,
        peer,
        observer,
    };
    let sent = match (&result, &body) {
        (Ok(()), _) => count,
        (Err(_), Body::Memory(_)) => 0,
        (Err(_), _) => progress.sent,
    };
    to.report(code, (start, count, sent), started, &result);
    result
}

/// Who a response went to, for its report.
struct Sent<'a> {
    name: &'a str,
    peer: SocketAddr,
    observer: &'a dyn Observer,
}

impl Sent<'_> {
    /// `(start, count, sent)`: the range asked for and the bytes of it that went out.
    fn report(
        &self,
        code: u16,
        (start, count, sent): (u64, u64, u64),
        started: Instant,
        result: &io::Result<()>,
    ) {
        self.observer.sent(&Report {
            peer: self.peer,
            name: self.name.to_string(),
            code,
            start,
            count,
            sent,
            ms: started.elapsed().as_millis() as u64,
            error: result.as_ref().err().map(|e| e.to_string()),
        });
    }
}

/// How long an upstream may take to start answering a proxied request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks of a proxied body in flight between the fetching thread and the connection.
const PROXY_CHUNKS: usize = 8;
/// Upstream fetches running at once (each a thread and a connection to the upstream): past
/// this a request gets 503 and the client asks again, whatever floods the proxy.
pub const MAX_UPSTREAMS: usize = 64;
static UPSTREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`MAX_UPSTREAMS`] fetches; given back when dropped.
struct UpstreamSlot;

impl UpstreamSlot {
    fn take() -> Option<UpstreamSlot> {
        use std::sync::atomic::Ordering;
        UPSTREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_UPSTREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| UpstreamSlot)
    }
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        UPSTREAMS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
/// Longest an upstream may go silent in the middle of a proxied body.
const UPSTREAM_STALL: Duration = Duration::from_secs(60);

/// Opens `upstream` on a thread of its own and passes the body through, chunk by chunk, behind
/// a header that carries the upstream's length (iPXE needs one). Returns the bytes sent.
async fn proxy(
    stream: &mut TcpStream,
    upstream: Arc<dyn Upstream>,
    keep_alive: bool,
    is_head: bool,
    pace: &mut Pace,
    to: &Sent<'_>,
) -> (u64, io::Result<()>) {
    let Some(slot) = UpstreamSlot::take() else {
        tracing::warn!(client = %to.peer, file = %to.name, "http proxy: {MAX_UPSTREAMS} fetches run already; asked to retry");
        return (
            0,
            write_all(stream, &simple(503, keep_alive, "Retry-After: 2\r\n")).await,
        );
    };
    let (len_tx, len_rx) = tokio::sync::oneshot::channel::<Result<u64, String>>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(PROXY_CHUNKS);
    let what = upstream.describe();
    std::thread::spawn(move || {
        let _slot = slot;
        let (len, mut body) = match upstream.open() {
            Ok(opened) => opened,
            Err(e) => {
                let _ = len_tx.send(Err(e));
                return;
            }
        };
        if len_tx.send(Ok(len)).is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let chunk = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // The connection is gone (or the client only wanted the head): stop fetching.
            if tx.blocking_send(chunk).is_err() || failed {
                break;
            }
        }
    });
    let len = match tokio::time::timeout(UPSTREAM_TIMEOUT, len_rx).await {
        Ok(Ok(Ok(len))) => len,
        failed => {
            let why = match failed {
                Ok(Ok(Err(e))) => e,
                Err(_) => format!("no answer within {}s", UPSTREAM_TIMEOUT.as_secs()),
                _ => "the fetch stopped".into(),
            };
            tracing::warn!(client = %to.peer, file = %to.name, upstream = %what, error = %why, "http proxy: cannot fetch");
            return (0, write_all(stream, &simple(502, keep_alive, "")).await);
        }
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" },
    );
    if let Err(e) = write_all(stream, header.as_bytes()).await {
        return (0, Err(e));
    }
    if is_head {
        return (0, Ok(()));
    }
    let mut sent = 0u64;
    loop {
        let chunk = match tokio::time::timeout(UPSTREAM_STALL, rx.recv()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => return (sent, Err(e)),
            Ok(None) => break,
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "the upstream went silent");
                return (sent, Err(e));
            }
        };
        if let Err(e) = write_all(stream, &chunk).await {
            return (sent, Err(e));
        }
        sent += chunk.len() as u64;
        if let Err(e) = pace.sent(chunk.len() as u64) {
            return (sent, Err(e));
        }
    }
    if sent != len {
        // Shorter or longer than announced: the client must not take it as whole.
        let e = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the upstream sent {sent} of {len} bytes"),
        );
        return (sent, Err(e));
    }
    (sent, Ok(()))
}

/// Accepts connections until `cancel` fires, then gives open connections up to `grace` to finish.
pub async fn serve<R: Router>(
    listener: TcpListener,
    router: Arc<R>,
    limits: Limits,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    let limits = Arc::new(limits);
    let registry: Shared = Arc::default();
    let mut refused = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let known = observer.known(peer.ip());
                    let Some((id, shed)) = lock(&registry).admit(peer.ip(), known, &limits) else {
                        // Full of busy connections: say so without waiting, and close.
                        let _ = stream.try_write(&simple(503, false, "Retry-After: 5\r\n"));
                        refused += 1;
                        if refused % 100 == 1 {
                            tracing::warn!(client = %peer, refused, "http: connection limit reached; refusing new connections");
                        }
                        continue;
                    };
                    let admitted = Admitted { id, registry: registry.clone(), shed };
                    tracker.spawn(connection(
                        stream,
                        peer,
                        router.clone(),
                        cancel.clone(),
                        limits.clone(),
                        admitted,
                        observer.clone(),
                    ));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "http: connections still open at the shutdown deadline; closing them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_make_room_but_a_booting_machine_s_new_connection_does_not() {
        let limits = Limits {
            max_connections: 4,
            ..Limits::default()
        };
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let mut r = Registry::default();
        // Two booting machines connect; one has sent a request and waits for its next one.
        let (fresh, _) = r.admit(ip(1), true, &limits).unwrap();
        let (between, _) = r.admit(ip(2), true, &limits).unwrap();
        r.set_idle(between, false);
        r.set_idle(between, true);
        // A flood of idle connections from unknown addresses fills the rest and turns over
        // among itself, oldest first.
        let (f1, shed1) = r.admit(ip(100), false, &limits).unwrap();
        assert!(r.admit(ip(101), false, &limits).is_some());
        assert!(r.admit(ip(102), false, &limits).is_some());
        assert!(shed1.is_cancelled(), "the oldest forged connection went");
        assert!(!r.conns.contains_key(&f1));
        for i in 103..200 {
            assert!(r.admit(ip(i), false, &limits).is_some());
        }
        assert!(r.conns.contains_key(&fresh) && r.conns.contains_key(&between));
        // A machine's new connection pushes out forged ones first.
        let (m3, _) = r.admit(ip(3), true, &limits).unwrap();
        let (m4, _) = r.admit(ip(4), true, &limits).unwrap();
        assert!(r.conns.values().all(|c| c.known), "only machines are left");
        // Now the flood gets nothing, and a machine only the idle keep-alive of another.
        assert!(r.admit(ip(200), false, &limits).is_none());
        assert!(r.admit(ip(5), true, &limits).is_some());
        assert!(!r.conns.contains_key(&between));
        assert!(r.conns.contains_key(&fresh) && r.conns.contains_key(&m3));
        assert!(r.conns.contains_key(&m4));
        assert!(r.admit(ip(6), true, &limits).is_none());
    }

    #[test]
    fn client_text_is_escaped_for_logs() {
        assert_eq!(loggable("/kernel"), "/kernel");
        let l = loggable("/x\n2026 INFO forged\u{1b}[2J");
        assert!(!l.contains('\n') && !l.contains('\u{1b}'), "{l}");
        assert_eq!(query_param("x=1", "name"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("/a%2Fb").as_deref(), Some("/a/b"));
    }

    /// `router` served on 127.0.0.1 by `rt` on a thread of its own: its address, what stops
    /// it, and the thread.
    fn serving<R: Router>(
        rt: tokio::runtime::Runtime,
        router: R,
    ) -> (SocketAddr, CancellationToken, std::thread::JoinHandle<()>) {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let server = std::thread::spawn(move || {
            rt.block_on(serve(
                listener,
                Arc::new(router),
                Limits::default(),
                Arc::new(Unobserved),
                c,
                Duration::from_secs(1),
            ))
        });
        (addr, cancel, server)
    }

    /// A reply that waits on the disk (an install callback's fsync) is made on a thread of its
    /// own: on a one-thread runtime, another client is answered meanwhile.
    #[test]
    fn a_later_answer_is_made_off_the_threads_that_answer_the_others() {
        use std::io::{Read as _, Write as _};
        struct Slow;
        impl Router for Slow {
            fn route(&self, req: &Request<'_>) -> Reply {
                match req.path {
                    "/slow" => Reply::Later(Arc::new(|| {
                        std::thread::sleep(Duration::from_millis(1500));
                        Reply::memory("_slow", "text/plain", &b"slow"[..])
                    })),
                    _ => Reply::memory("_fast", "text/plain", &b"fast"[..]),
                }
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (addr, cancel, server) = serving(rt, Slow);
        let get = move |path: &'static str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        let slow = std::thread::spawn(move || get("/slow"));
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        assert!(get("/fast").ends_with("fast"));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "the fast answer waited {:?} on the slow one",
            t.elapsed()
        );
        assert!(slow.join().unwrap().ends_with("slow"));
        cancel.cancel();
        server.join().unwrap();
    }

    /// An event stream sends each new event once (its newlines folded into one data line),
    /// nothing while nothing is new, and ends when the server stops.
    #[test]
    fn an_event_stream_sends_what_is_new_until_the_server_stops() {
        use std::io::{Read as _, Write as _};
        struct Counter;
        impl Events for Counter {
            fn next(&self, seen: u64) -> Option<(u64, Arc<[u8]>)> {
                (seen < 2).then(|| (seen + 1, Arc::from(&b"{\"n\":\n1}"[..])))
            }
        }
        impl Router for Counter {
            fn route(&self, _: &Request<'_>) -> Reply {
                Reply::Events(Arc::new(Counter))
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, cancel, server) = serving(rt, Counter);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /events HTTP/1.1\r\n\r\n").unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        });
        std::thread::sleep(EVENT_TICK * 3 + Duration::from_millis(300));
        let t = Instant::now();
        cancel.cancel();
        let out = reader.join().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the stream ended with the server"
        );
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"),
            "{out}"
        );
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            body,
            "id: 1\ndata: {\"n\": 1}\n\nid: 2\ndata: {\"n\": 1}\n\n"
        );
        server.join().unwrap();
    }

    /// Item: being known is one forged DHCPREQUEST away. 24 "known" addresses with 32 idle
    /// connections each hold a share each; a machine's new connection still gets in.
    #[test]
    fn known_addresses_hold_a_share_and_a_silent_one_goes_after_its_first_request_time() {
        let limits = Limits {
            max_connections: 200,
            ..Limits::default()
        };
        let ip = |i: u8| IpAddr::from([10, 0, 1, i]);
        let mut r = Registry::default();
        let mut admitted = 0;
        for a in 0..24 {
            for _ in 0..32 {
                admitted += usize::from(r.admit(ip(a), true, &limits).is_some());
            }
        }
        assert_eq!(
            admitted,
            24 * 32,
            "each admitted, strangers' pushed out in turn"
        );
        let protected = r.conns.values().filter(|c| c.known).count();
        assert_eq!(protected, 24 * limits.known_share);
        assert!(
            r.admit(ip(100), true, &limits).is_some(),
            "a machine gets in"
        );
        // Known connections that never sent a request go once their first-request time is over.
        let impatient = Limits {
            first_request: Duration::ZERO,
            max_connections: 24 * 4,
            ..limits
        };
        let mut r = Registry::default();
        for a in 0..24 {
            for _ in 0..4 {
                assert!(r.admit(ip(a), true, &impatient).is_some());
            }
        }
        assert!(r.admit(ip(101), true, &impatient).is_some());
    }
}
