//! Protocol detection, the fallback where nothing is declared: what a client's first byte
//! says it speaks, waiting a bounded time for it.
//!
//! The rule: `0x16` opens a TLS handshake (the app speaks TLS itself, to the service, so
//! its bytes are carried as they are); an ASCII capital letter opens an HTTP/1 request
//! line (every method is in capitals) or the HTTP/2 preface (`PRI * HTTP/2.0`); anything
//! else is another protocol (Redis' `*`, Postgres' length prefix). A client that sends
//! nothing within the wait expects the server to speak first. Everything but HTTP is
//! carried as bytes, and counted (`mesh_protocol_detections_total`).

use std::time::Duration;

use tokio::net::TcpStream;

/// What a connection's first byte (or its silence) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1 or HTTP/2: served as HTTP.
    Http,
    /// A TLS handshake the app itself began.
    Tls,
    /// Some other protocol.
    Opaque,
    /// Nothing within the wait: a protocol whose server speaks first.
    Silent,
}

impl Detected {
    /// The label value in `mesh_protocol_detections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http => "http",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
            Detected::Silent => "silent",
        }
    }

    /// The class of a first byte.
    pub fn of(first: u8) -> Detected {
        match first {
            0x16 => Detected::Tls,
            b'A'..=b'Z' => Detected::Http,
            _ => Detected::Opaque,
        }
    }
}

/// Peeks at `stream`'s first byte for at most `wait`; `None` if it closed or failed.
pub async fn first_byte(stream: &TcpStream, wait: Duration) -> Option<Detected> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(Detected::of(first[0])),
        Ok(_) => None,
        Err(_) => Some(Detected::Silent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_of_known_protocols() {
        for http in [
            &b"GET / HTTP/1.1"[..],
            b"POST",
            b"PRI * HTTP/2.0",
            b"OPTIONS",
        ] {
            assert_eq!(Detected::of(http[0]), Detected::Http);
        }
        assert_eq!(Detected::of(0x16), Detected::Tls);
        // Redis, Postgres' startup message, a lower-case line.
        for other in [b'*', 0x00, b'h'] {
            assert_eq!(Detected::of(other), Detected::Opaque);
        }
    }
}
