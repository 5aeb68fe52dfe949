//! Traffic policy: the documents the registry stores per service and sidecars enforce.
//!
//! Three kinds, each checked and normalised here once, for the registry (which refuses a
//! bad document when it is written) and for sidecars (which refuse one they cannot read,
//! such as a newer `version`, and keep what they had):
//!
//! - [`Routes`], for a destination, applied by its callers' sidecars: which subset of its
//!   instances ([`Selector`] over registration metadata) a request goes to, with what
//!   timeout and retries.
//! - [`Intentions`], for a serving service, applied by its own sidecars: which callers
//!   may call it.
//! - [`Limits`], for a serving service: token buckets, overall and per caller.
//!
//! [`Document::parse`] turns a request body into a checked, normalised document (defaults
//! filled, rules named, header names lower-cased); [`PolicyError`] names the field that is
//! wrong (`rules[1].backends[0].weight`). [`ServicePolicy`] is what
//! `GET /v1/policy/{service}` answers; [`PolicyListing`] is the same answer as a reader
//! receives it, each document still JSON so that one it cannot read spoils only its kind.

mod check;
mod intentions;
mod limits;
mod routes;
mod selector;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use intentions::{Action, Intention, Intentions, MAX_INTENTIONS, Mode};
pub use limits::{Bucket, Limits, MAX_RPS};
pub use routes::{
    Backend, GrpcMatch, MAX_BACKENDS, MAX_HEADERS, MAX_MATCHES, MAX_RULES, Match, PathMatch,
    RetryOn, RetryPolicy, RouteRule, Routes,
};
pub use selector::Selector;

/// The document version this build reads and writes.
pub const VERSION: u32 = 1;

/// A document that is not acceptable, and where: `field` is the path inside the document
/// (`rules[1].backends[0].weight`; empty for the document as a whole).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The document is of a `version` this build does not know: readers keep what they
    /// had rather than guess at its meaning.
    pub fn is_unknown_version(&self) -> bool {
        self.field == "version"
    }
}

/// The three kinds of policy document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    Routes,
    Intentions,
    Limits,
}

// === impl PolicyKind ===

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::Routes,
        PolicyKind::Intentions,
        PolicyKind::Limits,
    ];

    /// The kind's name in paths and bodies (`routes`, `intentions`, `limits`).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Routes => "routes",
            PolicyKind::Intentions => "intentions",
            PolicyKind::Limits => "limits",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("policy kind {s:?} must be routes, intentions or limits"))
    }
}

/// One checked, normalised document of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    Routes(Routes),
    Intentions(Intentions),
    Limits(Limits),
}

// === impl Document ===

impl Document {
    /// Reads a document of `kind` from a request body: JSON, a known `version`, the
    /// contract's rules; normalised.
    pub fn parse(kind: PolicyKind, body: &[u8]) -> Result<Document, PolicyError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| PolicyError::new("", format!("not valid JSON: {e}")))?;
        Document::from_value(kind, value)
    }

    /// As [`Document::parse`], from JSON already read.
    pub fn from_value(kind: PolicyKind, value: Value) -> Result<Document, PolicyError> {
        if !value.is_object() {
            return Err(PolicyError::new(
                "",
                format!("a {kind} document must be a JSON object"),
            ));
        }
        check_version(&value)?;
        Ok(match kind {
            PolicyKind::Routes => Document::Routes(routes::decode(value)?.validate()?),
            PolicyKind::Intentions => Document::Intentions(intentions::decode(value)?.validate()?),
            PolicyKind::Limits => Document::Limits(limits::decode(value)?.validate()?),
        })
    }

    pub fn kind(&self) -> PolicyKind {
        match self {
            Document::Routes(_) => PolicyKind::Routes,
            Document::Intentions(_) => PolicyKind::Intentions,
            Document::Limits(_) => PolicyKind::Limits,
        }
    }

    /// The document as JSON, as the registry stores and answers it.
    pub fn to_value(&self) -> Value {
        match self {
            Document::Routes(d) => serde_json::to_value(d),
            Document::Intentions(d) => serde_json::to_value(d),
            Document::Limits(d) => serde_json::to_value(d),
        }
        .expect("policy documents serialize")
    }
}

impl Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Document::Routes(d) => d.serialize(s),
            Document::Intentions(d) => d.serialize(s),
            Document::Limits(d) => d.serialize(s),
        }
    }
}

/// Answer to `GET /v1/policy/{service}`: every document of one service, and the index
/// that grows whenever any of them changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServicePolicy {
    pub service: String,
    pub index: u64,
    pub routes: Option<Routes>,
    pub intentions: Option<Intentions>,
    pub limits: Option<Limits>,
}

// === impl ServicePolicy ===

impl ServicePolicy {
    /// A service with no policy at `index`.
    pub fn new(service: impl Into<String>, index: u64) -> Self {
        ServicePolicy {
            service: service.into(),
            index,
            routes: None,
            intentions: None,
            limits: None,
        }
    }

    /// Stores `document` in place of its kind's.
    pub fn set(&mut self, document: Document) {
        match document {
            Document::Routes(d) => self.routes = Some(d),
            Document::Intentions(d) => self.intentions = Some(d),
            Document::Limits(d) => self.limits = Some(d),
        }
    }

    /// Drops the document of `kind`; false when there was none.
    pub fn remove(&mut self, kind: PolicyKind) -> bool {
        match kind {
            PolicyKind::Routes => self.routes.take().is_some(),
            PolicyKind::Intentions => self.intentions.take().is_some(),
            PolicyKind::Limits => self.limits.take().is_some(),
        }
    }

    /// The document of `kind`, if there is one.
    pub fn document(&self, kind: PolicyKind) -> Option<Document> {
        match kind {
            PolicyKind::Routes => self.routes.clone().map(Document::Routes),
            PolicyKind::Intentions => self.intentions.clone().map(Document::Intentions),
            PolicyKind::Limits => self.limits.clone().map(Document::Limits),
        }
    }

    /// The document of `kind` as JSON (`GET /v1/policy/{service}/{kind}`).
    pub fn get(&self, kind: PolicyKind) -> Option<Value> {
        self.document(kind).map(|d| d.to_value())
    }

    /// No document of any kind.
    pub fn is_empty(&self) -> bool {
        self.routes.is_none() && self.intentions.is_none() && self.limits.is_none()
    }
}

/// `GET /v1/policy/{service}` as a reader receives it: the documents still JSON, so that
/// one this build cannot read (a newer `version`) is refused on its own, by
/// [`PolicyListing::decode`], while the others apply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PolicyListing {
    pub service: String,
    pub index: u64,
    #[serde(default)]
    pub routes: Option<Value>,
    #[serde(default)]
    pub intentions: Option<Value>,
    #[serde(default)]
    pub limits: Option<Value>,
}

impl PolicyListing {
    /// The document of `kind`: `Ok(None)` when the service has none.
    pub fn decode(&self, kind: PolicyKind) -> Result<Option<Document>, PolicyError> {
        let value = match kind {
            PolicyKind::Routes => &self.routes,
            PolicyKind::Intentions => &self.intentions,
            PolicyKind::Limits => &self.limits,
        };
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Document::from_value(kind, v.clone()).map(Some),
        }
    }
}

/// `version` absent means 1; any other is refused before the rest is read, because its
/// meaning is unknown (a newer writer).
fn check_version(value: &Value) -> Result<(), PolicyError> {
    match value.get("version") {
        None => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION.into()) => Ok(()),
        Some(other) => Err(PolicyError::new(
            "version",
            format!("version {other} is not one this build knows (it reads version {VERSION})"),
        )),
    }
}

fn version_1() -> u32 {
    VERSION
}

/// `value` as a `T`, a serde error reported at `field`.
fn decode<T: DeserializeOwned>(value: Value, field: &str) -> Result<T, PolicyError> {
    serde_json::from_value(value).map_err(|e| PolicyError::new(field, e.to_string()))
}

/// Where in a list: `rules[2]`, or `rules[2].matches[0]` under `parent`.
fn at(parent: &str, list: &str, i: usize) -> String {
    if parent.is_empty() {
        format!("{list}[{i}]")
    } else {
        format!("{parent}.{list}[{i}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.as_str().parse::<PolicyKind>(), Ok(kind));
        }
        assert!("route".parse::<PolicyKind>().is_err());
    }

    #[test]
    fn unknown_versions_are_refused_before_anything_else() {
        for kind in PolicyKind::ALL {
            let err = Document::parse(kind, br#"{"version": 2, "whatever": true}"#).unwrap_err();
            assert!(err.is_unknown_version(), "{err}");
            assert!(err.message.contains("version 2"), "{err}");
        }
        let err =
            Document::parse(PolicyKind::Limits, br#"{"version": "1", "rps": 1}"#).unwrap_err();
        assert_eq!(err.field, "version");
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        let err = Document::parse(PolicyKind::Routes, b"{").unwrap_err();
        assert!(err.message.starts_with("not valid JSON"), "{err}");
        let err = Document::parse(PolicyKind::Routes, b"[]").unwrap_err();
        assert!(err.message.contains("JSON object"), "{err}");
    }

    #[test]
    fn a_service_policy_holds_one_document_per_kind() {
        let mut p = ServicePolicy::new("web", 3);
        assert!(p.is_empty());
        let limits = Document::parse(PolicyKind::Limits, br#"{"rps": 5}"#).unwrap();
        p.set(limits.clone());
        assert_eq!(p.document(PolicyKind::Limits), Some(limits));
        assert_eq!(p.get(PolicyKind::Limits).unwrap()["burst"], 5);
        assert_eq!(p.get(PolicyKind::Routes), None);
        assert!(p.remove(PolicyKind::Limits));
        assert!(!p.remove(PolicyKind::Limits));
        assert!(p.is_empty());
    }

    #[test]
    fn a_listing_refuses_only_the_kind_it_cannot_read() {
        let json = serde_json::json!({
            "service": "web", "index": 7,
            "routes": {"version": 2, "rules": []},
            "intentions": null,
            "limits": {"version": 1, "rps": 10},
        });
        let listing: PolicyListing = serde_json::from_value(json).unwrap();
        assert!(
            listing
                .decode(PolicyKind::Routes)
                .unwrap_err()
                .is_unknown_version()
        );
        assert_eq!(listing.decode(PolicyKind::Intentions), Ok(None));
        assert!(matches!(
            listing.decode(PolicyKind::Limits),
            Ok(Some(Document::Limits(_)))
        ));
    }

    #[test]
    fn a_service_policy_reads_as_a_listing() {
        let mut p = ServicePolicy::new("web", 9);
        p.set(
            Document::parse(
                PolicyKind::Routes,
                br#"{"rules":[{"backends":[{"weight":100}]}]}"#,
            )
            .unwrap(),
        );
        let listing: PolicyListing =
            serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(listing.index, 9);
        assert_eq!(
            listing.decode(PolicyKind::Routes).unwrap(),
            p.document(PolicyKind::Routes)
        );
        assert_eq!(listing.limits, None);
    }

    #[test]
    fn errors_name_their_field() {
        let e = PolicyError::new("rules[0].name", "bad");
        assert_eq!(e.to_string(), "rules[0].name: bad");
        assert_eq!(PolicyError::new("", "bad").to_string(), "bad");
    }
}
