//! The proxy's two HTTP/1.1 engines end to end: one corpus of raw exchanges (valid, odd
//! and hostile, request smuggling's table among them, and what the engine hands to hyper)
//! goes to an outbound listener served by the proxy's own engine and to one served by
//! hyper's, in front of the same app; and one corpus of raw answers (valid, odd and
//! lying) comes from an app, through the same two, to the caller. What reaches the app (the app writes every request
//! it reads back into its answer, byte for byte) and what reaches the client (every byte
//! of the connection, `Date` and the request id the proxy makes up aside) must be the same.
//!
//! Every exchange ends with the connection closed by the proxy: its last request says
//! `Connection: close`, or is refused.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Registry, Sidecar, SidecarSpec};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_proxy::listeners::H1Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one exchange may take: only a proxy that hangs runs into it.
const EXCHANGE: Duration = Duration::from_secs(20);

/// The app: `/status/N` answers N; `/stream` answers a body of unknown length
/// (`/stream/trailers` adds a trailer); anything else answers with the request it read.
async fn app(request: Request<Incoming>) -> Result<Response<common::TestBody>, Infallible> {
    let path = request.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        let mut response = Response::new(common::TestBody::new("x", None));
        *response.status_mut() = status;
        return Ok(response);
    }
    if path.starts_with("/stream") {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "ab".parse().unwrap());
        let trailers = path.ends_with("/trailers").then_some(trailers);
        let mut response = Response::new(common::TestBody::new("ab", trailers));
        response
            .headers_mut()
            .insert("x-streamed", "yes".parse().unwrap());
        return Ok(response);
    }
    let mut seen = format!(
        "{} {} {:?}\n",
        request.method(),
        request.uri(),
        request.version()
    );
    for (name, value) in request.headers() {
        seen.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    let (body, trailers) = match request.into_body().collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers)
        }
        Err(e) => (Bytes::from(format!("body error: {e}")), None),
    };
    seen.push_str(&format!(
        "body {} bytes: {:?}\n",
        body.len(),
        &body[..body.len().min(64)]
    ));
    for (name, value) in trailers.iter().flatten() {
        seen.push_str(&format!("trailer {name}: {value:?}\n"));
    }
    Ok(Response::new(common::TestBody::new(seen, None)))
}

async fn start_app() -> SocketAddr {
    let listener = common::listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(app)),
            );
        }
    });
    addr
}

/// Every byte the proxy at `addr` sends back for `raw`, up to its closing the
/// connection, with `Date` and `x-request-id` values blanked out.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(EXCHANGE, stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let ended = match read {
        Ok(Ok(_)) => "",
        Ok(Err(_)) => "\n[reset]",
        Err(_) => "\n[still open]",
    };
    // Lines end in CRLF in heads, LF in what the app writes back.
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| {
            let cr = if line.ends_with('\r') { "\r" } else { "" };
            match line.get(..6) {
                Some(name) if name.eq_ignore_ascii_case("date: ") => format!("date: -{cr}"),
                // Made up for each request.
                _ if line.starts_with("x-request-id: ") => format!("x-request-id: -{cr}"),
                _ => line.to_owned(),
            }
        })
        .collect();
    lines.join("\n") + ended
}

/// `(what it is, the bytes)`: each ends with the connection closed.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let close = "GET /last HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let big: String = "0123456789abcdef".repeat(12_800);
    let mut cases: Vec<(&'static str, String)> = vec![
        ("GET", "GET /a?b=c HTTP/1.1\r\nHost: echo\r\nX-One: 1\r\nX-One: 2\r\nConnection: close\r\n\r\n".into()),
        ("pipelined", format!("GET /1 HTTP/1.1\r\nHost: echo\r\n\r\nGET /2 HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("close in the middle of a pipeline", "GET /1 HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: echo\r\n\r\n".into()),
        ("HTTP/1.0", "GET /old HTTP/1.0\r\nHost: echo\r\n\r\n".into()),
        ("HTTP/1.0 kept alive", "GET /1 HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\nHost: echo\r\n\r\n".into()),
        ("HTTP/1.0 streamed answer", "GET /stream HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n".into()),
        ("POST with a length", format!("POST /p HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello{close}")),
        ("POST chunked with trailers", format!("POST /p HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Check: 9\r\n\r\n{close}")),
        ("a 200 KB body", format!("PUT /big HTTP/1.1\r\nHost: echo\r\nContent-Length: {}\r\n\r\n{big}{close}", big.len())),
        ("a 200 KB body in chunks", format!("PUT /big HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n{:x}\r\n{big}\r\n0\r\n\r\n{close}", big.len(), big.len())),
        ("HEAD", "HEAD /h HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n".into()),
        ("HEAD of a stream", format!("HEAD /stream HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("204", format!("GET /status/204 HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("304", format!("GET /status/304 HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("503 from the app", format!("GET /status/503 HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("a streamed answer", format!("GET /stream HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("trailers asked for", format!("GET /stream/trailers HTTP/1.1\r\nHost: echo\r\nTE: trailers\r\n\r\n{close}")),
        ("trailers not asked for", format!("GET /stream/trailers HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("absolute form", format!("GET http://echo/abs HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("hop-by-hop headers", format!("GET /h HTTP/1.1\r\nHost: echo\r\nConnection: x-hop, keep-alive\r\nX-Hop: gone\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n\r\n{close}")),
        ("bare LF", "GET /lf HTTP/1.1\nHost: echo\nConnection: close\n\n".into()),
        ("obs-text", "GET /t HTTP/1.1\r\nHost: echo\r\nX-Text: caf\u{e9}\r\nConnection: close\r\n\r\n".into()),
        ("no Host", "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n".into()),
        ("two Hosts", "GET /x HTTP/1.1\r\nHost: echo\r\nHost: other\r\nConnection: close\r\n\r\n".into()),
        ("a loop", "GET /x HTTP/1.1\r\nHost: echo\r\nmesh-hops: 99\r\nConnection: close\r\n\r\n".into()),
        ("an unknown service", "GET /x HTTP/1.1\r\nHost: nowhere\r\nConnection: close\r\n\r\n".into()),
        ("Expect: 100-continue", format!("POST /e HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok{close}")),
        ("Upgrade the app refuses", format!("GET /u HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n{close}")),
        ("CONNECT", "CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\nConnection: close\r\n\r\n".into()),
        // The preface, an empty SETTINGS, and a GOAWAY: hyper answers and closes.
        ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x08\x07\0\0\0\0\0\0\0\0\0\0\0\0\0".into()),
        // Request smuggling's table.
        ("CL.TE", format!("POST /s HTTP/1.1\r\nHost: echo\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n{close}")),
        ("TE.CL", format!("POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{close}")),
        ("TE list", format!("POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{close}")),
        ("TE not chunked last", "POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".into()),
        ("TE xchunked", "POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".into()),
        ("TE in HTTP/1.0", "POST /s HTTP/1.0\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into()),
        ("space before the colon", "POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".into()),
        ("lengths that differ", "POST /s HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into()),
        ("lengths that agree", format!("POST /s HTTP/1.1\r\nHost: echo\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab{close}")),
        ("a signed length", "POST /s HTTP/1.1\r\nHost: echo\r\nContent-Length: +2\r\n\r\nab".into()),
        ("a length past 2^64", "POST /s HTTP/1.1\r\nHost: echo\r\nContent-Length: 18446744073709551616\r\n\r\nab".into()),
        ("a chunk size that is no number", "POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n".into()),
        ("a chunk size that overflows", "POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nab\r\n0\r\n\r\n".into()),
        ("a chunk without its CRLF", "POST /s HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n".into()),
        ("obs-fold", "GET /f HTTP/1.1\r\nHost: echo\r\nX-Folded: a\r\n b\r\n\r\n".into()),
        ("a bare CR", "GET /f HTTP/1.1\r\nHost: echo\rX: y\r\n\r\n".into()),
        ("NUL in a value", "GET /f HTTP/1.1\r\nHost: echo\r\nX: a\0b\r\n\r\n".into()),
        ("HTTP/2.0 in a request line", "GET / HTTP/2.0\r\nHost: echo\r\n\r\n".into()),
        ("garbage", "GARBAGE \u{1} NOT HTTP\r\n\r\n".into()),
        ("a head twice the limit", format!("GET / HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n", "a".repeat(128 * 1024))),
        ("a target too long", format!("GET /{} HTTP/1.1\r\nHost: echo\r\n\r\n", "a".repeat(65_535))),
        ("101 fields", format!("GET / HTTP/1.1\r\nHost: echo\r\n{}\r\n", "X-F: 1\r\n".repeat(100))),
    ];
    cases
        .drain(..)
        .map(|(what, raw)| (what, raw.into_bytes()))
        .collect()
}

/// Bodies the caller breaks: the answer differs on purpose. The own engine's names what
/// is wrong with the body where hyper's says "error reading a body from connection", and
/// it says `Connection: close` before it closes where hyper closes unannounced. The
/// status and the proxy's error code must still agree.
const BROKEN_BODIES: [&str; 3] = [
    "a chunk size that is no number",
    "a chunk size that overflows",
    "a chunk without its CRLF",
];

/// An answer's version and status code, and its `mesh-error`.
fn verdict(answer: &str) -> String {
    let first = answer.lines().next().unwrap_or_default();
    let status = first.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let error = answer.lines().find(|l| l.starts_with("mesh-error: "));
    format!("{status}\n{}", error.unwrap_or("no mesh-error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_pass_on_the_same_bytes_to_the_app_and_back() {
    let engines = Engines::start("echo", start_app().await).await;
    let mut seen = Vec::new();
    for (what, raw) in corpus() {
        let (mut mine, mut theirs) = engines.exchange(what, &raw).await;
        if BROKEN_BODIES.contains(&what) {
            (mine, theirs) = (verdict(&mine), verdict(&theirs));
        }
        seen.push((what.to_owned(), mine, theirs));
    }
    assert_same(seen);
}

/// A registry, an app behind its sidecar, and two client sidecars in front of it: one
/// with each engine.
struct Engines {
    _registry: Registry,
    _server: Sidecar,
    own: Sidecar,
    hyper: Sidecar,
}

impl Engines {
    async fn start(service: &str, app: SocketAddr) -> Engines {
        let registry = Registry::start().await;
        let server = Sidecar::start(SidecarSpec::server(&registry.url(), service, app)).await;
        registry.until_passing(service, 1).await;
        let url = registry.url();
        let client = |engine| {
            let mut spec = SidecarSpec::client(&url);
            spec.config.listen.h1_engine = engine;
            Sidecar::start(spec)
        };
        let own = client(H1Engine::Own).await;
        let hyper = client(H1Engine::Hyper).await;
        Engines {
            _registry: registry,
            _server: server,
            own,
            hyper,
        }
    }

    /// What the caller gets for `raw` through each: `(own engine, hyper)`.
    async fn exchange(&self, what: &str, raw: &[u8]) -> (String, String) {
        let (mine, theirs) = tokio::join!(
            exchange(self.own.outbound, raw),
            exchange(self.hyper.outbound, raw)
        );
        assert!(
            !theirs.is_empty(),
            "{what}: hyper's engine answered nothing"
        );
        assert!(
            !mine.ends_with("[still open]"),
            "{what}: the own engine kept the connection open"
        );
        (mine, theirs)
    }
}

/// Fails naming every exchange whose two results differ: `(what, own engine, hyper)`.
fn assert_same(seen: Vec<(String, String, String)>) {
    let total = seen.len();
    let differ: Vec<String> = seen
        .into_iter()
        .filter(|(_, mine, theirs)| mine != theirs)
        .map(|(what, mine, theirs)| {
            format!("== {what}\n-- own engine:\n{mine}\n-- hyper:\n{theirs}\n")
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {total} exchanges differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}

/// Answers as an app may write them, valid, odd and lying: `(what it is, the bytes)`.
/// The raw app writes the one `/answer/N` names, then closes the connection.
const ANSWERS: &[(&str, &str)] = &[
    (
        "a length",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: 1\r\n\r\nok",
    ),
    (
        "chunks with trailers",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nX-Sum: 7\r\n\r\n",
    ),
    (
        "HTTP/1.0 until the close",
        "HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the end",
    ),
    (
        "HTTP/1.1 until the close",
        "HTTP/1.1 200 OK\r\n\r\nuntil the end",
    ),
    (
        "100 Continue first",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ),
    (
        "204 with a length",
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    ),
    (
        "304 with a length",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    ),
    (
        "more than its length",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    ),
    (
        "less than its length",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    ),
    (
        "a chunk size that is no number",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
    ),
    (
        "chunks cut short",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ),
    (
        "TE and CL",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "lengths that differ",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ),
    (
        "a negative length",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nab",
    ),
    (
        "Connection: close",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ),
    (
        "hop-by-hop headers",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-hop\r\nX-Hop: gone\r\nKeep-Alive: timeout=5\r\n\r\nok",
    ),
    (
        "a reason of its own",
        "HTTP/1.1 299 Fine Thanks\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a 503",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    ),
    (
        "obs-fold",
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a status that is no number",
        "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    ("garbage", "NOT HTTP AT ALL\r\n\r\n"),
    ("nothing", ""),
];

/// Answers passed on differently on purpose; the status and the proxy's error code must
/// still agree. A `204` to a HEAD request keeps its `Content-Length` through hyper, which
/// RFC 9110 §8.6 forbids; the own engine drops it, as both do for a GET. A status with no
/// reason of its own in the registry of statuses gets an empty reason phrase from the own
/// engine, `<none>` from hyper.
const DIFFERENT_ANSWERS: [&str; 2] = ["204 with a length", "a reason of its own"];

/// Answers whose body the close cuts short, or that break inside it.
const CUT_SHORT: [&str; 3] = [
    "less than its length",
    "a chunk size that is no number",
    "chunks cut short",
];

/// Whether `answer` is a `200` the caller cannot take as whole: its body is shorter than
/// its length, or its chunks have no end (a HEAD's has no body to cut).
fn not_whole(method: &str, answer: &str) -> bool {
    if !answer.starts_with("HTTP/1.1 200") {
        return false;
    }
    if method == "HEAD" {
        return true;
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    match answer.contains("transfer-encoding: chunked") {
        true => !body.ends_with("0\r\n\r\n"),
        false => answer.contains("content-length: 10\r\n") && body == "short",
    }
}

/// An app that writes, for `/answer/N`, the Nth of [`ANSWERS`] and closes.
async fn start_liar() -> SocketAddr {
    let listener = common::listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let n = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|target| target.strip_prefix("/answer/"))
                    .and_then(|n| n.parse::<usize>().ok());
                if let Some((_, answer)) = n.and_then(|n| ANSWERS.get(n)) {
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_pass_on_the_same_answers_from_an_app() {
    let engines = Engines::start("liar", start_liar().await).await;
    let mut seen = Vec::new();
    for (n, (what, _)) in ANSWERS.iter().enumerate() {
        for method in ["GET", "HEAD"] {
            let raw = format!(
                "{method} /answer/{n} HTTP/1.1\r\nHost: liar\r\nTE: trailers\r\nConnection: close\r\n\r\n"
            );
            let (mut mine, mut theirs) = engines.exchange(what, raw.as_bytes()).await;
            // The proxy's own errors say why in the words of the engine that saw it.
            if mine.contains("\r\nmesh-error: ") && theirs.contains("\r\nmesh-error: ")
                || DIFFERENT_ANSWERS.contains(what)
            {
                (mine, theirs) = (verdict(&mine), verdict(&theirs));
            }
            if CUT_SHORT.contains(what) {
                // hyper's client answers 502 or passes the head on, by a race with the
                // close; the own engine passes the head and the bytes that came, then
                // closes: either way the caller sees no whole answer.
                for (engine, answer) in [("own", &mine), ("hyper", &theirs)] {
                    assert!(
                        answer.starts_with("HTTP/1.1 502") || not_whole(method, answer),
                        "{what} ({method}), {engine}: a whole answer came through:\n{answer}"
                    );
                }
                continue;
            }
            seen.push((format!("{what} ({method})"), mine, theirs));
        }
    }
    assert_same(seen);
}
