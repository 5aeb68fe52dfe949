//! Durations, ages and latencies as people read them: `350µs`, `1.2s`, `3m 4s`, `2h 5m`.

use std::time::{Duration, SystemTime};

/// A duration in two units at most, the second left out when zero: `850ms`, `4.2s`,
/// `3m 4s`, `5h 2m`, `3d 4h`, `1d`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| match small {
        0 => format!("{big}{big_unit}"),
        _ => format!("{big}{big_unit} {small}{small_unit}"),
    };
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => two(secs / 60, "m", secs % 60, "s"),
        3600..86_400 => two(secs / 3600, "h", secs % 3600 / 60, "m"),
        _ => two(secs / 86_400, "d", secs % 86_400 / 3600, "h"),
    }
}

/// How long ago an RFC 3339 time was, at `now`: `1.2s ago`; the text itself when it
/// does not parse, and `just now` for times ahead of `now` (clocks a little apart).
pub fn ago(rfc3339: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339_weak(rfc3339) {
        Ok(then) => match now.duration_since(then) {
            Ok(age) => format!("{} ago", duration(age)),
            Err(_) => "just now".to_owned(),
        },
        Err(_) => rfc3339.to_owned(),
    }
}

/// A latency in seconds, with three significant digits: `412µs`, `1.25ms`, `2.00s`.
pub fn latency(seconds: f64) -> String {
    let (value, unit) = if seconds < 1e-3 {
        (seconds * 1e6, "µs")
    } else if seconds < 1.0 {
        (seconds * 1e3, "ms")
    } else {
        (seconds, "s")
    };
    let decimals = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.decimals$}{unit}")
}

/// A share as a percentage with one decimal: `99.5%`.
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Seconds since the Unix epoch, as a float (metrics carry timestamps this way).
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_two_units() {
        let cases = [
            (Duration::from_millis(850), "850ms"),
            (Duration::from_millis(4_240), "4.2s"),
            (Duration::from_secs(184), "3m 4s"),
            (Duration::from_secs(5 * 3600 + 120), "5h 2m"),
            (Duration::from_secs(3 * 86_400 + 4 * 3600), "3d 4h"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(3600), "1h"),
        ];
        for (d, text) in cases {
            assert_eq!(duration(d), text);
        }
    }

    #[test]
    fn ages_read_rfc3339() {
        let then = humantime::parse_rfc3339("2024-01-01T00:00:00.000Z").unwrap();
        let now = then + Duration::from_millis(1_500);
        assert_eq!(ago("2024-01-01T00:00:00.000Z", now), "1.5s ago");
        assert_eq!(ago("2024-01-01T00:00:02.000Z", now), "just now");
        assert_eq!(ago("yesterday", now), "yesterday");
    }

    #[test]
    fn latencies_have_three_digits() {
        assert_eq!(latency(0.000_412), "412µs");
        assert_eq!(latency(0.001_25), "1.25ms");
        assert_eq!(latency(0.025), "25.0ms");
        assert_eq!(latency(2.0), "2.00s");
    }
}
