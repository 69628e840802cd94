//! A fault-injecting HTTP proxy for the tests: it sits between btrfs2s3 and an S3 server and,
//! for requests that match a rule, answers with an error, resets the connection in the middle
//! of the request or of the response, stalls, or truncates the response body.
//!
//! Every client connection carries one request: the proxy asks the server to close after
//! its response and forwards that `Connection: close`, so request boundaries are simple.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and S3 error code without asking the server.
    Status(u16, &'static str),
    /// Read half of the request body, then reset the connection.
    ResetMidRequest,
    /// Let the server handle the request, send half of its response, then reset.
    ResetMidResponse,
    /// Wait this long before doing anything (longer than the client's timeout: a stall).
    Stall(Duration),
    /// Let the server handle the request, then send its headers and half of its body, and
    /// close as if that were all.
    TruncateBody,
    /// Let the server handle the request, and answer with this `Date` header instead of
    /// its own (a server whose clock is off).
    Date(&'static str),
    /// Flip a byte in the middle of the request body on its way to the server (bytes
    /// damaged in transit); the server's answer is logged as `flipped: <status line>`.
    FlipBody,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The HTTP method, or any.
    pub method: Option<&'static str>,
    /// Text the request target (path and query) must contain.
    pub target_contains: &'static str,
    /// Text the target must not contain.
    pub target_excludes: Option<&'static str>,
}

impl Match {
    /// `UploadPart`.
    #[must_use]
    pub fn upload_part() -> Match {
        Match {
            method: Some("PUT"),
            target_contains: "partNumber=",
            target_excludes: None,
        }
    }
    /// `CompleteMultipartUpload`.
    #[must_use]
    pub fn complete_multipart() -> Match {
        Match {
            method: Some("POST"),
            target_contains: "uploadId=",
            target_excludes: None,
        }
    }
    /// `ListObjectsV2`.
    #[must_use]
    pub fn list_objects() -> Match {
        Match {
            method: Some("GET"),
            target_contains: "list-type=2",
            target_excludes: None,
        }
    }
    /// `PutObject` (a single upload).
    #[must_use]
    pub fn put_object() -> Match {
        Match {
            method: Some("PUT"),
            target_contains: "/",
            target_excludes: Some("partNumber="),
        }
    }
    /// `DeleteObjects`.
    #[must_use]
    pub fn delete_objects() -> Match {
        Match {
            method: Some("POST"),
            target_contains: "delete",
            target_excludes: None,
        }
    }
    /// `GetObject`.
    #[must_use]
    pub fn get_object() -> Match {
        Match {
            method: Some("GET"),
            target_contains: "/",
            target_excludes: Some("list-type"),
        }
    }
    /// Every request.
    #[must_use]
    pub fn any() -> Match {
        Match {
            method: None,
            target_contains: "",
            target_excludes: None,
        }
    }

    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.is_none_or(|m| m == method)
            && target.contains(self.target_contains)
            && self
                .target_excludes
                .is_none_or(|excluded| !target.contains(excluded))
    }
}

/// A fault applied to the first `times` requests that match.
#[derive(Debug, Clone)]
struct Rule {
    matcher: Match,
    fault: Fault,
    times: usize,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    /// "METHOD target -> what happened", in order.
    log: Vec<String>,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`) on a free loopback port.
    ///
    /// # Panics
    ///
    /// If the proxy cannot start: the test cannot run without it.
    #[must_use]
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the proxy's runtime starts");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("the proxy binds a port");
        let address = listener.local_addr().expect("a bound address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (state, upstream) = (Arc::clone(&shared), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &state).await;
                });
            }
        });
        FaultProxy {
            address,
            state,
            runtime: Some(runtime),
        }
    }

    /// The URL to give btrfs2s3 as the endpoint.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Applies `fault` to the next `times` requests that match.
    ///
    /// # Panics
    ///
    /// If another thread panicked while holding the proxy's state.
    pub fn add(&self, matcher: Match, fault: Fault, times: usize) {
        let mut state = self.state.lock().expect("the proxy state");
        state.rules.push(Rule {
            matcher,
            fault,
            times,
        });
    }

    /// Drops every rule: requests pass untouched from now on.
    ///
    /// # Panics
    ///
    /// If another thread panicked while holding the proxy's state.
    pub fn clear(&self) {
        self.state.lock().expect("the proxy state").rules.clear();
    }

    /// Every request so far, with what the proxy did to it.
    ///
    /// # Panics
    ///
    /// If another thread panicked while holding the proxy's state.
    #[must_use]
    pub fn log(&self) -> Vec<String> {
        self.state.lock().expect("the proxy state").log.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The fault for a request, if a rule wants one; uses up one of the rule's times.
fn fault_for(state: &Mutex<State>, method: &str, target: &str) -> Option<Fault> {
    let mut state = state.lock().ok()?;
    let rule = state
        .rules
        .iter_mut()
        .find(|rule| rule.times > 0 && rule.matcher.matches(method, target))?;
    rule.times -= 1;
    Some(rule.fault)
}

fn record(state: &Mutex<State>, method: &str, target: &str, what: &str) {
    if let Ok(mut state) = state.lock() {
        state.log.push(format!("{method} {target} -> {what}"));
    }
}

/// A request or response head: the bytes up to and including the blank line, and its
/// `Content-Length`.
struct Head {
    bytes: Vec<u8>,
    content_length: usize,
    expects_continue: bool,
}

impl Head {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The head with `Connection: close` and without `Expect: 100-continue`.
    fn for_upstream(&self) -> Vec<u8> {
        let text = self.text();
        let mut out = String::new();
        for line in text.split("\r\n").filter(|line| !line.is_empty()) {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("connection:") || lower.starts_with("expect:") {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Reads a head; `extra` holds what was read past it.
async fn read_head(stream: &mut TcpStream, extra: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut buffer = std::mem::take(extra);
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            *extra = rest;
            let text = String::from_utf8_lossy(&buffer).to_ascii_lowercase();
            let header = |name: &str| {
                text.split("\r\n")
                    .find_map(|line| line.strip_prefix(name).map(str::trim).map(str::to_owned))
            };
            return Ok(Some(Head {
                content_length: header("content-length:")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                expects_continue: header("expect:").is_some_and(|v| v == "100-continue"),
                bytes: buffer,
            }));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

async fn read_exact_with(
    stream: &mut TcpStream,
    extra: &mut Vec<u8>,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut body = std::mem::take(extra);
    if body.len() > len {
        *extra = body.split_off(len);
    }
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(1 << 16)];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// `response` with its `Date` header replaced by `date`.
fn with_date(response: &[u8], date: &str) -> Vec<u8> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return response.to_vec();
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let mut out = String::new();
    for line in head.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("date:") {
            out.push_str("Date: ");
            out.push_str(date);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response[end + 4..]);
    bytes
}

/// Resets the connection (RST instead of FIN).
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> io::Result<()> {
    let mut extra = Vec::new();
    let Some(head) = read_head(&mut client, &mut extra).await? else {
        return Ok(());
    };
    let text = head.text();
    let mut request_line = text.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    if head.expects_continue {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let fault = fault_for(state, &method, &target);
    if let Some(Fault::Stall(duration)) = fault {
        record(state, &method, &target, "stalled");
        tokio::time::sleep(duration).await;
    }
    if fault == Some(Fault::ResetMidRequest) {
        let _ = read_exact_with(&mut client, &mut extra, head.content_length / 2).await;
        record(state, &method, &target, "reset mid-request");
        reset(client);
        return Ok(());
    }
    let body = read_exact_with(&mut client, &mut extra, head.content_length).await?;
    if let Some(Fault::Status(status, code)) = fault {
        record(state, &method, &target, &format!("{status} {code}"));
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
        );
        let response = format!(
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        );
        client.write_all(response.as_bytes()).await?;
        return Ok(());
    }

    let mut body = body;
    if fault == Some(Fault::FlipBody)
        && let Some(byte) = body.get_mut(head.content_length / 2)
    {
        *byte ^= 0x55;
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&head.for_upstream()).await?;
    server.write_all(&body).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    match fault {
        Some(Fault::ResetMidResponse) => {
            record(state, &method, &target, "reset mid-response");
            client.write_all(&response[..response.len() / 2]).await?;
            reset(client);
        }
        Some(Fault::Date(date)) => {
            record(state, &method, &target, &format!("date {date}"));
            client.write_all(&with_date(&response, date)).await?;
            client.shutdown().await?;
        }
        Some(Fault::FlipBody) => {
            let status = String::from_utf8_lossy(&response[..response.len().min(12)]).into_owned();
            record(state, &method, &target, &format!("flipped: {status}"));
            client.write_all(&response).await?;
            client.shutdown().await?;
        }
        Some(Fault::TruncateBody) => {
            record(state, &method, &target, "truncated body");
            let body_start = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |p| p + 4);
            let keep = body_start + (response.len() - body_start) / 2;
            client.write_all(&response[..keep]).await?;
            client.shutdown().await?;
        }
        _ => {
            let status = String::from_utf8_lossy(&response[..response.len().min(12)]).into_owned();
            record(state, &method, &target, &status);
            client.write_all(&response).await?;
            client.shutdown().await?;
        }
    }
    Ok(())
}
