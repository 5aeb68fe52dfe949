//! Loopback servers and addresses for tests that start real servers on ephemeral ports.

use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};

/// A listener on 127.0.0.1 at a port the kernel chose.
pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// An address nothing listens on (it was free a moment ago).
pub fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A DNS server on loopback that answers every query "no such name" at once: the
/// sidecars' `--dns-server` in tests, so that no lookup of a made-up name leaves the
/// machine. Serves until the runtime ends.
pub async fn nxdomain_dns() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if let Some(answer) = nxdomain(&buf[..n]) {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    });
    addr
}

/// The NXDOMAIN answer to `query`; `None` for what is too short to be one.
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut answer = query.to_vec();
    answer[2] |= 0x80; // a response
    answer[3] = 0x80 | 3; // recursion available, NXDOMAIN
    answer[6..12].fill(0); // no answer, authority or additional records
    // Keep the question only (drop an EDNS record in the additional section): its name,
    // up to the root label, then type and class.
    let question_end = 12
        + answer[12..]
            .iter()
            .position(|b| *b == 0)
            .map_or(0, |p| p + 1 + 4);
    answer.truncate(question_end.min(answer.len()));
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_keeps_the_id_and_question_and_says_nxdomain() {
        // id 0xabcd, recursion desired, one question (web. A IN), one EDNS record.
        let mut query = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        query.extend([3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
        query.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let answer = nxdomain(&query).unwrap();
        assert_eq!(&answer[..4], [0xab, 0xcd, 0x81, 0x83]);
        assert_eq!(&answer[4..12], [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&answer[12..], &query[12..21]);
        assert_eq!(nxdomain(&[0; 11]), None);
    }
}
