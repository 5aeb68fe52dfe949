//! Writing messages: a head into one buffer (so it goes out in one write), and chunked
//! framing around body bytes.

use std::io::Write;

use http::header::HeaderMap;
use http::{Method, StatusCode, Uri, Version};

/// Appends a request head to `dst`: the request line, every header in `headers` as it
/// is, and the empty line.
pub fn request_head(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    dst: &mut Vec<u8>,
) {
    dst.reserve(64 + 32 * headers.len());
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    let _ = write!(dst, "{uri}");
    dst.push(b' ');
    dst.extend_from_slice(version_str(version));
    dst.extend_from_slice(b"\r\n");
    fields(headers, dst);
}

/// Appends a response head to `dst`: the status line (with the status's canonical
/// reason), every header in `headers` as it is, and the empty line.
pub fn response_head(status: StatusCode, version: Version, headers: &HeaderMap, dst: &mut Vec<u8>) {
    dst.reserve(64 + 32 * headers.len());
    dst.extend_from_slice(version_str(version));
    dst.push(b' ');
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    fields(headers, dst);
}

/// Appends one chunk holding `data` (nothing for no data: an empty chunk would end the
/// body).
pub fn chunk(data: &[u8], dst: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    chunk_size(data.len(), dst);
    dst.extend_from_slice(data);
    dst.extend_from_slice(b"\r\n");
}

/// Appends the line that begins a chunk of `len` bytes.
pub fn chunk_size(len: usize, dst: &mut Vec<u8>) {
    let _ = write!(dst, "{len:X}\r\n");
}

/// Appends the last chunk and `trailers`.
pub fn last_chunk(trailers: &HeaderMap, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"0\r\n");
    fields(trailers, dst);
}

/// Header fields, then the empty line that ends them.
fn fields(headers: &HeaderMap, dst: &mut Vec<u8>) {
    for (name, value) in headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// HTTP/1.0 stays 1.0; anything else is written as HTTP/1.1.
fn version_str(version: Version) -> &'static [u8] {
    if version == Version::HTTP_10 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    }
}
