//! Arbitrary bytes into the proxy's own HTTP/1.1 codec: request heads, then their bodies
//! by Content-Length or chunked framing, request after request as on a kept-alive
//! connection; and the same bytes as the answer to a GET and to a HEAD. Nothing may
//! panic, a body never holds more bytes than came in, and the bytes fed in pieces (of a
//! size the first input byte picks) must read exactly as the same bytes fed whole: where
//! a read happens to end must never change what a message says.

#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use mesh_proxy::h1::{self, Chunk, ChunkedDecoder, Framing, Limits};

const LIMITS: Limits = Limits {
    max_head_bytes: 4096,
    max_headers: 16,
};

/// What a connection's bytes said: each request's head and body, then how it ended.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Head(String),
    Data(Vec<u8>),
    Trailers(String),
    Refused(String),
}

/// Reads `input` fed `step` bytes at a time.
fn read(input: &[u8], step: usize) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = BytesMut::new();
    let mut feed = feeder(input, step);
    loop {
        let parse = |buf: &mut BytesMut| h1::parse_request(buf, &LIMITS);
        let Some(head) = read_head(&mut buf, &mut feed, &mut events, parse) else {
            return events;
        };
        events.push(Event::Head(format!(
            "{} {} {:?} {:?} keep-alive {} {:?}",
            head.method, head.uri, head.version, head.framing, head.keep_alive, head.headers
        )));
        if !read_body(head.framing, &mut buf, &mut feed, &mut events) {
            return events;
        }
        if !head.keep_alive {
            return events;
        }
    }
}

/// Reads a body of `framing` into `events`, feeding `buf` as it runs out. False when the
/// connection can carry nothing after it (it ended, or was refused).
fn read_body(
    framing: Framing,
    buf: &mut BytesMut,
    feed: &mut impl FnMut(&mut BytesMut) -> bool,
    events: &mut Vec<Event>,
) -> bool {
    let mut body = Vec::new();
    match framing {
        Framing::Empty => {}
        Framing::UntilClose => {
            while !buf.is_empty() || feed(buf) {
                body.extend_from_slice(&buf.split());
            }
            events.push(Event::Data(body));
            return false;
        }
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if buf.is_empty() && !feed(buf) {
                    events.push(Event::Data(body));
                    return false;
                }
                let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                body.extend_from_slice(&buf.split_to(take));
                left -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(LIMITS);
            loop {
                match decoder.decode(buf) {
                    Ok(Some(Chunk::Data(data))) => {
                        assert!(!data.is_empty(), "an empty data chunk");
                        body.extend_from_slice(&data);
                    }
                    Ok(Some(Chunk::End(trailers))) => {
                        assert!(decoder.is_done());
                        events.push(Event::Data(std::mem::take(&mut body)));
                        events.push(Event::Trailers(format!("{trailers:?}")));
                        break;
                    }
                    Ok(None) if feed(buf) => {}
                    Ok(None) => {
                        events.push(Event::Data(body));
                        return false;
                    }
                    Err(e) => {
                        events.push(Event::Data(body));
                        events.push(Event::Refused(e.to_string()));
                        return false;
                    }
                }
            }
        }
    }
    if !body.is_empty() {
        events.push(Event::Data(body));
    }
    true
}

/// Reads `input` as the answer to a `method` request, fed `step` bytes at a time.
fn read_answer(input: &[u8], step: usize, method: &Method) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = BytesMut::new();
    let mut feed = feeder(input, step);
    let parse = |buf: &mut BytesMut| h1::parse_response(buf, &LIMITS, method);
    let Some(head) = read_head(&mut buf, &mut feed, &mut events, parse) else {
        return events;
    };
    assert!(
        !head.status.is_informational() || head.upgraded,
        "a 1xx was not skipped"
    );
    events.push(Event::Head(format!(
        "{} {:?} {:?} keep-alive {} upgraded {} {:?}",
        head.status, head.version, head.framing, head.keep_alive, head.upgraded, head.headers
    )));
    read_body(head.framing, &mut buf, &mut feed, &mut events);
    events
}

/// Parses a head with `parse`, feeding `buf` while it is incomplete. None when the bytes
/// end first or the head is refused (noted in `events`).
fn read_head<H>(
    buf: &mut BytesMut,
    feed: &mut impl FnMut(&mut BytesMut) -> bool,
    events: &mut Vec<Event>,
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<H>, h1::HeadError>,
) -> Option<H> {
    loop {
        match parse(buf) {
            Ok(Some(head)) => return Some(head),
            Ok(None) if feed(buf) => {}
            Ok(None) => return None,
            Err(e) => {
                events.push(Event::Refused(e.to_string()));
                return None;
            }
        }
    }
}

/// Feeds `input` into a buffer `step` bytes per call; false once all was fed.
fn feeder(input: &[u8], step: usize) -> impl FnMut(&mut BytesMut) -> bool + '_ {
    let mut fed = 0;
    move |buf: &mut BytesMut| {
        if fed == input.len() {
            return false;
        }
        let next = (fed + step).min(input.len());
        buf.extend_from_slice(&input[fed..next]);
        fed = next;
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = read(input, input.len().max(1));
    let body: usize = whole
        .iter()
        .map(|e| match e {
            Event::Data(d) => d.len(),
            _ => 0,
        })
        .sum();
    assert!(
        body <= input.len(),
        "{body} body bytes from {} in",
        input.len()
    );
    let pieces = read(input, usize::from(step).max(1));
    assert_eq!(whole, pieces, "fed in pieces of {step}");
    for method in [Method::GET, Method::HEAD] {
        let whole = read_answer(input, input.len().max(1), &method);
        let pieces = read_answer(input, usize::from(step).max(1), &method);
        assert_eq!(
            whole, pieces,
            "an answer to {method}, fed in pieces of {step}"
        );
    }
});
