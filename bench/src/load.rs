//! Load generation: sequential requests, and open-loop load at a fixed rate.
//!
//! The open-loop generator paces with a dedicated OS thread (`thread::sleep` has tens of
//! microseconds of precision; tokio's timer has a millisecond) and hands each request's
//! *intended* send time to the connection tasks. Latency is measured from that time, so a
//! stall that delays later requests is counted against them instead of being hidden
//! (coordinated omission). [`paced`] is that machinery for any request; [`open_loop`]
//! sends `GET /` with it, and the registry's heartbeat load uses it too.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Mutex, mpsc};

use crate::conn::Conn;
use crate::{histogram, percentiles_us};

pub async fn sequential(
    target: SocketAddr,
    host: &str,
    requests: u64,
    warmup: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut conn = Conn::open(target).await?;
    let mut hist = histogram();
    let mut errors = 0u64;
    for i in 0..warmup + requests {
        let t0 = Instant::now();
        let ok = matches!(
            conn.send(http::Method::GET, host, "/", None).await,
            Ok((status, _, _)) if status.is_success()
        );
        let elapsed = t0.elapsed();
        if i < warmup {
            continue;
        }
        if ok {
            hist.saturating_record(elapsed.as_nanos() as u64);
        } else {
            errors += 1;
        }
    }
    Ok(json!({ "latency_us": percentiles_us(&hist), "errors": errors }))
}

/// `GET /` at a fixed rate.
pub async fn open_loop(
    target: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<serde_json::Value> {
    let run = paced(target, host, rate, duration, connections, |_| {
        Request::new(http::Method::GET, "/")
    })
    .await?;
    Ok(run.to_json())
}

/// One request of a paced run.
pub struct Request {
    pub method: http::Method,
    pub path: Cow<'static, str>,
    pub body: Option<Bytes>,
}

impl Request {
    pub fn new(method: http::Method, path: impl Into<Cow<'static, str>>) -> Request {
        Request {
            method,
            path: path.into(),
            body: None,
        }
    }
}

/// What a paced run measured.
pub struct Paced {
    pub rate: u64,
    /// Requests the pacer scheduled.
    pub sent: u64,
    /// From the start of pacing until every worker finished.
    pub elapsed: Duration,
    /// Latency of the successful (2xx) requests from their intended send time, in ns.
    pub latency: Histogram<u64>,
    /// Non-2xx answers and transport errors.
    pub errors: u64,
    /// Workers still busy 30 s after the run should have ended.
    pub unfinished_workers: usize,
}

impl Paced {
    /// Successful requests per second.
    pub fn achieved_rate(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "rate": self.rate,
            "sent": self.sent,
            "achieved_rate": self.achieved_rate(),
            "errors": self.errors,
            "unfinished_workers": self.unfinished_workers,
            "latency_us": percentiles_us(&self.latency),
        })
    }
}

/// Sends `rate` requests per second for `duration` over `connections` keep-alive HTTP/1.1
/// connections to `target`, each carrying one request at a time; `request(i)` makes the
/// i-th request (counting from 0). Latency counts from each request's intended send time.
pub async fn paced<F>(
    target: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
    connections: usize,
    request: F,
) -> anyhow::Result<Paced>
where
    F: Fn(u64) -> Request + Send + Sync + 'static,
{
    anyhow::ensure!(
        rate > 0 && connections > 0,
        "rate and connections must be > 0"
    );
    let total = (rate as f64 * duration.as_secs_f64()) as u64;

    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target).await?);
    }

    // Each entry is a request's intended send time and its number.
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, u64)>();
    // A tokio Mutex around the receiver makes it a fair work queue: the task holding the
    // lock waits for the next send time, the others wait their turn for the lock.
    let rx = Arc::new(Mutex::new(rx));
    let request = Arc::new(request);
    let mut workers = Vec::with_capacity(connections);
    for mut conn in conns {
        let rx = rx.clone();
        let host = host.to_owned();
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            loop {
                let (intended, i) = match rx.lock().await.recv().await {
                    Some(next) => next,
                    None => break,
                };
                let req = request(i);
                match conn.send(req.method, &host, &req.path, req.body).await {
                    Ok((status, _, _)) if status.is_success() => {
                        hist.saturating_record(intended.elapsed().as_nanos() as u64)
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        if let Ok(c) = Conn::open(conn.target()).await {
                            conn = c;
                        }
                    }
                }
            }
            (hist, errors)
        }));
    }

    let started = Instant::now();
    let pacer = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(5);
        for i in 0..total {
            let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((at, i)).is_err() {
                break;
            }
        }
    });

    let mut latency = histogram();
    let mut errors = 0u64;
    let mut unfinished_workers = 0usize;
    let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(30);
    for w in workers {
        match tokio::time::timeout_at(deadline, w).await {
            Ok(Ok((h, e))) => {
                latency.add(&h)?;
                errors += e;
            }
            _ => unfinished_workers += 1,
        }
    }
    let elapsed = started.elapsed();
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer panicked"))?;
    Ok(Paced {
        rate,
        sent: total,
        elapsed,
        latency,
        errors,
        unfinished_workers,
    })
}
