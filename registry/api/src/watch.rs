//! Long-poll watch of one service: yields its full endpoint set each time it changes.

use std::time::Duration;

use crate::types::ServiceListing;
use crate::{Backoff, Client, ClientError};

/// How long each blocking query may wait on the server.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Follows one service through blocking queries on its per-service index.
///
/// [`Watch::next`] returns the first listing at once, then waits for the next change.
/// Transport errors are returned (so callers can report the registry as unreachable and
/// keep their last known endpoints); the call after an error first sleeps a capped,
/// jittered backoff.
pub struct Watch {
    client: Client,
    service: String,
    wait: Duration,
    /// Index of the last listing returned; 0 before the first.
    index: u64,
    backoff: Backoff,
    failing: bool,
}

// === impl Watch ===

impl Watch {
    fn new(client: Client, service: &str) -> Self {
        Watch {
            client,
            service: service.to_owned(),
            wait: DEFAULT_WAIT,
            index: 0,
            backoff: Backoff::default(),
            failing: false,
        }
    }

    /// Sets how long each blocking query waits on the server (default 30 s).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the backoff used after errors (default 100 ms doubling to 10 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The next full listing of the service: the current one on the first call, then the
    /// first one whose index differs from the last returned.
    pub async fn next(&mut self) -> Result<ServiceListing, ClientError> {
        loop {
            if self.failing {
                tokio::time::sleep(self.backoff.next_delay()).await;
            }
            let listing = match self
                .client
                .service_blocking(&self.service, self.index, self.wait)
                .await
            {
                Ok(listing) => listing,
                Err(e) => {
                    self.failing = true;
                    return Err(e);
                }
            };
            self.failing = false;
            self.backoff.reset();
            // An index that went backwards means the registry restarted with less state:
            // that is a change too, and the new index is the one to block on.
            if self.index == 0 || listing.index != self.index {
                self.index = listing.index;
                return Ok(listing);
            }
        }
    }
}

// === impl Client ===

// Here rather than in `client.rs`, so the client does not depend on the loop built on it.
impl Client {
    /// A long-poll watch of one service: see [`Watch`].
    pub fn watch(&self, service: &str) -> Watch {
        Watch::new(self.clone(), service)
    }
}
