//! `mesh-probe`: a health check for container images that have no shell or curl.
//!
//! `mesh-probe http://127.0.0.1:4191/ready` exits 0 when the URL answers 2xx;
//! `mesh-probe tcp://127.0.0.1:50051` exits 0 when a TCP connection opens. Anything else
//! exits 1 with the reason on stderr. `--wait 120s` tries again every 250 ms until the
//! target answers or that time has passed (a `postStart` hook holding an app back until its
//! sidecar is ready). Standard library only, so it stays tiny.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Between tries, with `--wait`.
const RETRY: Duration = Duration::from_millis(250);
/// The longest `--wait`: longer is surely a mistake (and would overflow the clock).
const MAX_WAIT_S: u64 = 24 * 3600;

const USAGE: &str = "usage: mesh-probe [--wait SECONDSs] http://HOST:PORT/PATH | tcp://HOST:PORT

Exits 0 when the URL answers 2xx (http://) or a TCP connection opens (tcp://), 1 otherwise
with the reason on stderr; a health check for images without a shell. With --wait (e.g.
120s), tries again every 250 ms until the target answers or that time has passed.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = match args.as_slice() {
        [flag] if matches!(flag.as_str(), "-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [flag] if matches!(flag.as_str(), "-V" | "--version") => {
            println!("mesh-probe {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        [target] => (target, Duration::ZERO),
        [flag, wait, target] if flag == "--wait" => match seconds(wait) {
            Some(wait) => (target, wait),
            None => {
                eprintln!(
                    "mesh-probe: --wait {wait:?}: give seconds up to a day, such as 120s\n\n{USAGE}"
                );
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (target, wait) = target;
    let until = Instant::now() + wait;
    loop {
        match probe(target) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(_) if Instant::now() + RETRY < until => std::thread::sleep(RETRY),
            Err(why) => {
                eprintln!("mesh-probe {target}: {why}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// `120s` or `120`, up to a day.
fn seconds(text: &str) -> Option<Duration> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    let seconds = digits.parse::<u64>().ok().filter(|s| *s <= MAX_WAIT_S)?;
    Some(Duration::from_secs(seconds))
}

fn probe(target: &str) -> Result<(), String> {
    if let Some(authority) = target.strip_prefix("tcp://") {
        connect(authority).map(drop)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream = connect(authority)?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: mesh-probe\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(format!("answered {:?}", line.lines().next().unwrap_or("")))
        }
    } else {
        Err("the target must start with http:// or tcp://".into())
    }
}

fn connect(authority: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let mut last = format!("{authority} resolved to nothing");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}
