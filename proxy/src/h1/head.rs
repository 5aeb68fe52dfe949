//! A request head: parsed from the front of a read buffer, its body's framing decided.
//!
//! | the head says | framing | connection |
//! |---|---|---|
//! | `Transfer-Encoding` ending in `chunked` | chunked | kept (closed after, if `Content-Length` came too) |
//! | `Transfer-Encoding` not ending in `chunked` | refused | |
//! | `Transfer-Encoding` in an HTTP/1.0 request | refused | |
//! | `Transfer-Encoding` and `Content-Length` | chunked; every `Content-Length` dropped | closed after the request |
//! | `Content-Length` of digits only | that length | kept |
//! | `Content-Length` empty, signed, a list, not digits, past 2⁶⁴ − 3 | refused | |
//! | two `Content-Length`s that differ | refused | |
//! | two that agree | that length; the second dropped | kept |
//! | neither | no body | kept |
//!
//! HTTP/1.1 connections are kept unless a `Connection` header says `close`; HTTP/1.0
//! ones only when one says `keep-alive` (and none says `close`). What `httparse` refuses
//! (a bare CR, obs-fold, a space before the colon, a control byte in a value, more than
//! [`Limits::max_headers`] fields) is refused, as is a head over
//! [`Limits::max_head_bytes`] and a target longer than 65,534 bytes.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

/// The largest length a body may declare: two values below `u64::MAX` are markers.
pub(super) const MAX_BODY_LEN: u64 = u64::MAX - 2;

/// The longest request target.
const MAX_TARGET_LEN: usize = (u16::MAX - 1) as usize;

/// The most header fields [`Limits::max_headers`] may allow: room for them is made on the
/// stack, left uninitialized until parsed.
pub const MAX_FIELDS: usize = 128;

/// Room for the fields of one head.
pub(super) type Fields<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

/// Empty room for the fields of one head.
pub(super) fn fields<'b>() -> Fields<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Bounds on a head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of a head, its final empty line included.
    pub max_head_bytes: usize,
    /// Header fields in a head (or in a chunked body's trailers); at most [`MAX_FIELDS`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunks, up to a last chunk of size 0 and its trailers.
    Chunked,
    /// Every byte until the connection closes (responses only).
    UntilClose,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// The head as it came.
    pub raw: Bytes,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// In the order they came, names lower-cased; values share the read buffer.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Why a head is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("the request head is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request target is longer than {MAX_TARGET_LEN} bytes")]
    TargetTooLong,
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("malformed request method")]
    Method,
    #[error("malformed request target")]
    Target,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding whose last coding is not chunked")]
    TransferEncodingNotChunked,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("Content-Length larger than any body")]
    ContentLengthTooLarge,
    #[error("malformed status code")]
    Status,
}

/// Parses the request head at the front of `buf` and takes it out (the body's first
/// bytes stay). None while the head is incomplete and within the limits.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = fields();
    let room = &mut fields[..limits.max_headers.min(MAX_FIELDS)];
    let mut request = httparse::Request::new(&mut []);
    // Only the first `max_head_bytes` are read: whatever follows cannot belong to a head
    // that may be accepted, and reading no further makes the verdict the same however
    // the bytes arrived.
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        window,
        room,
    );
    let no_method = request.method.is_none();
    let malformed = |e| match e {
        httparse::Error::Token if no_method => HeadError::Method,
        httparse::Error::Token => HeadError::Target,
        e => HeadError::Malformed(e),
    };
    let Some(len) = complete(parsed, buf.len(), limits, malformed)? else {
        return Ok(None);
    };
    let at = Spans::of(buf);
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Method)?;
    let target = at.span(request.path.unwrap_or_default().as_bytes());
    if target.len() > MAX_TARGET_LEN {
        return Err(HeadError::TargetTooLong);
    }
    let http11 = request.version == Some(1);
    let spans = at.fields(request.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| HeadError::Target)?;
    let mut parsed = RequestHead {
        raw: head.clone(),
        method,
        uri,
        version: if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        // Room for the few the request path adds (`mesh-hops`, `x-request-id`).
        headers: HeaderMap::with_capacity(spans.len() + 4),
        framing: Framing::Empty,
        keep_alive: http11,
        expect_continue: false,
    };
    frame(&mut parsed, &head, spans)?;
    Ok(Some(parsed))
}

/// Fills in `head`'s headers from their places in `bytes`, deciding its framing and
/// whether its connection is kept, as the table in the module's documentation says.
fn frame(head: &mut RequestHead, bytes: &Bytes, spans: Vec<Field>) -> Result<(), HeadError> {
    let http11 = head.version == Version::HTTP_11;
    let (mut length, mut saw_length, mut chunked, mut saw_te) = (None, false, false, false);
    let mut kept = KeepAlive::new(http11);
    for span in spans {
        let (name, value) = span.read(bytes)?;
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(HeadError::TransferEncodingInHttp10);
                }
                saw_te = true;
                if length.take().is_some() {
                    head.headers.remove(header::CONTENT_LENGTH);
                }
                // A coding other than chunked last is refused once every field is read.
                chunked = last_coding_is_chunked(&value);
                if chunked {
                    head.framing = Framing::Chunked;
                }
            }
            header::CONTENT_LENGTH => {
                saw_length = true;
                if saw_te {
                    continue;
                }
                let len = digits(value.as_bytes()).ok_or(HeadError::ContentLength)?;
                match length {
                    Some(earlier) if earlier != len => return Err(HeadError::ContentLength),
                    Some(_) => continue,
                    None => {}
                }
                if len > MAX_BODY_LEN {
                    return Err(HeadError::ContentLengthTooLarge);
                }
                head.framing = Framing::Length(len);
                length = Some(len);
            }
            header::CONNECTION => kept.see(&value),
            header::EXPECT => {
                head.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        head.headers.append(name, value);
    }
    if saw_te && !chunked {
        return Err(HeadError::TransferEncodingNotChunked);
    }
    head.keep_alive = kept.kept && !(saw_te && saw_length);
    if head.framing == Framing::Length(0) {
        head.framing = Framing::Empty;
    }
    Ok(())
}

/// The head's length once httparse found it complete; None while it is incomplete and
/// within the limit (`buffered` bytes read so far). `malformed` names httparse's errors.
pub(super) fn complete(
    parsed: httparse::Result<usize>,
    buffered: usize,
    limits: &Limits,
    malformed: impl FnOnce(httparse::Error) -> HeadError,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered >= limits.max_head_bytes => {
            Err(HeadError::TooLarge(limits.max_head_bytes))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(malformed(e)),
    }
}

/// Where in the read buffer the slices httparse hands out lie, so that they can become
/// slices of the head once it is taken out of the buffer as one shared piece.
pub(super) struct Spans(usize);

/// A header field's name and value, as places in its head.
pub(super) struct Field(Range<usize>, Range<usize>);

impl Spans {
    pub(super) fn of(buf: &[u8]) -> Spans {
        Spans(buf.as_ptr() as usize)
    }

    /// Where `slice`, a slice of the buffer, lies in it.
    pub(super) fn span(&self, slice: &[u8]) -> Range<usize> {
        let start = slice.as_ptr() as usize - self.0;
        start..start + slice.len()
    }

    pub(super) fn fields(&self, headers: &[httparse::Header<'_>]) -> Vec<Field> {
        let field =
            |h: &httparse::Header<'_>| Field(self.span(h.name.as_bytes()), self.span(h.value));
        headers.iter().map(field).collect()
    }
}

impl Field {
    /// The field's name and value, the value sharing `head`.
    pub(super) fn read(self, head: &Bytes) -> Result<(HeaderName, HeaderValue), HeadError> {
        let name = HeaderName::from_bytes(&head[self.0])
            .map_err(|_| HeadError::Malformed(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice(self.1))
            .map_err(|_| HeadError::Malformed(httparse::Error::HeaderValue))?;
        Ok((name, value))
    }
}

/// Whether a connection is kept after a message, as its `Connection` headers say:
/// HTTP/1.1 unless one says `close`, HTTP/1.0 only if one says `keep-alive` and none
/// `close`.
pub(super) struct KeepAlive {
    pub(super) kept: bool,
    /// A `close` was seen: no later `keep-alive` undoes it.
    closed: bool,
}

impl KeepAlive {
    pub(super) fn new(http11: bool) -> KeepAlive {
        KeepAlive {
            kept: http11,
            closed: false,
        }
    }

    /// Takes one `Connection` header's value into account.
    pub(super) fn see(&mut self, value: &HeaderValue) {
        if self.closed || has_token(value, "close") {
            self.closed = true;
            self.kept = false;
        } else if !self.kept {
            self.kept = has_token(value, "keep-alive");
        }
    }
}

/// A decimal number of digits only: no sign, no space, no list.
pub(super) fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `chunked` is the last of the codings a `Transfer-Encoding` value lists.
pub(super) fn last_coding_is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether any line of `headers`' `name` lists `token` (case-insensitively): `Connection:
/// close`, `TE: trailers`.
pub fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|value| has_token(value, token))
}

/// A comma-separated header value lists `token` (case-insensitively).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(raw), &Limits::default())
    }

    fn framing(raw: &str) -> Result<(Framing, bool), HeadError> {
        parse(raw).map(|h| {
            let h = h.expect("a complete head");
            (h.framing, h.keep_alive)
        })
    }

    #[test]
    fn a_head_is_taken_out_of_the_buffer_and_its_values_share_it() {
        let mut buf = BytesMut::from(
            "GET /a?b=c HTTP/1.1\r\nHost: web\r\nX-Many: 1\r\nx-many: 2\r\n\r\nrest",
        );
        let head = parse_request(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], b"rest");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/a?b=c");
        assert_eq!(head.version, Version::HTTP_11);
        let many: Vec<_> = head.headers.get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
        assert_eq!((head.framing, head.keep_alive), (Framing::Empty, true));
    }

    #[test]
    fn an_incomplete_head_waits_and_an_oversized_one_is_refused() {
        assert!(parse("GET / HTTP/1.1\r\nHost: we").unwrap().is_none());
        let limits = Limits {
            max_head_bytes: 64,
            max_headers: 4,
        };
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        let refused = parse_request(&mut BytesMut::from(long.as_str()), &limits);
        assert_eq!(refused.unwrap_err(), HeadError::TooLarge(64));
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        let refused = parse_request(&mut BytesMut::from(many), &limits);
        assert_eq!(
            refused.unwrap_err(),
            HeadError::Malformed(httparse::Error::TooManyHeaders)
        );
    }

    #[test]
    fn framing_follows_the_table() {
        let ok = |raw: &str, expected: Framing, kept: bool| {
            assert_eq!(framing(raw), Ok((expected, kept)), "{raw:?}");
        };
        ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
            true,
        );
        ok(
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            Framing::Empty,
            true,
        );
        ok(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Framing::Chunked,
            true,
        );
        ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
            true,
        );
        // TE.CL and CL.TE: chunked wins, the length is dropped, the connection closes.
        ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::Chunked,
            false,
        );
        ok(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            Framing::Chunked,
            false,
        );
        ok("GET / HTTP/1.0\r\n\r\n", Framing::Empty, false);
        ok(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            Framing::Empty,
            true,
        );
        ok(
            "GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
            Framing::Empty,
            false,
        );

        let refused = |raw: &str, e: HeadError| assert_eq!(framing(raw), Err(e), "{raw:?}");
        refused(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            HeadError::ContentLength,
        );
        refused(
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            HeadError::ContentLength,
        );
        refused(
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            HeadError::ContentLength,
        );
        refused(
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            HeadError::ContentLength,
        );
        refused(
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            HeadError::ContentLength,
        );
        refused(
            "POST / HTTP/1.1\r\nContent-Length: 18446744073709551614\r\n\r\n",
            HeadError::ContentLengthTooLarge,
        );
        refused(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            HeadError::TransferEncodingNotChunked,
        );
        refused(
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::TransferEncodingInHttp10,
        );
        assert!(
            matches!(
                framing("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"),
                Err(HeadError::Malformed(_))
            ),
            "obs-fold"
        );
        assert!(
            matches!(
                framing("GET / HTTP/1.1\r\nX : a\r\n\r\n"),
                Err(HeadError::Malformed(_))
            ),
            "space before the colon"
        );
        assert!(
            framing("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n").is_err(),
            "a bare CR"
        );
    }
}
