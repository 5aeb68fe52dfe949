//! The registry bounds what clients can hold: connections (a cap, and timeouts for those
//! that send nothing, over HTTP/1.1 and HTTP/2 alike) and parked blocking queries per
//! client. Over real sockets, with short timeouts so the tests wait little.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{PATIENCE, Registry, RegistryExt, eventually};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_registry::Config;
use mesh_registry_api::Registration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a client that opens a connection and never sends anything sees: how many bytes
/// arrived before the registry closed it. Panics if it is still open after [`PATIENCE`].
async fn closed_by_the_registry(mut stream: TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    match read {
        Ok(_) => received,
        Err(_) => panic!("the registry kept the connection open for {PATIENCE:?}"),
    }
}

fn short_timeouts() -> Config {
    Config {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let r = Registry::start_with(short_timeouts()).await;
    let silent = TcpStream::connect(r.addr).await.unwrap();
    assert!(closed_by_the_registry(silent).await.is_empty());
    // Half a request head is no better.
    let mut half = TcpStream::connect(r.addr).await.unwrap();
    half.write_all(b"GET /v1/services HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    closed_by_the_registry(half).await;
}

/// The client connection preface of HTTP/2 and an empty SETTINGS frame: all a client
/// needs to send to be an HTTP/2 connection with no stream.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const GOAWAY: u8 = 0x7;

/// The types of the HTTP/2 frames in `bytes`.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn an_h2c_connection_that_opens_no_stream_is_sent_goaway_and_closed() {
    let r = Registry::start_with(short_timeouts()).await;
    let mut h2 = TcpStream::connect(r.addr).await.unwrap();
    h2.write_all(H2_PREFACE).await.unwrap();
    let frames = frame_types(&closed_by_the_registry(h2).await);
    assert!(frames.contains(&GOAWAY), "frames received: {frames:?}");
}

#[tokio::test]
async fn an_http2_connection_idle_after_its_requests_is_closed_after_the_idle_timeout() {
    let r = Registry::start_with(Config {
        idle_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let stream = TcpStream::connect(r.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get(r.url_for("/healthz"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer.into_body().collect().await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, connection).await;
    assert!(
        ended.is_ok(),
        "the idle connection was kept for {PATIENCE:?}"
    );
}

#[tokio::test]
async fn idle_connections_past_the_cap_wait_and_a_registration_is_served_once_they_time_out() {
    let r = Registry::start_with(Config {
        max_connections: 4,
        header_read_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(r.addr).await.unwrap());
    }
    // Queued behind the idle ones, served when they have timed out.
    let registered = tokio::time::timeout(PATIENCE, async {
        loop {
            match r
                .client
                .register("web", "a", &Registration::new("10.0.0.1:80"))
                .await
            {
                Ok(instance) => return instance,
                Err(e) => eprintln!("registration not served yet: {e}"),
            }
        }
    })
    .await;
    assert!(registered.is_ok(), "no registration within {PATIENCE:?}");
    for stream in idle {
        assert!(closed_by_the_registry(stream).await.is_empty());
    }
}

#[tokio::test]
async fn a_connection_past_the_cap_waits_for_a_slot_rather_than_being_refused() {
    let r = Registry::start_with(Config {
        max_connections: 2,
        ..Config::default()
    })
    .await;
    let held = [
        TcpStream::connect(r.addr).await.unwrap(),
        TcpStream::connect(r.addr).await.unwrap(),
    ];
    let registration = tokio::spawn({
        let client = r.client.clone();
        async move {
            client
                .register("web", "a", &Registration::new("10.0.0.1:80"))
                .await
        }
    });
    drop(held);
    let served = tokio::time::timeout(PATIENCE, registration).await;
    assert!(matches!(served, Ok(Ok(Ok(_)))), "{served:?}");
}

#[tokio::test]
async fn the_blocking_queries_of_one_client_past_its_cap_are_answered_429_at_once() {
    let r = Registry::start_with(Config {
        max_parked_per_client: 2,
        ..Config::default()
    })
    .await;
    let index = r.client.service("web").await.unwrap().index;
    let blocking = format!("/v1/services/web?index={index}&wait=5m");
    let parked: Vec<_> = (0..2)
        .map(|_| {
            let url = r.url_for(&blocking);
            tokio::spawn(async move { common::request(Method::GET, &url, &[], Bytes::new()).await })
        })
        .collect();
    r.until_watchers(2.0).await;

    for path in [blocking.as_str(), "/v1/services?index=999999&wait=5m"] {
        let refused = tokio::time::timeout(PATIENCE, r.raw(Method::GET, path, &[], Bytes::new()))
            .await
            .unwrap_or_else(|_| panic!("{path} was parked past the cap"));
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(refused.error_code(), "too_many_blocking_queries");
        assert!(refused.headers.contains_key("retry-after"));
        let message = refused.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("127.0.0.1") && message.contains('2'),
            "{message}"
        );
    }
    // Queries that do not block are not counted, nor refused.
    let plain = r
        .raw(Method::GET, "/v1/services/web", &[], Bytes::new())
        .await;
    assert_eq!(plain.status, StatusCode::OK);

    // A client that goes away frees its place.
    parked[0].abort();
    r.until_watchers(1.0).await;
    let again = tokio::spawn({
        let url = r.url_for(&blocking);
        async move { common::request(Method::GET, &url, &[], Bytes::new()).await }
    });
    r.until_watchers(2.0).await;
    // A change answers every parked query.
    r.client
        .register("web", "a", &Registration::new("10.0.0.1:80"))
        .await
        .unwrap();
    let woken = tokio::time::timeout(PATIENCE, again)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(woken.status, StatusCode::OK);
    let woken = tokio::time::timeout(PATIENCE, parked.into_iter().nth(1).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(woken.status, StatusCode::OK);
    eventually(PATIENCE, "no query parked", async || {
        r.metric("mesh_registry_watchers").await == Some(0.0)
    })
    .await;
}
