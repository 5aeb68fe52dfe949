//! Deadlines of one request: from flags, from `mesh-timeout` / `mesh-per-try-timeout`
//! headers, and from gRPC's `grpc-timeout`, whichever is shortest.
//!
//! Header values are the caller's input: one that does not parse is refused (400 naming
//! the header), and any duration is clamped to [`MAX_DEADLINE`], so no value can
//! overflow the clock.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

pub const MESH_TIMEOUT: HeaderName = HeaderName::from_static("mesh-timeout");
pub const MESH_PER_TRY_TIMEOUT: HeaderName = HeaderName::from_static("mesh-per-try-timeout");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The longest deadline honoured; longer ones (gRPC allows almost 11,416 years) are cut
/// to it. A deadline covers the wait for the answer's headers, never a stream's life.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A deadline header that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{header}: {value:?} is not a duration like {example}")]
pub struct BadDeadline {
    pub header: &'static str,
    pub value: String,
    example: &'static str,
}

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
    ) -> Result<Self, BadDeadline> {
        let header = |name: &HeaderName, example, parse: fn(&str) -> Option<Duration>| {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            value
                .to_str()
                .ok()
                .and_then(|v| parse(v.trim()))
                .map(Some)
                .ok_or_else(|| BadDeadline {
                    header: name_of(name),
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    example,
                })
        };
        // Most requests carry none of them: one pass over the names saves three hashed
        // lookups.
        let names = [MESH_TIMEOUT, GRPC_TIMEOUT, MESH_PER_TRY_TIMEOUT];
        if !headers.keys().any(|n| names.contains(n)) {
            return Ok(Deadlines {
                total: timeout.map(|t| now + t.min(MAX_DEADLINE)),
                per_try: per_try.map(|d| d.min(MAX_DEADLINE)),
            });
        }
        let humantime = |v: &str| humantime::parse_duration(v).ok();
        let total = [
            timeout,
            header(&MESH_TIMEOUT, "\"500ms\" or \"2s\"", humantime)?,
            header(
                &GRPC_TIMEOUT,
                "\"100m\" (up to 8 digits and a unit of H M S m u n)",
                parse_grpc_timeout,
            )?,
        ]
        .into_iter()
        .flatten()
        .min();
        let per_try = [
            per_try,
            header(&MESH_PER_TRY_TIMEOUT, "\"100ms\"", humantime)?,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.min(MAX_DEADLINE));
        Ok(Deadlines {
            total: total.map(|t| now + t.min(MAX_DEADLINE)),
            per_try,
        })
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

/// The name of a deadline header, for the error naming it.
fn name_of(name: &HeaderName) -> &'static str {
    if name == MESH_TIMEOUT {
        "mesh-timeout"
    } else if name == GRPC_TIMEOUT {
        "grpc-timeout"
    } else {
        "mesh-per-try-timeout"
    }
}

/// Parses `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
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
        assert_eq!(
            parse_grpc_timeout("\u{6cc}"),
            None,
            "not ASCII (found by fuzzing)"
        );
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
        )
        .unwrap();
        assert_eq!(d.total, Some(now + Duration::from_millis(100)));
        assert_eq!(d.per_try, Some(Duration::from_millis(30)));
        assert_eq!(
            d.try_deadline(now + Duration::from_millis(90)),
            Some(now + Duration::from_millis(100))
        );
        let none = Deadlines::of(&HeaderMap::new(), None, None, now).unwrap();
        assert_eq!((none.total, none.per_try), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_values_are_clamped_and_garbage_is_refused() {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert(MESH_TIMEOUT, "10000000000000000000s".parse().unwrap());
        h.insert(GRPC_TIMEOUT, "99999999H".parse().unwrap());
        h.insert(MESH_PER_TRY_TIMEOUT, "100000000d".parse().unwrap());
        let d = Deadlines::of(&h, None, None, now).unwrap();
        assert_eq!(d.total, Some(now + MAX_DEADLINE));
        assert_eq!(d.per_try, Some(MAX_DEADLINE));
        assert_eq!(d.try_deadline(now), Some(now + MAX_DEADLINE));
        for (name, value) in [
            (GRPC_TIMEOUT, "soon"),
            (MESH_PER_TRY_TIMEOUT, "-1s"),
            (MESH_TIMEOUT, "99999999999999999999999s"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), value.parse().unwrap());
            assert_eq!(
                Deadlines::of(&h, None, None, now).unwrap_err().header,
                name.as_str()
            );
        }
    }
}
