//! Load generation: sequential requests, and open-loop load at a fixed rate.
//!
//! The open-loop generator paces with a dedicated OS thread (`thread::sleep` has tens of
//! microseconds of precision; tokio's timer has a millisecond) and hands each request's
//! *intended* send time to the connection tasks. Latency is measured from that time, so a
//! stall that delays later requests is counted against them instead of being hidden
//! (coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub async fn open_loop(
    target: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        rate > 0 && connections > 0,
        "rate and connections must be > 0"
    );
    let total = (rate as f64 * duration.as_secs_f64()) as u64;

    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target).await?);
    }

    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    // A tokio Mutex around the receiver makes it a fair work queue: the task holding the
    // lock waits for the next send time, the others wait their turn for the lock.
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(connections);
    for mut conn in conns {
        let rx = rx.clone();
        let host = host.to_owned();
        workers.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            loop {
                let intended = match rx.lock().await.recv().await {
                    Some(t) => t,
                    None => break,
                };
                match conn.send(http::Method::GET, &host, "/", None).await {
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
            if tx.send(at).is_err() {
                break;
            }
        }
    });

    let mut hist = histogram();
    let mut errors = 0u64;
    let mut unfinished = 0usize;
    let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(30);
    for w in workers {
        match tokio::time::timeout_at(deadline, w).await {
            Ok(Ok((h, e))) => {
                hist.add(&h)?;
                errors += e;
            }
            _ => unfinished += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer panicked"))?;
    Ok(json!({
        "rate": rate,
        "sent": total,
        "achieved_rate": hist.len() as f64 / elapsed,
        "errors": errors,
        "unfinished_workers": unfinished,
        "latency_us": percentiles_us(&hist),
    }))
}
