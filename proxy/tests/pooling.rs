//! Connection reuse to a next hop: sequential HTTP/1.1 calls share one connection,
//! HTTP/2 calls multiplex on one, and a connection the peer closed is replaced without
//! failing the call.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_proxy::body;
use mesh_proxy::forward::{Clients, Wire};
use mesh_proxy::pool::Pool;
use tokio::net::TcpListener;

/// A peer that answers "ok" (with `Connection: close` when `close` is set) and counts
/// the connections it accepted.
async fn peer(close: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    if close {
                        response
                            .headers_mut()
                            .insert("connection", "close".parse().unwrap());
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, accepted)
}

/// Clients sending with the engine the suite runs on.
fn clients() -> Clients {
    Clients::new(Duration::from_secs(1), None, Default::default())
        .with_h1_engine(common::h1_engine())
}

async fn call(clients: &Clients, pool: &Pool, wire: Wire) -> (StatusCode, Bytes) {
    let request = Request::get("/").body(body::empty()).unwrap();
    let response = clients.send(request, pool, wire, None).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn sequential_http1_calls_share_one_connection() {
    let (address, accepted) = peer(false).await;
    let clients = clients();
    let pool = Pool::new(address);
    for _ in 0..20 {
        assert_eq!(
            call(&clients, &pool, Wire::Http1).await,
            (StatusCode::OK, Bytes::from_static(b"ok"))
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.h1_len(false), 1);
}

#[tokio::test]
async fn concurrent_http1_calls_open_one_connection_each_and_keep_them() {
    let (address, accepted) = peer(false).await;
    let clients = clients();
    let pool = Arc::new(Pool::new(address));
    for _ in 0..3 {
        for (status, _) in concurrently(4, &clients, &pool, Wire::Http1).await {
            assert_eq!(status, StatusCode::OK);
        }
    }
    // Four at once need four connections; later rounds reuse them.
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    assert_eq!(pool.h1_len(false), 4);
}

#[tokio::test]
async fn http2_calls_multiplex_on_one_connection() {
    let (address, accepted) = peer(false).await;
    let clients = clients();
    let pool = Arc::new(Pool::new(address));
    for (status, text) in concurrently(10, &clients, &pool, Wire::Http2).await {
        assert_eq!((status, text), (StatusCode::OK, Bytes::from_static(b"ok")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_peer_closed_is_replaced_without_failing_the_call() {
    let (address, accepted) = peer(true).await;
    let clients = clients();
    let pool = Pool::new(address);
    for _ in 0..10 {
        assert_eq!(call(&clients, &pool, Wire::Http1).await.0, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn an_address_nobody_listens_on_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let clients = clients();
    let pool = Pool::new(address.clone());
    let request = Request::get("/").body(body::empty()).unwrap();
    let e = clients
        .send(request, &pool, Wire::Http1, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, mesh_proxy::error::ErrorKind::ConnectFailed);
    assert!(e.message.contains(&address), "{}", e.message);
}

/// `n` calls at once, each on its own task.
async fn concurrently(
    n: usize,
    clients: &Clients,
    pool: &Arc<Pool>,
    wire: Wire,
) -> Vec<(StatusCode, Bytes)> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (clients, pool) = (clients.clone(), pool.clone());
        calls.spawn(async move { call(&clients, &pool, wire).await });
    }
    calls.join_all().await
}
