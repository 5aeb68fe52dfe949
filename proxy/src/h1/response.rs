//! A response head, read as an HTTP/1.1 client reads it: what the request was decides as
//! much of the body's framing as the head does (RFC 9112 §6.3).
//!
//! | the answer | framing |
//! |---|---|
//! | `101 Switching Protocols`, or a 2xx to `CONNECT` | none: the connection is the other protocol's now |
//! | any other 1xx | skipped: the final answer follows |
//! | `204`, `304`, or any answer to `HEAD` | none, whatever its headers say |
//! | `Transfer-Encoding` in an HTTP/1.0 answer | refused |
//! | `Transfer-Encoding` ending in `chunked` | chunked (a `Content-Length` beside it is ignored) |
//! | another `Transfer-Encoding` | until the connection closes |
//! | `Content-Length`s (lines or lists) that agree | that length |
//! | `Content-Length`s that differ, or one that is no number | refused |
//! | neither | until the connection closes |
//!
//! A connection is kept after an answer as after a request ([`super::head`]), never after
//! an upgrade.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};

use super::head::{
    KeepAlive, MAX_BODY_LEN, MAX_FIELDS, Spans, complete, digits, fields, last_coding_is_chunked,
};
use super::{Framing, HeadError, Limits};

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// In the order they came, names lower-cased; values share the read buffer.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
    /// The connection now speaks another protocol (a `101`, or a tunnel opened).
    pub upgraded: bool,
}

/// Parses the final answer to a `method` request at the front of `buf` and takes it out
/// (informational answers before it too; the body's first bytes stay). None while it is
/// incomplete and within the limits.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
    method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        let Some(head) = parse_one(buf, limits, method)? else {
            return Ok(None);
        };
        let informational = head.status.is_informational();
        if !informational || head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(head));
        }
    }
}

/// One head, informational or not.
fn parse_one(
    buf: &mut BytesMut,
    limits: &Limits,
    method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut fields = fields();
    let room = &mut fields[..limits.max_headers.min(MAX_FIELDS)];
    let mut response = httparse::Response::new(&mut []);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        window,
        room,
    );
    let Some(len) = complete(parsed, buf.len(), limits, HeadError::Malformed)? else {
        return Ok(None);
    };
    let status =
        StatusCode::from_u16(response.code.unwrap_or_default()).map_err(|_| HeadError::Status)?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let spans = Spans::of(buf).fields(response.headers);
    let bytes = buf.split_to(len).freeze();
    let mut head = ResponseHead {
        status,
        version,
        headers: HeaderMap::with_capacity(spans.len()),
        framing: Framing::Empty,
        keep_alive: version == Version::HTTP_11,
        upgraded: false,
    };
    let mut kept = KeepAlive::new(version == Version::HTTP_11);
    for span in spans {
        let (name, value) = span.read(&bytes)?;
        if name == header::CONNECTION {
            kept.see(&value);
        }
        head.headers.append(name, value);
    }
    head.keep_alive = kept.kept;
    let code = head.status.as_u16();
    head.upgraded = code == 101 || (*method == Method::CONNECT && head.status.is_success());
    if head.upgraded {
        head.keep_alive = false;
    } else {
        head.framing = framing(&head, method)?;
    }
    Ok(Some(head))
}

/// The body's framing of an answer that upgrades nothing, as the table in the module's
/// documentation says.
fn framing(head: &ResponseHead, method: &Method) -> Result<Framing, HeadError> {
    let code = head.status.as_u16();
    if code == 204 || code == 304 || head.status.is_informational() || *method == Method::HEAD {
        return Ok(Framing::Empty);
    }
    let headers = &head.headers;
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        if head.version == Version::HTTP_10 {
            return Err(HeadError::TransferEncodingInHttp10);
        }
        return Ok(if last_coding_is_chunked(last) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let line = value.to_str().map_err(|_| HeadError::ContentLength)?;
        for item in line.split(',') {
            let n = digits(item.trim().as_bytes()).ok_or(HeadError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) if n > MAX_BODY_LEN => Err(HeadError::ContentLengthTooLarge),
        Some(0) => Ok(Framing::Empty),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::UntilClose),
    }
}
