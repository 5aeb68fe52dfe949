//! Deadlines of one request: from flags, from `mesh-timeout` / `mesh-per-try-timeout`
//! headers, and from gRPC's `grpc-timeout`, whichever is shortest.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

pub const MESH_TIMEOUT: http::HeaderName = http::HeaderName::from_static("mesh-timeout");
pub const MESH_PER_TRY_TIMEOUT: http::HeaderName =
    http::HeaderName::from_static("mesh-per-try-timeout");
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// When the whole request must be answered, and how long each try may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub total: Option<Instant>,
    pub per_try: Option<Duration>,
}

impl Deadlines {
    /// The request's deadlines: the flags' values, shortened by its headers.
    pub fn of(
        headers: &HeaderMap,
        timeout: Option<Duration>,
        per_try: Option<Duration>,
        now: Instant,
    ) -> Self {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .and_then(|v| humantime::parse_duration(v.trim()).ok())
        };
        let grpc = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let total = [timeout, header(MESH_TIMEOUT), grpc]
            .into_iter()
            .flatten()
            .min();
        let per_try = [per_try, header(MESH_PER_TRY_TIMEOUT)]
            .into_iter()
            .flatten()
            .min();
        Deadlines {
            total: total.map(|t| now + t),
            per_try,
        }
    }

    /// Time left of the total deadline.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.total.map(|at| at.saturating_duration_since(now))
    }

    /// The deadline of a try starting `now`.
    pub fn try_deadline(&self, now: Instant) -> Option<Instant> {
        let per_try = self.per_try.map(|d| now + d);
        match (self.total, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Parses `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a duration as `grpc-timeout`, rounding up so the next hop never gets more
/// time than is left... and never zero, which some servers read as "no deadline".
pub fn grpc_timeout(d: Duration) -> HeaderValue {
    let micros = d.as_micros().max(1);
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else {
        format!("{}m", d.as_millis().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789m"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        let encoded = grpc_timeout(Duration::from_millis(87));
        assert_eq!(
            parse_grpc_timeout(encoded.to_str().unwrap()),
            Some(Duration::from_millis(87))
        );
        let long = grpc_timeout(Duration::from_secs(1000));
        assert_eq!(
            parse_grpc_timeout(long.to_str().unwrap()),
            Some(Duration::from_secs(1000))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_shortest_deadline_wins() {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, "100m".parse().unwrap());
        h.insert(MESH_TIMEOUT, "2s".parse().unwrap());
        h.insert(MESH_PER_TRY_TIMEOUT, "30ms".parse().unwrap());
        let d = Deadlines::of(
            &h,
            Some(Duration::from_secs(10)),
            Some(Duration::from_millis(50)),
            now,
        );
        assert_eq!(d.total, Some(now + Duration::from_millis(100)));
        assert_eq!(d.per_try, Some(Duration::from_millis(30)));
        assert_eq!(
            d.try_deadline(now + Duration::from_millis(90)),
            Some(now + Duration::from_millis(100))
        );
        let none = Deadlines::of(&HeaderMap::new(), None, None, now);
        assert_eq!((none.total, none.per_try), (None, None));
    }
}
