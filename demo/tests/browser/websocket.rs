//! The client side of a WebSocket (RFC 6455), as much as the DevTools protocol needs:
//! the upgrade, masked text frames out, text frames (possibly fragmented) in, pings
//! answered.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    io::{Read, Write},
    net::TcpStream,
};

use super::COMMAND_TIMEOUT;

/// An HTTP answer's head, read byte by byte up to the blank line so nothing after it
/// (a body, a WebSocket frame) is consumed.
pub(super) fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A client WebSocket carrying text messages.
pub(super) struct Socket {
    stream: TcpStream,
}

// === impl Socket ===

impl Socket {
    pub(super) fn connect(port: u16, path: &str) -> Socket {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
        // No Origin header: Chromium refuses WebSocket origins it was not told to allow.
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101"), "no WebSocket: {head}");
        Socket { stream }
    }

    pub(super) fn send(&mut self, text: &str) {
        self.frame(0x1, text.as_bytes());
    }

    /// One frame from the client: always masked, as RFC 6455 requires.
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let mask = (RandomState::new().hash_one(payload.len()) as u32).to_be_bytes();
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    /// The next text message, its fragments joined; pings are answered on the way.
    pub(super) fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).unwrap();
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0F);
            let len = match head[1] & 0x7F {
                126 => u64::from(u16::from_be_bytes(self.read_array())),
                127 => u64::from_be_bytes(self.read_array()),
                n => u64::from(n),
            };
            let mask: Option<[u8; 4]> = (head[1] & 0x80 != 0).then(|| self.read_array());
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            self.stream.read_exact(&mut payload).unwrap();
            if let Some(mask) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            match opcode {
                0x0 | 0x1 => message.extend(payload),
                0x8 => panic!("the browser closed the DevTools connection"),
                0x9 => self.frame(0xA, &payload),
                _ => {}
            }
            if fin && matches!(opcode, 0x0 | 0x1) {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    fn read_array<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.stream.read_exact(&mut bytes).unwrap();
        bytes
    }
}
