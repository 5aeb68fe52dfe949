//! `limits`: token buckets a serving sidecar applies to its inbound calls.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PolicyError, version_1};

/// Highest rate a bucket may allow, per second.
pub const MAX_RPS: f64 = 1e6;

/// A `limits` document: an overall bucket (`rps`, `burst` at the top level), a bucket per
/// caller identity, or both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "version_1")]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    /// Calls allowed at once after a quiet spell; filled with `ceil(rps)` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per caller identity; unauthenticated callers share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<Bucket>,
}

/// A token bucket: `rps` tokens a second, at most `burst` saved up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub rps: f64,
    /// Filled with `ceil(rps)` when absent: see [`Bucket::burst`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

// === impl Limits ===

impl Limits {
    /// The overall bucket, if the document sets one.
    pub fn overall(&self) -> Option<Bucket> {
        self.rps.map(|rps| Bucket {
            rps,
            burst: self.burst,
        })
    }

    /// Checks the document against the contract and fills `burst`s.
    pub fn validate(mut self) -> Result<Self, PolicyError> {
        if self.rps.is_none() && self.per_caller.is_none() {
            return Err(PolicyError::new(
                "",
                "limits need rps (an overall limit), per_caller, or both",
            ));
        }
        match self.rps {
            Some(rps) => {
                let bucket = Bucket {
                    rps,
                    burst: self.burst,
                }
                .validate("")?;
                self.burst = bucket.burst;
            }
            None if self.burst.is_some() => {
                return Err(PolicyError::new(
                    "burst",
                    "burst without rps: the overall limit needs its rate",
                ));
            }
            None => {}
        }
        if let Some(bucket) = self.per_caller {
            self.per_caller = Some(bucket.validate("per_caller")?);
        }
        Ok(self)
    }
}

// === impl Bucket ===

impl Bucket {
    /// Calls allowed at once after a quiet spell.
    pub fn burst(&self) -> u32 {
        // `rps` is at most 1e6, so its ceiling fits.
        self.burst.unwrap_or(self.rps.ceil() as u32).max(1)
    }

    fn validate(mut self, at: &str) -> Result<Self, PolicyError> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        if !(self.rps > 0.0 && self.rps <= MAX_RPS) {
            return Err(PolicyError::new(
                field("rps"),
                format!("rps {} must be more than 0 and at most {MAX_RPS}", self.rps),
            ));
        }
        if self.burst == Some(0) {
            return Err(PolicyError::new(field("burst"), "burst must be at least 1"));
        }
        self.burst = Some(self.burst());
        Ok(self)
    }
}

/// A `limits` body, a serde error inside `per_caller` reported there.
pub(super) fn decode(value: Value) -> Result<Limits, PolicyError> {
    super::decode::<Limits>(value.clone(), "").map_err(|e| match value.get("per_caller") {
        Some(inner) if super::decode::<Bucket>(inner.clone(), "").is_err() => {
            PolicyError::new("per_caller", e.message)
        }
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Document, PolicyKind};
    use super::*;

    fn parse(json: &str) -> Result<Limits, PolicyError> {
        match Document::parse(PolicyKind::Limits, json.as_bytes())? {
            Document::Limits(l) => Ok(l),
            other => panic!("{other:?}"),
        }
    }

    fn field_of(json: &str) -> String {
        parse(json).unwrap_err().field
    }

    #[test]
    fn the_contract_example_reads_as_written() {
        let l = parse(r#"{"version":1,"rps":100,"burst":200,"per_caller":{"rps":10,"burst":20}}"#)
            .unwrap();
        let bucket = |rps, burst| {
            Some(Bucket {
                rps,
                burst: Some(burst),
            })
        };
        assert_eq!(l.overall(), bucket(100.0, 200));
        assert_eq!(l.per_caller, bucket(10.0, 20));
    }

    #[test]
    fn burst_defaults_to_the_ceiling_of_rps() {
        let l = parse(r#"{"rps": 2.5, "per_caller": {"rps": 0.1}}"#).unwrap();
        assert_eq!(l.burst, Some(3));
        assert_eq!(l.per_caller.unwrap().burst, Some(1));
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["burst"], 3);
        assert_eq!(json["version"], 1);
    }

    #[test]
    fn one_of_the_two_limits_is_needed() {
        let err = parse(r#"{"version": 1}"#).unwrap_err();
        assert!(err.message.contains("rps"), "{err}");
        assert_eq!(
            parse(r#"{"per_caller": {"rps": 1}}"#).unwrap().overall(),
            None
        );
    }

    #[test]
    fn rates_must_be_positive_and_bounded() {
        assert_eq!(field_of(r#"{"rps": 0}"#), "rps");
        assert_eq!(field_of(r#"{"rps": -1}"#), "rps");
        assert_eq!(field_of(r#"{"rps": 1000001}"#), "rps");
        assert_eq!(field_of(r#"{"per_caller": {"rps": 0}}"#), "per_caller.rps");
        assert!(parse(r#"{"rps": 1000000}"#).is_ok());
    }

    #[test]
    fn burst_must_be_a_positive_integer_with_a_rate() {
        assert_eq!(
            field_of(r#"{"burst": 5, "per_caller": {"rps": 1}}"#),
            "burst"
        );
        assert_eq!(
            field_of(r#"{"per_caller": {"rps": 1, "burst": -1}}"#),
            "per_caller"
        );
        assert_eq!(field_of(r#"{"rps": 1, "burst": 1.5}"#), "");
        assert_eq!(field_of(r#"{"rps": 1, "burst": 0}"#), "burst");
        assert_eq!(
            field_of(r#"{"per_caller": {"rps": 1, "burst": 0}}"#),
            "per_caller.burst"
        );
    }

    #[test]
    fn unknown_fields_are_refused_where_they_are() {
        let err = parse(r#"{"rps": 1, "rate": 2}"#).unwrap_err();
        assert!(err.message.contains("unknown field `rate`"), "{err}");
        assert_eq!(
            field_of(r#"{"per_caller": {"rps": 1, "by": "ip"}}"#),
            "per_caller"
        );
    }
}
