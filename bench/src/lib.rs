//! Benchmark tools: a backend that answers "ok" (and gRPC calls with one message), an
//! open-loop load generator, a sequential latency probe, a registry loader (registrations,
//! heartbeats, lookups, watchers) and a probe of how soon a sidecar drops a deregistered
//! endpoint. Each command prints one JSON line.

#![forbid(unsafe_code)]

pub mod backend;
pub mod conn;
pub mod load;
pub mod registry;
pub mod sidecar;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Benchmark tools for the mesh.
#[derive(Parser, Debug)]
pub struct Command {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Serve "ok" to every request, HTTP/1.1 and h2c; gRPC calls get one message and status 0.
    Backend {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Sequential requests on one connection: the cost of a hop without queueing.
    Seq {
        /// Address to send to.
        #[arg(long)]
        target: SocketAddr,
        /// `Host` header (the service name, for the mesh proxy).
        #[arg(long, default_value = "bench")]
        host: String,
        /// Requests to send (after `warmup` unrecorded ones).
        #[arg(long, default_value_t = 5000)]
        requests: u64,
        /// Unrecorded requests sent first.
        #[arg(long, default_value_t = 500)]
        warmup: u64,
    },
    /// Open-loop load at a fixed rate; latency counts from each request's intended send time.
    Load {
        /// Address to send to.
        #[arg(long)]
        target: SocketAddr,
        /// `Host` header.
        #[arg(long, default_value = "bench")]
        host: String,
        /// Requests per second.
        #[arg(long)]
        rate: u64,
        /// How long to send.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        duration: Duration,
        /// HTTP/1.1 connections kept open; each carries one request at a time.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Register `count` instances over HTTP, spread over services of `per_service` each.
    Register {
        /// Registry address.
        #[arg(long)]
        registry: SocketAddr,
        /// First instance number (to grow a catalog in steps).
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Instances to register.
        #[arg(long)]
        count: u64,
        /// Instances per service.
        #[arg(long, default_value_t = 100)]
        per_service: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Time from a deregistration to each blocking watcher's answer.
    Watch {
        /// Registry address: the watchers' (and the writes', without `write_registry`).
        #[arg(long)]
        registry: SocketAddr,
        /// Another replica of the same catalog to send the registrations and
        /// deregistrations to, so the time includes the way from one replica to the other.
        #[arg(long)]
        write_registry: Option<SocketAddr>,
        /// Blocking watchers, each on its own connection.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Deregistrations to time.
        #[arg(long, default_value_t = 200)]
        trials: usize,
    },
    /// Heartbeats at a fixed rate (open loop) to the instances `register` created, cycling
    /// over `i-0` to `i-{instances - 1}`; latency counts from each intended send time.
    Heartbeat {
        /// Registry address.
        #[arg(long)]
        registry: SocketAddr,
        /// Heartbeats per second.
        #[arg(long)]
        rate: u64,
        /// How long to send.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        duration: Duration,
        /// Registered instances to cycle over.
        #[arg(long)]
        instances: u64,
        /// Instances per service, as given to `register`.
        #[arg(long, default_value_t = 100)]
        per_service: u64,
        /// HTTP/1.1 connections kept open; each carries one request at a time.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Sequential lookups (`GET /v1/services/svc-N`, N random) on one connection.
    Read {
        /// Registry address.
        #[arg(long)]
        registry: SocketAddr,
        /// Lookups to time (after `warmup` unrecorded ones).
        #[arg(long, default_value_t = 2000)]
        requests: u64,
        /// Services to pick from: `svc-0` to `svc-{services - 1}`.
        #[arg(long, default_value_t = 100)]
        services: u64,
        /// Unrecorded lookups sent first.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
    },
    /// Time from a deregistration to a sidecar no longer listing the endpoint (its admin
    /// `/debug/endpoints`), over repeated registrations of a probe instance.
    SidecarDereg {
        /// Registry address (the one the proxy watches).
        #[arg(long)]
        registry: SocketAddr,
        /// The proxy's outbound address, to make it watch the service.
        #[arg(long)]
        proxy: SocketAddr,
        /// The proxy's admin address.
        #[arg(long)]
        admin: SocketAddr,
        /// Service to add the probe instance to.
        #[arg(long, default_value = "bench")]
        service: String,
        /// The probe's address: none of the service's other endpoints may have it. The
        /// proxy is sent no request while the probe is listed, so nothing needs to listen.
        #[arg(long, default_value = "127.0.0.1:9")]
        address: String,
        /// Deregistrations to time.
        #[arg(long, default_value_t = 50)]
        trials: usize,
    },
}

pub async fn run(cmd: Command) -> anyhow::Result<()> {
    let out = match cmd.action {
        Action::Backend { listen } => return backend::serve(listen).await,
        Action::Seq {
            target,
            host,
            requests,
            warmup,
        } => load::sequential(target, &host, requests, warmup).await?,
        Action::Load {
            target,
            host,
            rate,
            duration,
            connections,
        } => load::open_loop(target, &host, rate, duration, connections).await?,
        Action::Register {
            registry,
            start,
            count,
            per_service,
            concurrency,
        } => registry::register(registry, start, count, per_service, concurrency).await?,
        Action::Watch {
            registry,
            write_registry,
            watchers,
            trials,
        } => {
            let writes = write_registry.unwrap_or(registry);
            registry::watch_latency(registry, writes, watchers, trials).await?
        }
        Action::Heartbeat {
            registry,
            rate,
            duration,
            instances,
            per_service,
            connections,
        } => {
            registry::heartbeat(
                registry,
                rate,
                duration,
                instances,
                per_service,
                connections,
            )
            .await?
        }
        Action::Read {
            registry,
            requests,
            services,
            warmup,
        } => registry::read(registry, requests, services, warmup).await?,
        Action::SidecarDereg {
            registry,
            proxy,
            admin,
            service,
            address,
            trials,
        } => sidecar::dereg_latency(registry, proxy, admin, &service, &address, trials).await?,
    };
    println!("{out}");
    Ok(())
}

/// Percentiles of a histogram recorded in nanoseconds, as microseconds.
pub fn percentiles_us(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": h.max() as f64 / 1000.0,
    })
}

/// A histogram of nanoseconds from 100 ns to 60 s, 3 significant digits.
pub fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(100, 60_000_000_000, 3).expect("valid bounds")
}
