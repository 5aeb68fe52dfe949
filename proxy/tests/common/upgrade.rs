//! An app that switches protocols: the far end of HTTP/1.1 Upgrade tests.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::PATIENCE;

/// An app speaking a protocol of its own after `Upgrade: shout`: it answers each chunk
/// in capitals, and once the client has half-closed, says "bye" and closes. Any request
/// without that upgrade gets a `101` all the same (which no proxy may pass on).
pub async fn shouting_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return; // the health check's connection
                    }
                    head.push_str(&line.to_ascii_lowercase());
                    if line == "\r\n" {
                        break;
                    }
                }
                let upgrade = if head.contains("upgrade: shout") {
                    "shout"
                } else {
                    "surprise"
                };
                let switching = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {upgrade}\r\n\r\n"
                );
                stream
                    .get_mut()
                    .write_all(switching.as_bytes())
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let loud = buf[..n].to_ascii_uppercase();
                            if stream.get_mut().write_all(&loud).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.get_mut().write_all(b"bye").await;
                let _ = stream.get_mut().shutdown().await;
            });
        }
    });
    addr
}

/// Reads an HTTP head (up to the blank line) from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("an answer's head")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}
