//! `routes`: how a destination's callers split and shape its traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::check::{check_grpc_name, check_method, check_path};
use super::{PolicyError, Selector, at, version_1};

/// Most rules in one document.
pub const MAX_RULES: usize = 64;
/// Most matches in one rule.
pub const MAX_MATCHES: usize = 16;
/// Most headers in one match.
pub const MAX_HEADERS: usize = 16;
/// Most backends in one rule.
pub const MAX_BACKENDS: usize = 16;
/// Most retries a rule may ask for.
pub const MAX_RETRIES: u32 = 10;

/// A `routes` document: ordered rules, the first whose matches match a request wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(default = "version_1")]
    pub version: u32,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// `rule-<n>` (1-based) when absent.
    #[serde(default)]
    pub name: String,
    /// OR'd; none matches every request.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// Weights add up to 100.
    pub backends: Vec<Backend>,
    /// The request timeout for the calls this rule matches, instead of the sidecar's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration_opt"
    )]
    pub timeout: Option<Duration>,
    /// Retries for the calls this rule matches, instead of the sidecar's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
}

/// One way a request can match: every field present must hold (AND); none present
/// matches every request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// An upper-case HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header name (lower case) → exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatch>,
}

/// `{"exact": "/p"}` or `{"prefix": "/p"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// A gRPC call to `service` (`pkg.Service`), to `method` of it or to any.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A share of a rule's calls, sent to a subset of the destination's instances.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// A [`Selector`] over registration metadata; `""` is every instance.
    #[serde(default)]
    pub subset: String,
    /// 0–100; a rule's weights add up to 100.
    pub weight: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try, 0–10.
    pub attempts: u32,
    /// Which failures are retried; filled with [`RetryOn::DEFAULT`] when absent.
    #[serde(default)]
    pub on: Vec<RetryOn>,
}

/// A kind of failed try a rule may retry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetryOn {
    /// No connection to the endpoint (nothing reached the app).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection or stream was reset.
    #[serde(rename = "reset")]
    Reset,
    /// A failure status from the server (the sidecar's retried statuses: 502, 503, 504).
    #[serde(rename = "5xx")]
    Status5xx,
    /// gRPC UNAVAILABLE.
    #[serde(rename = "unavailable")]
    Unavailable,
    /// The try ran out of its own time.
    #[serde(rename = "timeout")]
    Timeout,
}

impl RetryOn {
    /// What a rule that does not say retries: every kind, as sidecars do without routes
    /// (a broken connection, a `5xx` and a try's timeout only for requests that are safe
    /// to repeat).
    pub const DEFAULT: [RetryOn; 5] = [
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::Status5xx,
        RetryOn::Unavailable,
        RetryOn::Timeout,
    ];
}

// === impl Routes ===

impl Routes {
    /// Checks the document against the contract, names its rules, lower-cases header
    /// names and fills retry defaults.
    pub fn validate(mut self) -> Result<Self, PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::new(
                "rules",
                format!(
                    "{} rules; at most {MAX_RULES} are allowed",
                    self.rules.len()
                ),
            ));
        }
        let mut names = BTreeMap::new();
        for (i, rule) in self.rules.iter_mut().enumerate() {
            super::check::name_rule(&mut rule.name, i, &mut names)?;
            rule.normalise(&at("", "rules", i))?;
        }
        self.check_overlaps()?;
        Ok(self)
    }

    /// Rules that could never win are reported rather than kept: they would read as if
    /// they applied.
    fn check_overlaps(&self) -> Result<(), PolicyError> {
        let mut seen: Vec<(&RouteRule, BTreeSet<&Match>)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let matches: BTreeSet<&Match> = rule.matches.iter().collect();
            for (earlier, earlier_matches) in &seen {
                if earlier.matches_everything() {
                    return Err(PolicyError::new(
                        at("", "rules", i),
                        format!(
                            "rule {:?} can never match: rule {:?} before it matches every request",
                            rule.name, earlier.name
                        ),
                    ));
                }
                if *earlier_matches == matches {
                    return Err(PolicyError::new(
                        format!("{}.matches", at("", "rules", i)),
                        format!(
                            "rule {:?} has the same matches as rule {:?} before it, so it can never match",
                            rule.name, earlier.name
                        ),
                    ));
                }
            }
            seen.push((rule, matches));
        }
        Ok(())
    }
}

// === impl RouteRule ===

impl RouteRule {
    /// No match, or a match with no field: every request.
    pub fn matches_everything(&self) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| *m == Match::default())
    }

    fn normalise(&mut self, field: &str) -> Result<(), PolicyError> {
        if self.matches.len() > MAX_MATCHES {
            return Err(PolicyError::new(
                format!("{field}.matches"),
                format!(
                    "{} matches; at most {MAX_MATCHES} are allowed",
                    self.matches.len()
                ),
            ));
        }
        for (j, m) in self.matches.iter_mut().enumerate() {
            m.normalise(&at(field, "matches", j))?;
        }
        self.check_backends(field)?;
        if self.timeout == Some(Duration::ZERO) {
            return Err(PolicyError::new(
                format!("{field}.timeout"),
                "timeout must be more than 0 (leave it out for the sidecar's own)",
            ));
        }
        if let Some(retries) = &mut self.retries {
            let field = format!("{field}.retries");
            if retries.attempts > MAX_RETRIES {
                return Err(PolicyError::new(
                    format!("{field}.attempts"),
                    format!(
                        "{} retries; at most {MAX_RETRIES} are allowed",
                        retries.attempts
                    ),
                ));
            }
            if retries.on.is_empty() {
                retries.on = RetryOn::DEFAULT.to_vec();
            }
            let mut kinds: Vec<RetryOn> = retries.on.clone();
            kinds.sort();
            kinds.dedup();
            if kinds.len() != retries.on.len() {
                return Err(PolicyError::new(
                    format!("{field}.on"),
                    "a failure kind is listed twice",
                ));
            }
        }
        Ok(())
    }

    fn check_backends(&self, field: &str) -> Result<(), PolicyError> {
        let n = self.backends.len();
        if !(1..=MAX_BACKENDS).contains(&n) {
            return Err(PolicyError::new(
                format!("{field}.backends"),
                format!("{n} backends; a rule needs 1 to {MAX_BACKENDS}"),
            ));
        }
        let mut subsets = BTreeMap::new();
        for (k, backend) in self.backends.iter().enumerate() {
            let at = at(field, "backends", k);
            if backend.weight > 100 {
                return Err(PolicyError::new(
                    format!("{at}.weight"),
                    format!("weight {} must be from 0 to 100", backend.weight),
                ));
            }
            let selector: Selector = backend
                .subset
                .parse()
                .map_err(|m: String| PolicyError::new(format!("{at}.subset"), m))?;
            if let Some(first) = subsets.insert(selector, k) {
                return Err(PolicyError::new(
                    format!("{at}.subset"),
                    format!(
                        "subset {:?} is also backends[{first}]'s: give one backend the sum of their weights",
                        backend.subset
                    ),
                ));
            }
        }
        let sum: u32 = self.backends.iter().map(|b| b.weight).sum();
        if sum != 100 {
            return Err(PolicyError::new(
                format!("{field}.backends"),
                format!("weights add up to {sum}; they must add up to 100"),
            ));
        }
        Ok(())
    }
}

// === impl Match ===

impl Match {
    fn normalise(&mut self, field: &str) -> Result<(), PolicyError> {
        if let Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) = &self.path {
            check_path(p, &format!("{field}.path"))?;
        }
        if let Some(method) = &self.method {
            check_method(method, &format!("{field}.method"))?;
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(PolicyError::new(
                format!("{field}.headers"),
                format!(
                    "{} headers; at most {MAX_HEADERS} are allowed",
                    self.headers.len()
                ),
            ));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in std::mem::take(&mut self.headers) {
            let at = format!("{field}.headers.{name}");
            let lower = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PolicyError::new(&at, format!("{name:?} is not a header name")))?
                .as_str()
                .to_owned();
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(PolicyError::new(
                    &at,
                    format!("{value:?} is not a header value"),
                ));
            }
            if headers.insert(lower.clone(), value).is_some() {
                return Err(PolicyError::new(
                    at,
                    format!("header {lower:?} is named twice (names are case-insensitive)"),
                ));
            }
        }
        self.headers = headers;
        if let Some(grpc) = &self.grpc {
            check_grpc_name(&grpc.service, &format!("{field}.grpc.service"), "service")?;
            if let Some(method) = &grpc.method {
                check_grpc_name(method, &format!("{field}.grpc.method"), "method")?;
            }
        }
        Ok(())
    }
}

// === impl Backend ===

impl Backend {
    /// The subset's selector (checked when the document was).
    pub fn selector(&self) -> Selector {
        self.subset.parse().unwrap_or_default()
    }
}

/// A `routes` body, a serde error reported at the rule, match, backend or retry policy it
/// is in: serde alone says what is wrong, not where.
pub(super) fn decode(value: Value) -> Result<Routes, PolicyError> {
    let whole = match super::decode::<Routes>(value.clone(), "") {
        Ok(routes) => return Ok(routes),
        Err(e) => e,
    };
    let Some(rules) = value.get("rules").and_then(Value::as_array) else {
        return Err(whole);
    };
    for (i, rule) in rules.iter().enumerate() {
        let at_rule = at("", "rules", i);
        let Err(e) = super::decode::<RouteRule>(rule.clone(), &at_rule) else {
            continue;
        };
        for (list, one) in [
            ("matches", check::<Match> as fn(&Value) -> Option<String>),
            ("backends", check::<Backend>),
        ] {
            for (j, item) in rule
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(message) = one(item) {
                    return Err(PolicyError::new(at(&at_rule, list, j), message));
                }
            }
        }
        if let Some(message) = rule.get("retries").and_then(check::<RetryPolicy>) {
            return Err(PolicyError::new(format!("{at_rule}.retries"), message));
        }
        return Err(e);
    }
    Err(whole)
}

/// Serde's complaint about `value` as a `T`, if any.
fn check<T: serde::de::DeserializeOwned>(value: &Value) -> Option<String> {
    serde_json::from_value::<T>(value.clone())
        .err()
        .map(|e| e.to_string())
}

/// Serde adapter for optional durations written as humantime strings.
mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            D::Error::custom(format!(
                "duration {text:?}: {e} (write e.g. \"250ms\" or \"2s\")"
            ))
        })
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
