//! Whatever an instance registered or a sidecar answered reaches the terminal as visible
//! text, never as a control sequence: an instance whose metadata, tags and check output
//! carry a screen clear, an OSC 52 clipboard write and a fake green tick, a sidecar whose
//! `/ready` and `/debug/endpoints` carry them too, and no meshctl command lets one through.

mod common;

use std::net::SocketAddr;

use common::{Registry, Run, run};
use mesh_registry_api::{Heartbeat, Registration, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CLEAR: &str = "\x1b[2J";
const CLIPBOARD: &str = "\x1b]52;c;cm0gLXJmIC8K\x07";
const FAKE_OK: &str = "\x1b[32m✔ all good";
const BIDI: &str = "\u{202e}dab\u{202c}";
const C1: &str = "\u{9b}31m";

#[tokio::test]
async fn no_command_prints_a_control_character_it_was_sent() {
    let registry = Registry::start().await;
    let url = registry.url();
    let admin = hostile_admin().await;

    let mut evil = Registration::new(admin.to_string());
    evil.tags = vec![CLEAR.into(), FAKE_OK.into(), BIDI.into()];
    evil.metadata.insert("admin".into(), admin.to_string());
    evil.metadata.insert("note".into(), CLIPBOARD.into());
    evil.metadata.insert(CLEAR.into(), C1.into());
    let client = &registry.client;
    client.register("evil", "evil-1", &evil).await.unwrap();
    let output = format!("{FAKE_OK}\n{CLEAR}{CLIPBOARD}");
    let heartbeat = Heartbeat {
        status: Some(Status::Warning),
        output: Some(output),
        ..Heartbeat::default()
    };
    client
        .heartbeat("evil", "evil-1", &heartbeat)
        .await
        .unwrap();
    // An admin "address" that is no address does not get in: the registry refuses it.
    let mut broken = Registration::new("127.0.0.1:9");
    broken
        .metadata
        .insert("admin".into(), format!("{CLEAR}{CLIPBOARD}:1"));
    let refused = client
        .register("evil", "evil-2", &broken)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("invalid_argument"), "{refused}");
    // A dead one does: it is printed in the check's hint.
    broken.metadata.insert("admin".into(), "127.0.0.1:9".into());
    client.register("evil", "evil-2", &broken).await.unwrap();

    let commands: &[&[&str]] = &[
        &["services"],
        &["instances", "evil"],
        &["instances", "evil", "-o", "json"],
        &["check"],
        &["check", "-o", "json"],
        &["endpoints", "evil"],
        &["endpoints", "evil", "-o", "json"],
        &["endpoints", "evil", "--via", "evil/evil-2"],
    ];
    let mut printed = String::new();
    let mut leaks = Vec::new();
    for args in commands {
        let answer = run(&url, args).await;
        leaks.extend(leak(args, &answer));
        printed.push_str(&answer.stdout);
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
    // Shown, escaped: what was sent is still there to read.
    for shown in [
        r"\x1b[2J",
        r"\x1b]52;c;cm0gLXJmIC8K\x07",
        r"\u{202e}dab",
        r"\u{9b}31m",
    ] {
        assert!(printed.contains(shown), "{shown} not shown in:\n{printed}");
    }
    // JSON stays JSON, with the strings as they were registered.
    let json = run(&url, &["instances", "evil", "-o", "json"]).await.json();
    let first = &json["instances"][0];
    assert_eq!(first["tags"][2], BIDI);
    assert_eq!(first["metadata"][CLEAR], C1);
    assert_eq!(first["output"], format!("{FAKE_OK}\n{CLEAR}{CLIPBOARD}"));
}

/// The first control character a command printed, on stdout or stderr, with what it
/// printed. Line feeds end lines: those alone are allowed.
fn leak(args: &[&str], answer: &Run) -> Option<String> {
    [("stdout", &answer.stdout), ("stderr", &answer.stderr)]
        .into_iter()
        .find_map(|(stream, text)| {
            let c = text.chars().find(|&c| c != '\n' && is_control(c))?;
            Some(format!(
                "meshctl {} printed {c:?} on {stream}:\n{}",
                args.join(" "),
                text.escape_debug()
            ))
        })
}

/// C0, DEL, C1 and the bidirectional overrides and isolates.
fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A sidecar admin port whose every page carries control sequences.
async fn hostile_admin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let json = |s: &str| serde_json::to_string(s).unwrap();
    let ready = format!(
        r#"{{"ready":false,"reason":{},"registry_connected":true,"version":{}}}"#,
        json(&format!("{CLEAR}{FAKE_OK}")),
        json(CLIPBOARD),
    );
    let endpoints = format!(
        r#"[{{"service":"evil","source":{},"last_error":{},
            "endpoints":[{{"address":{},"instance":{},"state":"ready","weight":1,
                           "ewma_ms":1.0,"tries":0,"success_rate":1.0,"in_flight":0,
                           "reason":{},"ejected_by":{}}}],
            "refused":[{{"address":{},"reason":{}}}]}}]"#,
        json(C1),
        json(BIDI),
        json(CLEAR),
        json(FAKE_OK),
        json(CLIPBOARD),
        json(CLEAR),
        json(BIDI),
        json(CLIPBOARD),
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (ready, endpoints) = (ready.clone(), endpoints.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match path {
                    "/ready" => ("503 Service Unavailable", ready),
                    "/debug/endpoints" => ("200 OK", endpoints),
                    "/metrics" => ("200 OK", format!("# {CLEAR}\n")),
                    _ => ("404 Not Found", String::new()),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}
