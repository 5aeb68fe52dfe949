//! The connections to one peer address: idle HTTP/1.1 connections to reuse and one shared
//! HTTP/2 connection, each kept apart by transport (plaintext or mTLS).
//!
//! A pool lives as long as what owns it: an [`Endpoint`](crate::endpoint::Endpoint) for
//! outbound calls, the inbound listener for the local app. When discovery drops an
//! endpoint, its connections close with it. Picking a connection is a scan of a short
//! list under a lock held for no await, with no hashing and no task spawned per request.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use crate::body::BoxBody;
use crate::h1::client::Idle as Idle1;

/// An HTTP/1.1 connection unused for this long is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/1.1 connections kept per peer and transport; more are closed after their answer.
const MAX_IDLE: usize = 512;

pub struct Pool {
    address: String,
    /// `address` as a URI authority, parsed once.
    authority: Option<Authority>,
    /// HTTP/1.1 senders, `[plaintext, tls]`. A sender is put back as soon as its answer's
    /// head arrives and is handed out again once hyper reports it ready, that is when
    /// the previous answer's body has been read.
    h1: Mutex<[Vec<Idle>; 2]>,
    /// The shared HTTP/2 connection, `[plaintext, tls]`.
    h2: [Shared; 2],
    /// Idle plaintext HTTP/1.1 connections of the proxy's own engine.
    own: Idle1,
}

struct Idle {
    sender: http1::SendRequest<BoxBody>,
    since: Instant,
}

#[derive(Default)]
struct Shared {
    sender: Mutex<Option<http2::SendRequest<BoxBody>>>,
    /// Held while connecting, so concurrent calls wait for one connection instead of
    /// each opening their own.
    connecting: tokio::sync::Mutex<()>,
}

// === impl Pool ===

impl Pool {
    pub fn new(address: impl Into<String>) -> Self {
        let address = address.into();
        Pool {
            authority: address.parse().ok(),
            address,
            h1: Mutex::default(),
            h2: Default::default(),
            own: Idle1::default(),
        }
    }

    /// `host:port` this pool connects to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address as a URI authority; `None` when it is not `host:port`.
    pub fn authority(&self) -> Option<&Authority> {
        self.authority.as_ref()
    }

    /// A ready HTTP/1.1 connection, dropping closed and long-idle ones on the way.
    pub fn take_h1(&self, tls: bool) -> Option<http1::SendRequest<BoxBody>> {
        let now = Instant::now();
        let mut idle = self.h1.lock().expect("pool lock");
        let list = &mut idle[usize::from(tls)];
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let c = &list[i];
            if c.sender.is_closed() || now.saturating_duration_since(c.since) > IDLE_TIMEOUT {
                list.swap_remove(i);
            } else if c.sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection once its answer's head has arrived.
    pub fn put_h1(&self, tls: bool, sender: http1::SendRequest<BoxBody>) {
        let mut idle = self.h1.lock().expect("pool lock");
        let list = &mut idle[usize::from(tls)];
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The open HTTP/2 connection, if there is one.
    pub fn h2(&self, tls: bool) -> Option<http2::SendRequest<BoxBody>> {
        let shared = self.h2[usize::from(tls)].sender.lock().expect("pool lock");
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Held while opening the HTTP/2 connection.
    pub async fn h2_connecting(&self, tls: bool) -> tokio::sync::MutexGuard<'_, ()> {
        self.h2[usize::from(tls)].connecting.lock().await
    }

    pub fn set_h2(&self, tls: bool, sender: http2::SendRequest<BoxBody>) {
        *self.h2[usize::from(tls)].sender.lock().expect("pool lock") = Some(sender);
    }

    /// Idle plaintext HTTP/1.1 connections of the proxy's own engine.
    pub fn own(&self) -> &Idle1 {
        &self.own
    }

    /// Open HTTP/1.1 connections kept (idle or finishing an answer), for tests.
    pub fn h1_len(&self, tls: bool) -> usize {
        let own = if tls { 0 } else { self.own.len() };
        self.h1.lock().expect("pool lock")[usize::from(tls)].len() + own
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}
