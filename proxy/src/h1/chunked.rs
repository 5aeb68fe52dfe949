//! A chunked body (RFC 9112 §7.1), decoded as it arrives: data handed out as slices of
//! the read buffer, the framing checked byte by byte.
//!
//! Refused: a size that is no hex number or overflows 64 bits, anything but spaces or
//! tabs, an extension (`;…`) or CRLF after it, an extension with a bare LF or past
//! 16 KiB in one body, a chunk not followed by CRLF, a bare LF where CRLF belongs, and
//! trailers past the head limits or not parseable as header fields.

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::Limits;

/// The most bytes of chunk extensions one body may carry (they are skipped, not kept).
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;

/// What decoding yields next.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(bytes::Bytes),
    /// The body has ended, with its trailers (empty when it had none).
    End(HeaderMap),
}

/// Why a chunked body is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The first hex digit of a size.
    Start,
    /// More hex digits, or what ends them.
    Size,
    /// Spaces or tabs after the size.
    SizeSpace,
    Extension,
    /// The LF ending a size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// A trailer line, up to its CR.
    Trailer,
    TrailerLf,
    /// After the last chunk's line or a trailer line: CR (the end) or a trailer line.
    EndCr,
    EndLf,
    Done,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size being read, then the bytes of the chunk still to come.
    size: u64,
    extension_bytes: u64,
    /// Trailer lines as they came, when there are any.
    trailers: Option<BytesMut>,
    trailer_lines: usize,
    limits: Limits,
}

// === impl ChunkedDecoder ===

impl ChunkedDecoder {
    pub fn new(limits: Limits) -> Self {
        ChunkedDecoder {
            state: State::Start,
            size: 0,
            extension_bytes: 0,
            trailers: None,
            trailer_lines: 0,
            limits,
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `buf`, taking out what it uses. None when `buf` runs out
    /// first: call again with more.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        loop {
            if self.state == State::Data {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Some(Chunk::Data(buf.split_to(n).freeze())));
            }
            if self.state == State::Done {
                return Ok(None);
            }
            let Some(&byte) = buf.first() else {
                return Ok(None);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
            if self.state == State::Done {
                return self.trailers().map(|t| Some(Chunk::End(t)));
            }
        }
    }

    /// The state after `byte`.
    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        use State::*;
        let next = match (self.state, byte) {
            (Start | Size, _) if (byte as char).is_ascii_hexdigit() => {
                let digit = u64::from((byte as char).to_digit(16).unwrap_or_default());
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(ChunkError("chunk size overflows"))?;
                Size
            }
            (Start, _) => return Err(ChunkError("missing chunk size")),
            (Size | SizeSpace, b'\t' | b' ') => SizeSpace,
            (Size | SizeSpace, b';') => Extension,
            (Size | SizeSpace, b'\r') => SizeLf,
            (Size, _) => return Err(ChunkError("invalid chunk size")),
            (SizeSpace, _) => return Err(ChunkError("invalid byte after the chunk size")),
            (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return Err(ChunkError("a chunk extension holds a bare LF")),
            (Extension, _) => {
                self.extension_bytes += 1;
                if self.extension_bytes >= MAX_EXTENSION_BYTES {
                    return Err(ChunkError("chunk extensions over 16 KiB"));
                }
                Extension
            }
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (SizeLf, _) => return Err(ChunkError("a chunk size line without CRLF")),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(ChunkError("a chunk not followed by CRLF")),
            (DataLf, b'\n') => {
                // The next chunk's size is read from zero.
                self.size = 0;
                Start
            }
            (DataLf, _) => return Err(ChunkError("a chunk not followed by CRLF")),
            (Trailer, _) => {
                self.keep_trailer_byte(byte)?;
                if byte == b'\r' { TrailerLf } else { Trailer }
            }
            (TrailerLf, b'\n') => {
                if self.trailer_lines >= self.limits.max_headers {
                    return Err(ChunkError("too many trailers"));
                }
                self.trailer_lines += 1;
                self.keep_trailer_byte(byte)?;
                EndCr
            }
            (TrailerLf, _) => return Err(ChunkError("a trailer line without CRLF")),
            (EndCr, b'\r') => {
                if self.trailers.is_some() {
                    self.keep_trailer_byte(byte)?;
                }
                EndLf
            }
            (EndCr, _) => {
                self.trailers
                    .get_or_insert_with(|| BytesMut::with_capacity(64));
                self.keep_trailer_byte(byte)?;
                Trailer
            }
            (EndLf, b'\n') => {
                if self.trailers.is_some() {
                    self.keep_trailer_byte(byte)?;
                }
                Done
            }
            (EndLf, _) => return Err(ChunkError("the last chunk not followed by CRLF")),
            // `decode` hands data out and stops at the end itself: no byte comes here in
            // either state.
            (Data | Done, _) => self.state,
        };
        Ok(next)
    }

    fn keep_trailer_byte(&mut self, byte: u8) -> Result<(), ChunkError> {
        let trailers = self.trailers.get_or_insert_with(BytesMut::new);
        if trailers.len() >= self.limits.max_head_bytes {
            return Err(ChunkError("trailers over the head size limit"));
        }
        trailers.extend_from_slice(&[byte]);
        Ok(())
    }

    /// The trailers read, as header fields.
    fn trailers(&mut self) -> Result<HeaderMap, ChunkError> {
        let mut map = HeaderMap::new();
        let Some(lines) = self.trailers.take() else {
            return Ok(map);
        };
        let mut fields = vec![httparse::EMPTY_HEADER; self.trailer_lines];
        match httparse::parse_headers(&lines, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => {
                for field in fields {
                    let name = HeaderName::from_bytes(field.name.as_bytes())
                        .map_err(|_| ChunkError("invalid trailer name"))?;
                    let value = HeaderValue::from_bytes(field.value)
                        .map_err(|_| ChunkError("invalid trailer value"))?;
                    map.append(name, value);
                }
                Ok(map)
            }
            Ok(httparse::Status::Partial) => Err(ChunkError("incomplete trailers")),
            Err(_) => Err(ChunkError("malformed trailers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `raw` whole, then again fed one byte at a time: both must agree.
    fn decode(raw: &[u8]) -> Result<(Vec<u8>, HeaderMap, usize), ChunkError> {
        let whole = decode_in(raw, raw.len());
        let bytewise = decode_in(raw, 1);
        assert_eq!(whole, bytewise, "{raw:?}");
        whole
    }

    /// The body, its trailers and the bytes left after it, fed `step` bytes at a time.
    fn decode_in(raw: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Some(Chunk::Data(data)) => body.extend_from_slice(&data),
                Some(Chunk::End(trailers)) => {
                    return Ok((body, trailers, buf.len() + raw.len() - fed));
                }
                None if fed == raw.len() => return Err(ChunkError("incomplete")),
                None => {
                    let next = (fed + step).min(raw.len());
                    buf.extend_from_slice(&raw[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunks_extensions_and_trailers_are_read() {
        let (body, trailers, left) = decode(
            b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Sum: 1\r\nX-Two: 2\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers["x-sum"], "1");
        assert_eq!(trailers["x-two"], "2");
        assert_eq!(left, 4);
        let (body, trailers, _) = decode(b"A \t\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!((body.len(), trailers.len()), (10, 0));
    }

    #[test]
    fn malformed_framing_is_refused() {
        for raw in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"10000000000000000\r\n",
            b"-1\r\n",
            b"0x5\r\n",
        ] {
            assert!(decode(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let mut raw = b"1;".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 16 * 1024));
        raw.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode(&raw).unwrap_err(),
            ChunkError("chunk extensions over 16 KiB")
        );
        let mut raw = b"0\r\n".to_vec();
        for i in 0..101 {
            raw.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(decode(&raw).unwrap_err(), ChunkError("too many trailers"));
    }
}
