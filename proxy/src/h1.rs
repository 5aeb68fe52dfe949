//! HTTP/1.1 as the proxy reads it itself: a request head parsed in place from one read
//! buffer with `httparse` (the target and header values are slices of that buffer, never
//! copies), and a message body framed as RFC 9112 §6 says, by `Content-Length` or
//! `chunked`.
//!
//! It accepts what hyper's HTTP/1.1 server accepts and refuses what it refuses, with the
//! same framing decisions (the table in [`head`]): `tests/h1_differential.rs` holds the
//! two to the same result, request by request and byte by byte, on one corpus of valid,
//! odd and hostile messages (request smuggling's among them), and the fuzz target
//! `h1_codec` drives it with arbitrary bytes cut at arbitrary places.
//!
//! This is the codec of an HTTP/1.1 forwarding path of the proxy's own; the listeners
//! still serve HTTP/1.1 through hyper.

mod chunked;
mod head;
mod response;

pub use chunked::{Chunk, ChunkError, ChunkedDecoder};
pub use head::{Framing, HeadError, Limits, RequestHead, parse_request};
pub use response::{ResponseHead, parse_response};
