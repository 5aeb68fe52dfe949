//! The proxy's own HTTP/1.1 codec (`mesh_proxy::h1`) against hyper's HTTP/1.1 server and
//! client, which the proxy serves and forwards with today:
//!
//! - one corpus of raw requests (valid, odd and hostile, request smuggling's table among
//!   them) goes through hyper's server and the codec, and both must see the same
//!   requests, byte for byte (method, target, version, headers in order, body,
//!   trailers), and end the connection the same way (cleanly, or refusing it);
//! - one corpus of raw answers goes through hyper's client and the codec, and both must
//!   read the same answer (status, version, headers, body, trailers) or both refuse it.
//!
//! hyper reads each entry from a real socket on loopback, the other side having sent it
//! whole and closed its sending side; the codec reads the same bytes from a buffer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_proxy::h1::{self, Chunk, ChunkedDecoder, Framing, Limits, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The head limit both read with (the proxy's default `--max-header-bytes`).
const MAX_HEAD: usize = 64 * 1024;

/// One request as a server saw it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    version: http::Version,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

/// How a connection ended after the requests it carried.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    /// After the last complete request, or after one that closes the connection.
    Clean,
    /// A head or body was refused, or the bytes stopped inside a message.
    Refused,
}

fn fields(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// What hyper's HTTP/1.1 server makes of `raw`.
async fn through_hyper(raw: &[u8]) -> (Vec<Seen>, End) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let broken_body = Arc::new(Mutex::new(false));
    let server = {
        let (seen, broken_body) = (seen.clone(), broken_body.clone());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(move |request: Request<Incoming>| {
                let (seen, broken_body) = (seen.clone(), broken_body.clone());
                async move {
                    let (head, body) = request.into_parts();
                    match body.collect().await {
                        Ok(collected) => {
                            let trailers = collected.trailers().map(fields).unwrap_or_default();
                            seen.lock().unwrap().push(Seen {
                                method: head.method.to_string(),
                                target: head.uri.to_string(),
                                version: head.version,
                                headers: fields(&head.headers),
                                body: collected.to_bytes().to_vec(),
                                trailers,
                            });
                        }
                        Err(_) => *broken_body.lock().unwrap() = true,
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                }
            });
            http1::Builder::new()
                .half_close(true)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await
        })
    };
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(raw).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answers = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut answers));
    // The server may close without reading all that was sent (a reset): both are ends.
    let _ = read.await.expect("hyper closed the connection");
    let served = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("hyper's connection ended")
        .unwrap();
    let refused = served.is_err() || *broken_body.lock().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (seen, if refused { End::Refused } else { End::Clean })
}

/// What the codec makes of `raw`.
fn through_codec(raw: &[u8]) -> (Vec<Seen>, End) {
    let (read, end) = codec_requests(raw);
    (read.into_iter().map(|(seen, _)| seen).collect(), end)
}

/// The body after a head of `framing`, written back: as it came, or as one chunk (when
/// it holds any bytes) and the last chunk with `trailers`.
fn rewrite_body(framing: Framing, body: &[u8], trailers: &HeaderMap, out: &mut Vec<u8>) {
    match framing {
        Framing::Chunked => {
            encode::chunk(body, out);
            encode::last_chunk(trailers, out);
        }
        _ => out.extend_from_slice(body),
    }
}

/// The requests the codec reads in `raw`, each with what it writes for it, and how the
/// connection ends.
fn codec_requests(raw: &[u8]) -> (Vec<(Seen, Vec<u8>)>, End) {
    let limits = Limits {
        max_head_bytes: MAX_HEAD,
        max_headers: 100,
    };
    let mut buf = BytesMut::from(raw);
    let mut seen = Vec::new();
    loop {
        if buf.is_empty() {
            return (seen, End::Clean);
        }
        let head = match h1::parse_request(&mut buf, &limits) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return (seen, End::Refused),
        };
        let (body, trailers) = match head.framing {
            Framing::Empty => (Vec::new(), HeaderMap::new()),
            Framing::UntilClose => unreachable!("a request's framing"),
            Framing::Length(n) => {
                let Ok(n) = usize::try_from(n) else {
                    return (seen, End::Refused);
                };
                if buf.len() < n {
                    return (seen, End::Refused);
                }
                (buf.split_to(n).to_vec(), HeaderMap::new())
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new(limits);
                let mut body = Vec::new();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(Chunk::Data(data))) => body.extend_from_slice(&data),
                        Ok(Some(Chunk::End(trailers))) => break (body, trailers),
                        Ok(None) | Err(_) => return (seen, End::Refused),
                    }
                }
            }
        };
        let mut rewritten = Vec::new();
        encode::request_head(
            &head.method,
            &head.uri,
            head.version,
            &head.headers,
            &mut rewritten,
        );
        rewrite_body(head.framing, &body, &trailers, &mut rewritten);
        let read = Seen {
            method: head.method.to_string(),
            target: head.uri.to_string(),
            version: head.version,
            headers: fields(&head.headers),
            body,
            trailers: fields(&trailers),
        };
        seen.push((read, rewritten));
        if !head.keep_alive {
            return (seen, End::Clean);
        }
    }
}

/// The corpus: a name and the bytes a client sends.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut c: Vec<(&'static str, Vec<u8>)> = [
        // Valid.
        ("get", "GET /a?b=c HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("head", "HEAD / HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("options *", "OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("absolute form", "GET http://web:8080/x HTTP/1.1\r\nHost: web:8080\r\n\r\n"),
        ("extension method", "PURGE /x HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("lower-case method", "get / HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("content-length", "POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"),
        ("content-length 0", "POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"),
        ("chunked", "POST /p HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        ("chunked, extensions and trailers", "POST /p HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n5;a=b;c\r\nhello\r\n0;last\r\nX-Sum: 5\r\nX-Other: y\r\n\r\n"),
        ("chunked, upper-case hex and spaces", "POST /p HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nA \t\r\n0123456789\r\n0\r\n\r\n"),
        ("gzip, chunked", "POST /p HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
        ("pipelined", "GET /1 HTTP/1.1\r\nHost: web\r\n\r\nPOST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("http/1.0 closes", "GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"),
        ("http/1.0 keep-alive", "GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"),
        ("http/1.0 with a length", "POST /1 HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi"),
        ("connection close", "GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
        ("close, then keep-alive", "GET /1 HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
        ("expect 100-continue", "PUT /p HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody"),
        ("repeated fields keep their order", "GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\nAccept: */*\r\nX-A: 4\r\n\r\n"),
        ("empty and tabbed values", "GET / HTTP/1.1\r\nHost: web\r\nX-Empty:\r\nX-Tab: a\tb\r\nX-Pad:   padded   \r\n\r\n"),
        ("obs-text value", "GET / HTTP/1.1\r\nHost: web\r\nX-Latin: caf\u{e9}\r\n\r\n"),
        ("bare LF line ends", "GET / HTTP/1.1\nHost: web\n\n"),
        ("websocket handshake head", "GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        // Request smuggling: the length of a body read two ways.
        ("CL.TE", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
        ("TE.CL", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ("TE not chunked last", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("TE twice, identity last", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
        ("TE xchunked", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("TE tab before the value", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
        ("TE upper case", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n"),
        ("TE space before the colon", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("TE name with an underscore", "POST / HTTP/1.1\r\nHost: web\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE folded", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
        ("two lengths that differ", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("two lengths that agree", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("a length list", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3, 3\r\n\r\nabc"),
        ("a signed length", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: +3\r\n\r\nabc"),
        ("a negative length", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: -1\r\n\r\n"),
        ("a hex length", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 0x3\r\n\r\nabc"),
        ("an empty length", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: \r\n\r\n"),
        ("a padded length", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length:  3  \r\n\r\nabc"),
        ("a length past 2^64", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 18446744073709551616\r\n\r\n"),
        ("a length longer than what came", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc"),
        // Chunks that lie.
        ("chunk size overflow", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n"),
        ("chunk size not hex", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nz\r\nx\r\n0\r\n\r\n"),
        ("chunk size 0x", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n"),
        ("chunk size with a space inside", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1 1\r\nx\r\n0\r\n\r\n"),
        ("chunk size then bare LF", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n"),
        ("chunk longer than its size", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n"),
        ("chunk then bare LF", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n"),
        ("extension with a bare LF", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n"),
        ("no last chunk", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"),
        ("last chunk without its CRLF", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"),
        ("trailer with a bare LF", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n"),
        ("trailer that is no field", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a field\r\n\r\n"),
        // Heads that lie.
        ("obs-fold", "GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n 2\r\n\r\n"),
        ("bare CR in a value", "GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r2\r\n\r\n"),
        ("NUL in a value", "GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\u{0}2\r\n\r\n"),
        ("DEL in a value", "GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\u{7f}2\r\n\r\n"),
        ("space in a name", "GET / HTTP/1.1\r\nHost: web\r\nX A: 1\r\n\r\n"),
        ("no colon", "GET / HTTP/1.1\r\nHost: web\r\nX-A\r\n\r\n"),
        ("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("HTTP/2.0 in the request line", "GET / HTTP/2.0\r\nHost: web\r\n\r\n"),
        ("HTTP/1.2", "GET / HTTP/1.2\r\nHost: web\r\n\r\n"),
        ("no version", "GET /\r\nHost: web\r\n\r\n"),
        ("a method with a slash", "G/ET / HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("a space in the target", "GET /a b HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("a head cut short", "GET / HTTP/1.1\r\nHost: we"),
        ("leading empty lines", "\r\n\r\nGET / HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("binary garbage", "\u{16}\u{3}\u{1}\u{0}\u{a5}\u{1}\u{0}"),
    ]
    .into_iter()
    .map(|(name, raw)| (name, raw.as_bytes().to_vec()))
    .collect();
    // Latin-1 bytes as they are on the wire, not as UTF-8.
    c.push((
        "a raw obs-text byte",
        b"GET / HTTP/1.1\r\nHost: web\r\nX-Latin: caf\xe9\r\n\r\n".to_vec(),
    ));
    let fields = |n: usize| -> Vec<u8> {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            raw.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    };
    c.push(("100 fields", fields(100)));
    c.push(("101 fields", fields(101)));
    // Twice the limit: hyper bounds its read buffer, which it checks per read, so a head
    // just past the limit may still pass there; the codec's bound is exact.
    let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
    long.extend_from_slice(b"\r\n\r\n");
    c.push(("a head over the limit", long));
    let mut target = b"GET /".to_vec();
    target.extend(std::iter::repeat_n(b'a', 65_534));
    target.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    c.push(("a target over 65,534 bytes", target));
    let mut extension = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    extension.extend(std::iter::repeat_n(b'e', 16 * 1024));
    extension.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    c.push(("16 KiB of chunk extensions", extension));
    let mut big = b"POST / HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".to_vec();
    big.extend((0..200_000u32).map(|i| (i % 251) as u8));
    c.push(("a body larger than any buffer", big));
    c
}

#[tokio::test]
async fn the_codec_reads_every_corpus_entry_as_hyper_does() {
    let mut differ = Vec::new();
    let mut refused = 0;
    let corpus = corpus();
    for (name, raw) in &corpus {
        let hyper = through_hyper(raw).await;
        let codec = through_codec(raw);
        if hyper != codec {
            differ.push(format!("{name}:\n  hyper: {hyper:?}\n  codec: {codec:?}"));
        }
        refused += usize::from(codec.1 == End::Refused);
    }
    assert_none_differ(&differ);
    // The corpus holds both kinds, and neither side simply refuses everything.
    assert!(
        refused > 20 && refused < corpus.len() - 20,
        "{refused} of {} refused",
        corpus.len()
    );
}

/// One answer as a client read it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    version: http::Version,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

/// What hyper's HTTP/1.1 client reads when a `method` request is answered with `raw`.
async fn answer_through_hyper(raw: &[u8], method: &Method) -> Option<Answer> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = raw.to_vec();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // The request head, then the answer whole, then the end of what is sent.
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            request.push(byte[0]);
        }
        let _ = stream.write_all(&raw).await;
        let _ = stream.shutdown().await;
        let _ = stream.read_to_end(&mut Vec::new()).await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = client::handshake(TokioIo::new(stream)).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "web")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let read = async {
        let response = sender.send_request(request).await.ok()?;
        let (head, body) = response.into_parts();
        let collected = body.collect().await.ok()?;
        Some(Answer {
            status: head.status.as_u16(),
            version: head.version,
            headers: fields(&head.headers),
            trailers: collected.trailers().map(fields).unwrap_or_default(),
            body: collected.to_bytes().to_vec(),
        })
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("hyper read the answer");
    drop(sender);
    connection.abort();
    let _ = server.await;
    answer
}

/// What the codec reads from `raw` as the answer to a `method` request.
fn answer_through_codec(raw: &[u8], method: &Method) -> Option<Answer> {
    codec_answer(raw, method).map(|(answer, _)| answer)
}

/// What the codec reads from `raw` as the answer to a `method` request, and what it
/// writes for it.
fn codec_answer(raw: &[u8], method: &Method) -> Option<(Answer, Vec<u8>)> {
    let limits = Limits {
        max_head_bytes: MAX_HEAD,
        max_headers: 100,
    };
    let mut buf = BytesMut::from(raw);
    let head = h1::parse_response(&mut buf, &limits, method).ok()??;
    let (body, trailers) = match head.framing {
        Framing::Empty => (Vec::new(), HeaderMap::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n).ok().filter(|n| *n <= buf.len())?;
            (buf.split_to(n).to_vec(), HeaderMap::new())
        }
        Framing::UntilClose => (buf.to_vec(), HeaderMap::new()),
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(limits);
            let mut body = Vec::new();
            loop {
                match decoder.decode(&mut buf).ok()?? {
                    Chunk::Data(data) => body.extend_from_slice(&data),
                    Chunk::End(trailers) => break (body, trailers),
                }
            }
        }
    };
    let mut rewritten = Vec::new();
    encode::response_head(head.status, head.version, &head.headers, &mut rewritten);
    rewrite_body(head.framing, &body, &trailers, &mut rewritten);
    let answer = Answer {
        status: head.status.as_u16(),
        version: head.version,
        headers: fields(&head.headers),
        body,
        trailers: fields(&trailers),
    };
    Some((answer, rewritten))
}

/// Answers: a name, the request's method, the bytes the server sends.
fn answers() -> Vec<(&'static str, Method, &'static str)> {
    let get = Method::GET;
    vec![
        (
            "length",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "chunked with trailers",
            get.clone(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nGrpc-Status: 0\r\n\r\n",
        ),
        (
            "until close",
            get.clone(),
            "HTTP/1.1 200 OK\r\n\r\nevery byte until the end",
        ),
        (
            "http/1.0 until close",
            get.clone(),
            "HTTP/1.0 200 OK\r\n\r\nold",
        ),
        (
            "a coding other than chunked",
            get.clone(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes",
        ),
        (
            "chunked and a length",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        ),
        (
            "chunked in http/1.0",
            get.clone(),
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        ),
        (
            "a length list that agrees",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
        ),
        (
            "two lengths that agree",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "two lengths that differ",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
        ),
        (
            "a signed length",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
        ),
        (
            "a length past 2^64",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
        ),
        (
            "a body cut short",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhi",
        ),
        (
            "chunks cut short",
            get.clone(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        ),
        (
            "a chunk that lies",
            get.clone(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "204 with a length",
            get.clone(),
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "304 with a length",
            get.clone(),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "an answer to HEAD",
            Method::HEAD,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            "an answer to HEAD, chunked",
            Method::HEAD,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "100 continue first",
            get.clone(),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "103 early hints first",
            get.clone(),
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "101 switching",
            get.clone(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ),
        (
            "repeated fields keep their order",
            get.clone(),
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: 2\r\nset-cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "a reason phrase of its own",
            get.clone(),
            "HTTP/1.1 418 I'm a teapot today\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "no reason phrase",
            get.clone(),
            "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "a status of two digits",
            get.clone(),
            "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "a status of 600",
            get.clone(),
            "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "a status of 1000",
            get.clone(),
            "HTTP/1.1 1000 Odd\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "obs-fold",
            get.clone(),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "bare LF line ends",
            get.clone(),
            "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
        ),
        (
            "a space before the colon",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",
        ),
        (
            "HTTP/2.0 status line",
            get.clone(),
            "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        ("not HTTP at all", get.clone(), "SSH-2.0-OpenSSH_9.2\r\n"),
        (
            "a head cut short",
            get.clone(),
            "HTTP/1.1 200 OK\r\nContent-Len",
        ),
        ("nothing", get, ""),
    ]
}

#[tokio::test]
async fn the_codec_reads_every_answer_as_hyper_does() {
    let mut differ = Vec::new();
    let mut refused = 0;
    let answers = answers();
    for (name, method, raw) in &answers {
        let hyper = answer_through_hyper(raw.as_bytes(), method).await;
        let codec = answer_through_codec(raw.as_bytes(), method);
        if hyper != codec {
            differ.push(format!("{name}:\n  hyper: {hyper:?}\n  codec: {codec:?}"));
        }
        refused += usize::from(codec.is_none());
    }
    assert_none_differ(&differ);
    assert!(
        refused > 8 && refused < answers.len() - 8,
        "{refused} of {} refused",
        answers.len()
    );
}

#[tokio::test]
async fn what_the_codec_writes_reads_as_what_it_read() {
    let mut differ = Vec::new();
    let mut checked = 0;
    for (name, raw) in corpus() {
        for (seen, rewritten) in codec_requests(&raw).0 {
            let (read, end) = through_hyper(&rewritten).await;
            if read != [seen] || end != End::Clean {
                differ.push(format!("request {name}: {read:?} {end:?}"));
            }
            checked += 1;
        }
    }
    for (name, method, raw) in answers() {
        let Some((answer, rewritten)) = codec_answer(raw.as_bytes(), &method) else {
            continue;
        };
        let read = answer_through_hyper(&rewritten, &method).await;
        if read.as_ref() != Some(&answer) {
            differ.push(format!("answer {name}: {read:?}"));
        }
        checked += 1;
    }
    assert_none_differ(&differ);
    assert!(checked > 50, "{checked} messages written back");
}

/// Fails naming every message the two read differently.
fn assert_none_differ(differ: &[String]) {
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
