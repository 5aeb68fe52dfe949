//! Start-up settings, read from flags or their environment variables.
//!
//! Each setting has a type that can only hold a valid value, so a bad flag is refused once,
//! at start-up, with a message naming it, and the serving code never re-checks.

use std::{fmt, str::FromStr, time::Duration};

use rand::Rng;
use tonic::metadata::{Ascii, MetadataValue};

/// How the service behaves; everything but the listen address.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Share of calls answered UNAVAILABLE on purpose, from 0.0 (none) to 1.0 (all).
    #[arg(long, env = "FAIL_RATE", default_value = "0.0")]
    pub fail_rate: FailRate,

    /// Delay added to every call: a duration (`20ms`) or a range (`10ms..50ms`), drawn
    /// uniformly per call.
    #[arg(long, env = "LATENCY", default_value = "0ms")]
    pub latency: Latency,

    /// Name sent back in the `x-served-by` metadata of every answer.
    #[arg(long, env = "INSTANCE_NAME", default_value_t = InstanceName::from_host())]
    pub instance_name: InstanceName,
}

/// Why a flag's value was refused; clap prefixes it with the flag's name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("expected a number from 0.0 to 1.0, got {0:?}")]
    FailRate(String),
    #[error("expected a duration like `20ms` or a range like `10ms..50ms`, got {0:?}: {1}")]
    Latency(String, String),
    #[error("the range {0:?} ends before it starts")]
    LatencyRange(String),
    #[error("expected 1 to 128 visible ASCII characters, got {0:?}")]
    InstanceName(String),
}

// === impl Config ===

impl Default for Config {
    /// No injected failures, no added latency, named after the host.
    fn default() -> Self {
        Self {
            fail_rate: FailRate(0.0),
            latency: Latency::ZERO,
            instance_name: InstanceName::from_host(),
        }
    }
}

/// Share of calls to fail on purpose, always within `0.0..=1.0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailRate(f64);

// === impl FailRate ===

impl FailRate {
    pub fn new(rate: f64) -> Result<Self, ConfigError> {
        if (0.0..=1.0).contains(&rate) {
            Ok(Self(rate))
        } else {
            Err(ConfigError::FailRate(rate.to_string()))
        }
    }

    /// Draws whether this call is one of those that fail.
    pub(crate) fn strikes(self) -> bool {
        self.0 > 0.0 && rand::rng().random_bool(self.0)
    }
}

impl FromStr for FailRate {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // NaN parses as a float but is refused by `new`, like any rate outside 0..=1.
        s.trim()
            .parse()
            .ok()
            .and_then(|rate| Self::new(rate).ok())
            .ok_or_else(|| ConfigError::FailRate(s.to_owned()))
    }
}

impl fmt::Display for FailRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Delay added to each call: fixed when `min == max`, else uniform over `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    min: Duration,
    max: Duration,
}

// === impl Latency ===

impl Latency {
    pub const ZERO: Self = Self::fixed(Duration::ZERO);

    pub const fn fixed(delay: Duration) -> Self {
        Self {
            min: delay,
            max: delay,
        }
    }

    pub fn range(min: Duration, max: Duration) -> Result<Self, ConfigError> {
        if min <= max {
            Ok(Self { min, max })
        } else {
            let text = format!("{}..{}", Self::fixed(min), Self::fixed(max));
            Err(ConfigError::LatencyRange(text))
        }
    }

    /// The delay for one call.
    pub(crate) fn sample(self) -> Duration {
        if self.min == self.max {
            self.min
        } else {
            rand::rng().random_range(self.min..=self.max)
        }
    }
}

impl FromStr for Latency {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |part: &str| {
            humantime::parse_duration(part.trim())
                .map_err(|e| ConfigError::Latency(s.to_owned(), e.to_string()))
        };
        match s.split_once("..") {
            Some((min, max)) => Self::range(parse(min)?, parse(max)?),
            None => Ok(Self::fixed(parse(s)?)),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.min))?;
        if self.min != self.max {
            write!(f, "..{}", humantime::format_duration(self.max))?;
        }
        Ok(())
    }
}

/// The instance's name, checked once to be valid as gRPC metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceName(MetadataValue<Ascii>);

// === impl InstanceName ===

impl InstanceName {
    /// The host's name (a container's or pod's name in compose or Kubernetes), or
    /// `recommendations-<pid>` where it cannot be read.
    pub fn from_host() -> Self {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|host| host.parse().ok())
            .unwrap_or_else(|| {
                let name = format!("recommendations-{}", std::process::id());
                name.parse()
                    .expect("letters, a dash and digits make a valid name")
            })
    }

    pub(crate) fn metadata(&self) -> MetadataValue<Ascii> {
        self.0.clone()
    }
}

impl FromStr for InstanceName {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        let visible = name.bytes().all(|b| b.is_ascii_graphic());
        if name.is_empty() || name.len() > 128 || !visible {
            return Err(ConfigError::InstanceName(s.to_owned()));
        }
        let value = name
            .parse()
            .map_err(|_| ConfigError::InstanceName(s.to_owned()))?;
        Ok(Self(value))
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.to_str().expect("checked to be visible ASCII");
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn latency_is_a_duration_or_a_range() {
        assert_eq!("20ms".parse::<Latency>().unwrap(), Latency::fixed(ms(20)));
        assert_eq!("0ms".parse::<Latency>().unwrap(), Latency::ZERO);
        let range = "10ms..50ms".parse::<Latency>().unwrap();
        assert_eq!(range, Latency::range(ms(10), ms(50)).unwrap());
        assert_eq!(range.to_string(), "10ms..50ms");
        for _ in 0..100 {
            let delay = range.sample();
            assert!(
                (ms(10)..=ms(50)).contains(&delay),
                "{delay:?} outside the range"
            );
        }
        for bad in ["", "fast", "50ms..10ms", "10ms..", "-5ms"] {
            assert!(bad.parse::<Latency>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn fail_rate_is_a_share() {
        for good in ["0", "0.0", "0.25", "1", "1.0"] {
            assert!(good.parse::<FailRate>().is_ok(), "{good:?} was refused");
        }
        for bad in ["-0.1", "1.01", "NaN", "inf", "half", ""] {
            assert!(bad.parse::<FailRate>().is_err(), "{bad:?} was accepted");
        }
        assert!(!FailRate::new(0.0).unwrap().strikes());
        assert!(FailRate::new(1.0).unwrap().strikes());
    }

    #[test]
    fn instance_name_must_be_visible_ascii() {
        assert_eq!(
            "reco-1".parse::<InstanceName>().unwrap().to_string(),
            "reco-1"
        );
        for bad in ["", "   ", "two words", "caf\u{e9}", &"x".repeat(129)] {
            assert!(bad.parse::<InstanceName>().is_err(), "{bad:?} was accepted");
        }
        assert!(!InstanceName::from_host().to_string().is_empty());
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        for (flag, value) in [
            ("--fail-rate", "1.5"),
            ("--latency", "soon"),
            ("--instance-name", "a b"),
        ] {
            let error = Cli::try_parse_from(["recommendations", flag, value]).unwrap_err();
            assert!(error.to_string().contains(flag), "{error}");
        }
        let cli = Cli::try_parse_from([
            "recommendations",
            "--fail-rate",
            "0.5",
            "--latency",
            "1ms..2ms",
            "--instance-name",
            "reco-7",
        ])
        .unwrap();
        assert_eq!(cli.config.fail_rate, FailRate::new(0.5).unwrap());
        assert_eq!(cli.config.latency, Latency::range(ms(1), ms(2)).unwrap());
        assert_eq!(cli.config.instance_name.to_string(), "reco-7");
    }
}
