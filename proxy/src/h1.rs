//! HTTP/1.1 as the proxy reads it itself: a request head parsed in place from one read
//! buffer with `httparse` (the target and header values are slices of that buffer, never
//! copies), an answer's head likewise, a message body framed as RFC 9112 §6 says (by
//! `Content-Length`, `chunked` or the connection's end), and heads written back in one
//! buffer ([`encode`]).
//!
//! It accepts what hyper's HTTP/1.1 server accepts and refuses what it refuses, with the
//! same framing decisions (the tables in `head.rs` and `response.rs`), and reads answers
//! as hyper's client does: `tests/h1_differential.rs` holds the two to the same result,
//! message by message and byte by byte, on corpora of valid, odd and hostile requests
//! (request smuggling's table among them) and answers, and checks that what the codec
//! writes back reads as what it read. The fuzz target `h1_codec` drives it with arbitrary
//! bytes cut at arbitrary places.
//!
//! On it stand the proxy's own HTTP/1.1 engine's two sides: the server connection loop
//! (`server/h1.rs`, with [`answer`] writing answers and [`upload`] reading request
//! bodies) and the client ([`client`]), selected by `--h1-engine`.

pub mod answer;
mod chunked;
pub mod client;
pub mod encode;
mod framed;
mod head;
mod response;
pub mod upload;

pub use chunked::{Chunk, ChunkError, ChunkedDecoder};
pub use head::{Framing, HeadError, Limits, RequestHead, lists, parse_request};
pub use response::{ResponseHead, parse_response};
