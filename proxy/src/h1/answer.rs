//! Writing an answer to the caller on the HTTP/1.1 path of our own, framed and marked as
//! hyper's server frames and marks it: no body for HEAD, 1xx, 204 and 304; the answer's
//! `Content-Length` if it has one, else its body's exact size, else chunked (or, to an
//! HTTP/1.0 caller, until the connection closes); `Connection: close` when the
//! connection will not be kept, `Connection: keep-alive` to an HTTP/1.0 caller when it
//! will; a `Date` when the answer has none; trailers only to a caller that asked for them
//! (`TE: trailers`) on a chunked answer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::head::digits;
use super::{Framing, encode, lists};
use crate::body::BoxBody;

/// What the caller's request says of how its answer is written.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// A HEAD request: the answer has no body whatever its headers say.
    pub head: bool,
    pub version: Version,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// The caller takes trailers (`TE: trailers`).
    pub trailers: bool,
}

/// Body bytes at most copied into the buffer of the head (or of other small pieces)
/// rather than written on their own.
const COALESCE: usize = 16 * 1024;

/// Writes `response` to `io`; whether the connection may carry another request after
/// it. An error leaves the answer cut short: the connection must be closed.
pub async fn write<W>(io: &mut W, asked: Asked, response: Response<BoxBody>) -> io::Result<bool>
where
    W: AsyncWrite + Unpin,
{
    let (mut parts, mut body) = response.into_parts();
    let headers = &mut parts.headers;
    let mut keep_alive = asked.keep_alive && !lists(headers, header::CONNECTION, "close");
    // In hyper's order: the connection's fate, then the body's framing, then the date.
    if asked.version == Version::HTTP_10 {
        if keep_alive && !lists(headers, header::CONNECTION, "keep-alive") {
            headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    } else if !keep_alive && !lists(headers, header::CONNECTION, "close") {
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let framing = framing(asked, parts.status, headers, &body);
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
    }
    let mut out = Vec::with_capacity(256);
    encode::response_head(parts.status, asked.version, headers, &mut out);
    let mut left = match framing {
        Framing::Empty => {
            io.write_all(&out).await?;
            return Ok(keep_alive);
        }
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut trailers = None;
    loop {
        // What is ready goes out with what is already written; before waiting for more,
        // what is written goes out.
        let ready = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let frame = match ready {
            Some(frame) => frame,
            None => {
                flush(io, &mut out).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // What came before the failure still reaches the caller, then the close.
                flush(io, &mut out).await?;
                return Err(io::Error::other(e));
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.len() as u64 > left {
            return Err(io::Error::other(
                "the answer's body is longer than its Content-Length",
            ));
        }
        left -= data.len() as u64;
        if framing == Framing::Chunked {
            if data.len() > COALESCE {
                let mut size = Vec::with_capacity(16);
                encode::chunk_size(data.len(), &mut size);
                out.extend_from_slice(&size);
                flush(io, &mut out).await?;
                io.write_all(&data).await?;
                out.extend_from_slice(b"\r\n");
            } else {
                encode::chunk(&data, &mut out);
            }
        } else if data.len() > COALESCE {
            flush(io, &mut out).await?;
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if out.len() > COALESCE {
            flush(io, &mut out).await?;
        }
    }
    match framing {
        Framing::Length(_) if left > 0 => {
            flush(io, &mut out).await?;
            return Err(io::Error::other(
                "the answer's body is shorter than its Content-Length",
            ));
        }
        Framing::Chunked => {
            let trailers = trailers.filter(|_| asked.trailers).unwrap_or_default();
            encode::last_chunk(&trailers, &mut out);
        }
        _ => {}
    }
    flush(io, &mut out).await?;
    Ok(keep_alive)
}

/// How the answer's body is delimited, its headers made to say so.
fn framing(asked: Asked, status: StatusCode, headers: &mut HeaderMap, body: &BoxBody) -> Framing {
    let no_content = status == StatusCode::NO_CONTENT;
    if no_content {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
    }
    if asked.head || status.is_informational() || no_content || status == StatusCode::NOT_MODIFIED {
        return Framing::Empty;
    }
    if let Some(n) = content_length(headers) {
        headers.remove(header::TRANSFER_ENCODING);
        return Framing::Length(n);
    }
    // Several lengths that disagree, or one that is no number: this side decides.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Framing::Length(n);
    }
    if asked.version == Version::HTTP_10 {
        return Framing::UntilClose;
    }
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Framing::Chunked
}

/// The answer's one `Content-Length` (every line of it agreeing), if it has one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().ok()?.split(',') {
            let n = digits(part.trim().as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

async fn flush<W: AsyncWrite + Unpin>(io: &mut W, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// The `Date` header's value for now, made at most once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let value = HeaderValue::try_from(httpdate::fmt_http_date(now));
            *cached = (second, value.unwrap_or(HeaderValue::from_static("")));
        }
        cached.1.clone()
    })
}
