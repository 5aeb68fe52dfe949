//! A serving service's `limits`, as its own sidecars apply them: token buckets, one
//! overall and one per caller identity.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mesh_registry_api::policy::{Bucket, Limits};
use tokio::time::Instant;

/// Callers with a bucket of their own at once. Past it, full buckets are dropped first
/// (a new one starts full, so nothing is lost), then the longest unused: an unbounded
/// number of identities must not hold unbounded memory.
pub const MAX_CALLERS: usize = 10_000;

/// The bucket key of callers that proved no identity: they share one.
const UNAUTHENTICATED: &str = "";

/// A `limits` document with its buckets.
pub struct Limiter {
    pub document: Limits,
    /// std Mutexes: held for a little arithmetic, never across an await.
    overall: Option<Mutex<TokenBucket>>,
    per_caller: Option<(Bucket, Mutex<HashMap<String, TokenBucket>>)>,
}

/// Too many calls: the caller may try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    /// The per-caller bucket refused, rather than the overall one.
    pub per_caller: bool,
}

/// `rate` tokens a second, up to `burst`; one per call.
#[derive(Clone, Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    stamp: Instant,
}

// === impl Limiter ===

impl Limiter {
    pub fn new(document: Limits) -> Self {
        let now = Instant::now();
        let overall = document
            .overall()
            .map(|b| Mutex::new(TokenBucket::full(b, now)));
        let per_caller = document.per_caller.map(|b| (b, Mutex::new(HashMap::new())));
        Limiter {
            document,
            overall,
            per_caller,
        }
    }

    /// Takes a token for a call from `caller` (its proven service; none shares one
    /// bucket), or says how long to wait.
    pub fn admit(&self, caller: Option<&str>) -> Result<(), Limited> {
        let now = Instant::now();
        let limited = |wait: Duration, per_caller| Limited {
            retry_after: wait,
            per_caller,
        };
        let key = caller.unwrap_or(UNAUTHENTICATED);
        if let Some((bucket, callers)) = &self.per_caller {
            let mut callers = callers.lock().expect("callers lock");
            if !callers.contains_key(key) && callers.len() >= MAX_CALLERS {
                make_room(&mut callers, now);
            }
            let mine = callers
                .entry(key.to_owned())
                .or_insert_with(|| TokenBucket::full(*bucket, now));
            mine.take(now).map_err(|wait| limited(wait, true))?;
        }
        if let Some(overall) = &self.overall
            && let Err(wait) = overall.lock().expect("bucket lock").take(now)
        {
            // The call is refused: the caller's token goes back.
            if let Some((_, callers)) = &self.per_caller
                && let Some(mine) = callers.lock().expect("callers lock").get_mut(key)
            {
                mine.tokens = (mine.tokens + 1.0).min(mine.burst);
            }
            return Err(limited(wait, false));
        }
        Ok(())
    }

    /// Callers with a bucket now.
    pub fn callers(&self) -> usize {
        self.per_caller
            .as_ref()
            .map_or(0, |(_, c)| c.lock().expect("callers lock").len())
    }
}

/// Drops the full buckets, or if none is, the longest unused one.
fn make_room(callers: &mut HashMap<String, TokenBucket>, now: Instant) {
    callers.retain(|_, b| !b.is_full(now));
    if callers.len() >= MAX_CALLERS {
        let oldest = callers
            .iter()
            .min_by_key(|(_, b)| b.stamp)
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            callers.remove(&oldest);
        }
    }
}

// === impl Limited ===

impl Limited {
    /// `Retry-After`: whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

// === impl TokenBucket ===

impl TokenBucket {
    fn full(bucket: Bucket, now: Instant) -> Self {
        let burst = f64::from(bucket.burst());
        TokenBucket {
            rate: bucket.rps,
            burst,
            tokens: burst,
            stamp: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.stamp = now;
    }

    /// One token, or how long until there is one.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(json: &str) -> Limiter {
        let doc = mesh_registry_api::policy::Document::parse(
            mesh_registry_api::policy::PolicyKind::Limits,
            json.as_bytes(),
        );
        match doc.unwrap() {
            mesh_registry_api::policy::Document::Limits(l) => Limiter::new(l),
            _ => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let l = limiter(r#"{"rps": 2, "burst": 3}"#);
        for _ in 0..3 {
            assert!(l.admit(None).is_ok());
        }
        let refused = l.admit(Some("web")).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(!refused.per_caller);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.admit(None).is_ok());
        assert!(l.admit(None).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn each_caller_has_its_own_bucket_and_anonymous_callers_share_one() {
        let l = limiter(r#"{"per_caller": {"rps": 1, "burst": 2}}"#);
        for caller in [Some("web"), Some("web"), Some("batch"), None, None] {
            assert!(l.admit(caller).is_ok(), "{caller:?}");
        }
        assert!(l.admit(Some("web")).unwrap_err().per_caller);
        assert!(l.admit(None).is_err());
        assert!(l.admit(Some("batch")).is_ok());
        assert_eq!(l.callers(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_the_overall_limit_refuses_costs_the_caller_nothing() {
        let l = limiter(r#"{"rps": 1, "burst": 1, "per_caller": {"rps": 1, "burst": 2}}"#);
        assert!(l.admit(Some("web")).is_ok());
        assert!(!l.admit(Some("web")).unwrap_err().per_caller);
        tokio::time::advance(Duration::from_secs(1)).await;
        // web spent one of its two tokens: the refused call gave its token back.
        assert!(l.admit(Some("web")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_map_is_bounded() {
        let l = limiter(r#"{"per_caller": {"rps": 1, "burst": 1}}"#);
        for i in 0..MAX_CALLERS + 10 {
            assert!(l.admit(Some(&format!("c{i}"))).is_ok());
        }
        assert_eq!(l.callers(), MAX_CALLERS);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Every bucket is full again: all are dropped to make room for the next caller.
        assert!(l.admit(Some("new")).is_ok());
        assert_eq!(l.callers(), 1);
    }
}
