//! A fault-injecting HTTP/1.1 reverse proxy to put between cairn and a real
//! S3 server.
//!
//! Real S3 fails in ways a healthy test server never does: it throttles
//! (`503 SlowDown`), has internal errors (`500 InternalError`), resets
//! connections in the middle of an upload, and sometimes answers slowly.
//! [`FaultProxy`] makes a real server (moto or Ceph RGW) do the same, so the
//! tests exercise cairn's retries and failure handling end to end, with the
//! real SDK, real signing and real storage — nothing is mocked but the
//! failures.
//!
//! What it does, per request, decided by a [`FaultPolicy`]:
//!
//! * [`Fault::SlowDown`] / [`Fault::InternalError`]: the proxy answers 503 or
//!   500 itself, with an S3 XML error body, after reading the request body;
//!   the request never reaches the server.
//! * [`Fault::Reset`]: the proxy reads part of the request body, then resets
//!   the client's connection (TCP RST); the request never reaches the server.
//! * [`Fault::Delay`]: the request is forwarded, and the response held back
//!   for a while before it is passed on (a slow server).
//!
//! Decisions are deterministic for a seed and an order of arrival (a
//! splitmix64 sequence), and every injected fault is counted
//! ([`FaultProxy::counts`]) so a test can assert that faults really
//! happened rather than pass vacuously.
//!
//! The design is the simplest that is robust: one upstream connection per
//! client request, `Connection: close` on both sides (the SDK reconnects),
//! and the request forwarded byte for byte apart from the `Connection`
//! header. In particular the `Host` header is kept as the client sent it:
//! SigV4 signs it, and the client signed the proxy's address, so a rewritten
//! Host would fail the signature check on servers that make one (Ceph RGW).
//! Servers that route by Host (virtual-hosted buckets) would need more; the
//! test servers use path-style addressing. Request bodies are framed by
//! `Content-Length` (what cairn's SDK client sends: sized, signed payloads,
//! no `Expect: 100-continue`) or `Transfer-Encoding: chunked`, whose framing
//! is passed on as is (so `aws-chunked` bodies survive); `100 Continue` is
//! relayed for clients that wait for it.
//!
//! ```no_run
//! use cairn_testkit::proxy::{Fault, FaultPolicy, FaultProxy, FaultRule};
//! let s3 = cairn_testkit::moto();
//! let policy = FaultPolicy::new(7).rule(FaultRule::new(Fault::SlowDown).method("PUT").probability(0.2));
//! let proxy = FaultProxy::start(&s3.endpoint, policy).unwrap();
//! println!("talk to {} instead of {}", proxy.endpoint(), s3.endpoint);
//! // ... run cairn against proxy.endpoint() ...
//! assert!(proxy.counts().total(cairn_testkit::proxy::FaultKind::SlowDown) > 0);
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A request head larger than this is refused (S3 request heads are a few KiB).
const MAX_HEAD: usize = 64 << 10;

/// How long one proxied exchange may take in all, so that a stuck peer never
/// leaves a task behind for the rest of the test process.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the proxy does to a request it picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Slow Down` with S3's `SlowDown` error, without forwarding.
    SlowDown,
    /// Answer `500 Internal Server Error` with S3's `InternalError`, without forwarding.
    InternalError,
    /// Read this many bytes of the request body (fewer if the body is
    /// shorter, never all of a non-empty body), then reset the connection.
    Reset { after_body_bytes: u64 },
    /// Forward the request, and hold the response back this long.
    Delay(Duration),
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::SlowDown => FaultKind::SlowDown,
            Fault::InternalError => FaultKind::InternalError,
            Fault::Reset { .. } => FaultKind::Reset,
            Fault::Delay(_) => FaultKind::Delay,
        }
    }
}

/// A [`Fault`] without its parameters, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    SlowDown,
    InternalError,
    Reset,
    Delay,
}

/// When to inject one [`Fault`]: which requests qualify, and how many of them
/// are hit.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub fault: Fault,
    /// Only requests with this method (`PUT`, `GET`, …); any when `None`.
    pub method: Option<String>,
    /// Only requests whose target (path and query) contains this; any when `None`.
    pub path_contains: Option<String>,
    /// The chance that a qualifying request is hit, in `0.0..=1.0`.
    pub probability: f64,
    /// Let this many qualifying requests through untouched first.
    pub skip_first: u64,
    /// Inject at most this many faults; unlimited when `None`.
    pub max_faults: Option<u64>,
}

impl FaultRule {
    /// A rule that hits every request; narrow it with the other methods.
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            fault,
            method: None,
            path_contains: None,
            probability: 1.0,
            skip_first: 0,
            max_faults: None,
        }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn path_contains(mut self, fragment: &str) -> Self {
        self.path_contains = Some(fragment.to_string());
        self
    }

    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p.clamp(0.0, 1.0);
        self
    }

    pub fn skip_first(mut self, n: u64) -> Self {
        self.skip_first = n;
        self
    }

    pub fn max_faults(mut self, n: u64) -> Self {
        self.max_faults = Some(n);
        self
    }

    fn qualifies(&self, method: &str, target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_contains.as_deref().is_none_or(|f| target.contains(f))
    }
}

/// The rules a [`FaultProxy`] applies, in order: the first rule that decides
/// to hit a request wins; a request no rule hits is forwarded untouched.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultPolicy {
    /// Seeds the random draws, so a run's decisions are reproducible for the
    /// same order of requests.
    pub seed: u64,
    pub rules: Vec<FaultRule>,
}

impl FaultPolicy {
    pub fn new(seed: u64) -> Self {
        FaultPolicy { seed, rules: Vec::new() }
    }

    /// A policy that forwards everything.
    pub fn none() -> Self {
        FaultPolicy::default()
    }

    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }
}

/// What the proxy saw and did for one HTTP method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodCounts {
    /// Requests received (whole heads read).
    pub requests: u64,
    /// Requests passed on to the server (delayed ones included).
    pub forwarded: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
}

/// Counters of a [`FaultProxy`], per HTTP method.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub by_method: BTreeMap<String, MethodCounts>,
}

impl FaultCounts {
    /// Faults of `kind` injected into requests with `method`.
    pub fn get(&self, method: &str, kind: FaultKind) -> u64 {
        self.by_method.get(method).and_then(|m| m.faults.get(&kind)).copied().unwrap_or(0)
    }

    /// Faults of `kind` injected into requests of any method.
    pub fn total(&self, kind: FaultKind) -> u64 {
        self.by_method.values().filter_map(|m| m.faults.get(&kind)).sum()
    }

    /// Requests with `method` the proxy received.
    pub fn requests(&self, method: &str) -> u64 {
        self.by_method.get(method).map_or(0, |m| m.requests)
    }

    /// Requests with `method` passed on to the server.
    pub fn forwarded(&self, method: &str) -> u64 {
        self.by_method.get(method).map_or(0, |m| m.forwarded)
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (method, c) in &self.by_method {
            write!(f, "{method}: {} requests, {} forwarded", c.requests, c.forwarded)?;
            for (kind, n) in &c.faults {
                write!(f, ", {kind:?} {n}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The policy with its running state: the random sequence and per-rule counts.
struct State {
    policy: FaultPolicy,
    rng: u64,
    /// Per rule: qualifying requests seen, faults injected.
    seen: Vec<(u64, u64)>,
    counts: FaultCounts,
}

impl State {
    fn new(policy: FaultPolicy) -> Self {
        State {
            rng: policy.seed,
            seen: vec![(0, 0); policy.rules.len()],
            policy,
            counts: FaultCounts::default(),
        }
    }

    /// splitmix64: a good, tiny, dependency-free sequence.
    fn next_f64(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Counts the request and decides its fate.
    fn decide(&mut self, method: &str, target: &str) -> Option<Fault> {
        self.counts.by_method.entry(method.to_string()).or_default().requests += 1;
        let mut chosen = None;
        for i in 0..self.policy.rules.len() {
            if !self.policy.rules[i].qualifies(method, target) {
                continue;
            }
            // Draw for every qualifying rule, hit or not, so one rule's
            // decisions do not shift with another's.
            let draw = self.next_f64();
            let rule = &self.policy.rules[i];
            let (seen, injected) = &mut self.seen[i];
            *seen += 1;
            if chosen.is_some()
                || *seen <= rule.skip_first
                || rule.max_faults.is_some_and(|max| *injected >= max)
                || draw >= rule.probability
            {
                continue;
            }
            *injected += 1;
            chosen = Some(rule.fault);
        }
        let counts = self.counts.by_method.get_mut(method).expect("counted above");
        match chosen {
            Some(fault) => {
                *counts.faults.entry(fault.kind()).or_default() += 1;
                if matches!(fault, Fault::Delay(_)) {
                    counts.forwarded += 1;
                }
            }
            None => counts.forwarded += 1,
        }
        chosen
    }
}

/// A running proxy in front of one upstream server; stops when dropped.
/// See the module docs.
pub struct FaultProxy {
    endpoint: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("endpoint", &self.endpoint).finish()
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`http://host:port`; plain HTTP only), applying `policy`. The proxy
    /// runs on a thread of its own, so it serves synchronous tests too.
    pub fn start(upstream: &str, policy: FaultPolicy) -> std::io::Result<FaultProxy> {
        let authority = upstream
            .strip_prefix("http://")
            .ok_or_else(|| {
                std::io::Error::other(format!("upstream must be http://host:port, not {upstream}"))
            })?
            .trim_end_matches('/')
            .to_string();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(policy)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()?;
        let shared = state.clone();
        let thread = std::thread::Builder::new().name("fault-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a non-blocking listener");
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            // Out of descriptors, say: let exchanges finish.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let (state, upstream) = (shared.clone(), authority.clone());
                        tokio::spawn(async move {
                            // Errors end the exchange; the client sees a closed
                            // connection, which is what a failing proxy looks like.
                            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, serve(client, &upstream, &state))
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime here cancels exchanges still under way.
        })?;
        Ok(FaultProxy { endpoint: format!("http://{addr}"), state, shutdown: Some(tx), thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`: point the client here instead of at the server.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().expect("the proxy's own address")
    }

    /// Replaces the policy (and restarts its random sequence and per-rule
    /// counts); the fault counters keep counting.
    pub fn set_policy(&self, policy: FaultPolicy) {
        let mut state = self.state.lock().expect("proxy state");
        let counts = std::mem::take(&mut state.counts);
        *state = State::new(policy);
        state.counts = counts;
    }

    /// What has been seen and injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state.lock().expect("proxy state").counts.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// A parsed message head: the first line, the header lines as sent, and
/// what matters to the proxy.
struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }

    fn framing(&self) -> std::io::Result<Framing> {
        if let Some(te) = self.header("transfer-encoding") {
            if te.to_ascii_lowercase().split(',').any(|t| t.trim() == "chunked") {
                return Ok(Framing::Chunked);
            }
            return Err(std::io::Error::other(format!("unsupported Transfer-Encoding {te}")));
        }
        match self.header("content-length") {
            Some(len) => len
                .parse()
                .map(Framing::Length)
                .map_err(|_| std::io::Error::other(format!("bad Content-Length {len}"))),
            None => Ok(Framing::None),
        }
    }

    /// An interim (1xx) response, passed on unchanged.
    fn to_bytes_interim(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}:{value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// The head as bytes, with `Connection: close` in place of any
    /// `Connection` header; everything else exactly as received.
    fn to_bytes_closing(&self) -> Vec<u8> {
        let mut out = String::with_capacity(1024);
        out.push_str(&self.first);
        out.push_str("\r\n");
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            out.push_str(name);
            out.push(':');
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Reads a message head; `None` if the peer closed before sending anything.
async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Head>> {
    let mut first = None;
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).await?;
        if n == 0 {
            if first.is_none() && total == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(std::io::Error::other("message head too large"));
        }
        let line = String::from_utf8(line).map_err(|_| std::io::Error::other("non-UTF-8 message head"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        if first.is_none() {
            if line.is_empty() {
                continue; // stray CRLF between messages is allowed
            }
            first = Some(line.to_string());
            continue;
        }
        if line.is_empty() {
            break;
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| std::io::Error::other(format!("bad header line {line:?}")))?;
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(Some(Head { first: first.expect("set before the blank line"), headers }))
}

/// Copies (or, with `to == None`, discards) one body of `framing` from
/// `from`, up to `limit` bytes of it; returns the bytes of body content read.
async fn copy_body<R, W>(
    from: &mut R,
    mut to: Option<&mut W>,
    framing: Framing,
    limit: u64,
) -> std::io::Result<u64>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::None => Ok(0),
        Framing::Length(len) => copy_exact(from, to, len.min(limit)).await,
        Framing::Close => {
            let mut taken = from.take(limit);
            match to {
                Some(to) => tokio::io::copy(&mut taken, to).await,
                None => tokio::io::copy(&mut taken, &mut tokio::io::sink()).await,
            }
        }
        Framing::Chunked => {
            // Framing lines are passed on as they are, so a signed
            // aws-chunked body stays intact.
            let mut content = 0u64;
            loop {
                let mut line = Vec::new();
                if from.read_until(b'\n', &mut line).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if let Some(to) = to.as_deref_mut() {
                    to.write_all(&line).await?;
                }
                let text = String::from_utf8_lossy(&line);
                let size = text.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size line {text:?}")))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        let mut line = Vec::new();
                        if from.read_until(b'\n', &mut line).await? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        if let Some(to) = to.as_deref_mut() {
                            to.write_all(&line).await?;
                        }
                        if line == b"\r\n" || line == b"\n" {
                            return Ok(content);
                        }
                    }
                }
                let want = size.min(limit - content);
                content += copy_exact(from, to.as_deref_mut(), want).await?;
                if content >= limit {
                    return Ok(content);
                }
                // The CRLF after the chunk data.
                copy_exact(from, to.as_deref_mut(), 2).await?;
            }
        }
    }
}

async fn copy_exact<R, W>(from: &mut R, to: Option<&mut W>, len: u64) -> std::io::Result<u64>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut taken = from.take(len);
    let copied = match to {
        Some(to) => tokio::io::copy_buf(&mut taken, to).await?,
        None => tokio::io::copy_buf(&mut taken, &mut tokio::io::sink()).await?,
    };
    if copied < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(copied)
}

/// One client connection: one request, one response, then close.
async fn serve(client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = BufReader::new(client_read);
    let Some(request) = read_head(&mut client_read).await? else { return Ok(()) };
    let mut words = request.first.split_whitespace();
    let method = words.next().unwrap_or("").to_ascii_uppercase();
    let target = words.next().unwrap_or("").to_string();
    let framing = request.framing()?;
    let expects_continue = request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let fault = state.lock().expect("proxy state").decide(&method, &target);
    let sink: Option<&mut tokio::io::Sink> = None;

    match fault {
        Some(f @ (Fault::SlowDown | Fault::InternalError)) => {
            // Take the whole body first: a client still writing when the
            // connection closes would see a broken pipe, not the error.
            if expects_continue {
                client_write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            copy_body(&mut client_read, sink, framing, u64::MAX).await?;
            let (status, code, message) = match f {
                Fault::SlowDown => ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
                _ => (
                    "500 Internal Server Error",
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ),
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
                 <Resource>{target}</Resource><RequestId>cairn-fault-proxy</RequestId></Error>"
            );
            let body = if method == "HEAD" { String::new() } else { body };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 x-amz-request-id: cairn-fault-proxy\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client_write.write_all(response.as_bytes()).await?;
            client_write.shutdown().await?;
            Ok(())
        }
        Some(Fault::Reset { after_body_bytes }) => {
            if expects_continue {
                client_write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            // Never the whole body: the point is an upload cut short.
            let limit = match framing {
                Framing::Length(len) => after_body_bytes.min(len.saturating_sub(1)),
                _ => after_body_bytes,
            };
            copy_body(&mut client_read, sink, framing, limit).await?;
            let client = client_read.into_inner().reunite(client_write).map_err(std::io::Error::other)?;
            // SO_LINGER 0: close with a RST, as a crashed gateway would.
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        delay => {
            let delay = match delay {
                Some(Fault::Delay(d)) => d,
                _ => Duration::ZERO,
            };
            let server = TcpStream::connect(upstream).await?;
            server.set_nodelay(true)?;
            let (server_read, mut server_write) = server.into_split();
            let mut server_read = BufReader::new(server_read);
            server_write.write_all(&request.to_bytes_closing()).await?;
            // The body goes up while the response comes down, so an early
            // answer (or a 100 Continue the client waits for) gets through.
            let upload = async {
                copy_body(&mut client_read, Some(&mut server_write), framing, u64::MAX).await?;
                server_write.flush().await
            };
            let download = async {
                loop {
                    let Some(response) = read_head(&mut server_read).await? else {
                        return Err(std::io::Error::other("the server closed without answering"));
                    };
                    let status: u16 =
                        response.first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    if (100..200).contains(&status) {
                        client_write.write_all(&response.to_bytes_interim()).await?;
                        continue;
                    }
                    tokio::time::sleep(delay).await;
                    client_write.write_all(&response.to_bytes_closing()).await?;
                    let framing = if method == "HEAD" || status == 204 || status == 304 {
                        Framing::None
                    } else {
                        match response.framing()? {
                            Framing::None => Framing::Close,
                            f => f,
                        }
                    };
                    copy_body(&mut server_read, Some(&mut client_write), framing, u64::MAX).await?;
                    client_write.shutdown().await?;
                    return Ok::<_, std::io::Error>(());
                }
            };
            let (up, down) = tokio::join!(upload, download);
            // A server that answers before reading the whole body (an error)
            // is fine: what the client gets is the response.
            down.and(if up.is_err() { Ok(()) } else { up })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn rule_decisions(policy: FaultPolicy, requests: &[(&str, &str)]) -> Vec<Option<FaultKind>> {
        let mut state = State::new(policy);
        requests.iter().map(|(m, t)| state.decide(m, t).map(|f| f.kind())).collect()
    }

    #[test]
    fn rules_match_method_and_path_skip_and_cap() {
        let policy = FaultPolicy::new(1).rule(
            FaultRule::new(Fault::SlowDown).method("put").path_contains("/data/").skip_first(1).max_faults(2),
        );
        let reqs = [
            ("PUT", "/b/data/1"),
            ("GET", "/b/data/1"),
            ("PUT", "/b/index/1"),
            ("PUT", "/b/data/2"),
            ("PUT", "/b/data/3"),
            ("PUT", "/b/data/4"),
        ];
        assert_eq!(
            rule_decisions(policy, &reqs),
            vec![None, None, None, Some(FaultKind::SlowDown), Some(FaultKind::SlowDown), None]
        );
    }

    #[test]
    fn probabilities_are_seeded_and_roughly_right() {
        let policy = FaultPolicy::new(42).rule(FaultRule::new(Fault::InternalError).probability(0.25));
        let reqs = vec![("GET", "/x"); 4000];
        let a = rule_decisions(policy.clone(), &reqs);
        assert_eq!(a, rule_decisions(policy, &reqs), "same seed, same decisions");
        let hits = a.iter().filter(|d| d.is_some()).count();
        assert!((800..1200).contains(&hits), "{hits} of 4000 at p=0.25");
        let other = rule_decisions(
            FaultPolicy::new(43).rule(FaultRule::new(Fault::InternalError).probability(0.25)),
            &reqs,
        );
        assert_ne!(a, other, "another seed, other decisions");
    }

    /// Sends one raw request through the proxy; the whole response as text,
    /// or the error that ended the connection.
    fn exchange(proxy: &FaultProxy, request: &[u8]) -> std::io::Result<String> {
        // moto refuses some anonymous writes; it does not check signatures,
        // so any well-formed Authorization header will do.
        let text = String::from_utf8_lossy(request);
        let (line, rest) = text.split_once("\r\n").expect("a request line");
        let request = format!(
            "{line}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature={}\r\n{rest}",
            "0".repeat(64)
        );
        let mut stream = std::net::TcpStream::connect(proxy.addr())?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    #[test]
    fn forwards_injects_and_counts_against_moto() {
        let s3 = crate::moto();
        let proxy = FaultProxy::start(&s3.endpoint, FaultPolicy::none()).unwrap();
        let host = proxy.addr().to_string();
        let get = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let ok = exchange(&proxy, get.as_bytes()).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("ListAllMyBucketsResult"), "{ok}");
        assert!(ok.to_ascii_lowercase().contains("connection: close"), "{ok}");

        let bucket = crate::unique_bucket("proxy");
        let put = |key: &str, body: &str| {
            format!(
                "PUT /{bucket}/{key} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let created = exchange(
            &proxy,
            format!("PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert!(created.starts_with("HTTP/1.1 200"), "{created}");

        proxy.set_policy(
            FaultPolicy::new(1).rule(FaultRule::new(Fault::SlowDown).method("PUT").max_faults(1)),
        );
        let slow = exchange(&proxy, put("k", "hello").as_bytes()).unwrap();
        assert!(slow.starts_with("HTTP/1.1 503"), "{slow}");
        assert!(slow.contains("<Code>SlowDown</Code>"), "{slow}");
        // The first PUT never reached the server; the second did.
        let landed = exchange(&proxy, put("k", "hello").as_bytes()).unwrap();
        assert!(landed.starts_with("HTTP/1.1 200"), "{landed}");
        let read =
            exchange(&proxy, format!("GET /{bucket}/k HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
        assert!(read.ends_with("\r\n\r\nhello"), "{read}");

        proxy.set_policy(
            FaultPolicy::new(1).rule(FaultRule::new(Fault::Reset { after_body_bytes: 3 }).method("PUT")),
        );
        match exchange(&proxy, put("k2", "0123456789").as_bytes()) {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(text) => assert!(text.is_empty(), "a reset connection answered: {text}"),
        }
        proxy.set_policy(FaultPolicy::none());
        let missing =
            exchange(&proxy, format!("HEAD /{bucket}/k2 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"), "the reset upload must not land: {missing}");

        proxy.set_policy(
            FaultPolicy::new(1).rule(FaultRule::new(Fault::Delay(Duration::from_millis(300))).method("GET")),
        );
        let started = std::time::Instant::now();
        let slow =
            exchange(&proxy, format!("GET /{bucket}/k HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
        assert!(slow.ends_with("hello"), "{slow}");
        assert!(started.elapsed() >= Duration::from_millis(300));

        let counts = proxy.counts();
        assert_eq!(counts.get("PUT", FaultKind::SlowDown), 1, "{counts}");
        assert_eq!(counts.get("PUT", FaultKind::Reset), 1, "{counts}");
        assert_eq!(counts.get("GET", FaultKind::Delay), 1, "{counts}");
        assert_eq!(counts.requests("PUT"), 4, "{counts}");
        assert_eq!(counts.forwarded("PUT"), 2, "{counts}");
    }

    #[test]
    fn chunked_bodies_are_forwarded_intact() {
        let s3 = crate::moto();
        let proxy = FaultProxy::start(&s3.endpoint, FaultPolicy::none()).unwrap();
        let host = proxy.addr().to_string();
        let bucket = crate::unique_bucket("proxy-chunked");
        exchange(
            &proxy,
            format!("PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let put = format!(
            "PUT /{bucket}/c HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let out = exchange(&proxy, put.as_bytes()).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let read =
            exchange(&proxy, format!("GET /{bucket}/c HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
        assert!(read.ends_with("\r\n\r\nhello world"), "{read}");
    }
}
