//! The registry's readiness (`GET /readyz`): whether it serves, its release, its CA, and
//! its clock (the answer's `Date` header).

use std::time::{Duration, SystemTime};

use http::{Method, header};
use serde::{Deserialize, Serialize};

use crate::client::REQUEST_TIMEOUT;
use crate::error::decode;
use crate::types::duration_str;
use crate::{Client, ClientError};

/// Body of `GET /readyz`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `ready` while serving, `stale` while serving from the last state it saw (its etcd
    /// is unreachable); a registry shutting down answers 503 instead.
    pub status: String,
    /// The registry's release; `None` from registries older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `Some(None)`: the registry has no CA (a mesh without mTLS). `None`: it does not say,
    /// as registries older than the field do not.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "said")]
    pub ca: Option<Option<CaSummary>>,
    /// Where the catalog is kept; `None` from registries older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// What a write (register, heartbeat, deregister) may carry: `["open"]` when anyone
    /// may write, else some of `certificate`, `service-token`, `operator-token`. `None`
    /// from registries older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<Vec<String>>,
}

/// Where the registry keeps its catalog, as `/readyz` describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// `memory` (the embedded store) or `etcd`.
    pub kind: String,
    /// True while etcd is unreachable: the registry answers reads from the last state it
    /// saw and refuses writes (`status` is then `stale`).
    pub stale: bool,
    /// etcd only: the etcd revision the catalog reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// etcd only: the etcd member the registry's requests go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

// === impl StoreStatus ===

impl StoreStatus {
    /// The embedded store (memory, with or without a snapshot).
    pub fn memory() -> Self {
        StoreStatus {
            kind: "memory".to_owned(),
            stale: false,
            revision: None,
            endpoint: None,
        }
    }
}

/// The registry's CA, as `/readyz` describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CaSummary {
    pub trust_domain: String,
    /// Lifetime of the certificates it issues.
    #[serde(with = "duration_str")]
    pub cert_ttl: Duration,
}

/// Answer to [`Client::readyz`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub readiness: Readiness,
    /// The registry's clock when it answered (its `Date` header: whole seconds), if the
    /// answer carried one.
    pub date: Option<SystemTime>,
}

// === impl Client ===

impl Client {
    /// The registry's readiness and clock. A registry shutting down answers
    /// [`ClientError::Api`] with status 503.
    pub async fn readyz(&self) -> Result<Ready, ClientError> {
        let answer = self
            .exchange(Method::GET, "/readyz", None, REQUEST_TIMEOUT, None)
            .await?;
        let date = answer
            .headers
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let readiness = decode(&self.url("/readyz"), answer.status, &answer.body)?;
        Ok(Ready { readiness, date })
    }

    /// The CA certificate (PEM) of the mesh, or `None` when the registry has no CA.
    pub async fn ca_bundle(&self) -> Result<Option<String>, ClientError> {
        let route = "/v1/ca/bundle";
        let answer = self
            .exchange(Method::GET, route, None, REQUEST_TIMEOUT, None)
            .await?;
        if answer.status.is_success() {
            return Ok(Some(String::from_utf8_lossy(&answer.body).into_owned()));
        }
        match decode::<serde_json::Value>(&self.url(route), answer.status, &answer.body) {
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
            Ok(_) => unreachable!("decode fails on a non-2xx answer"),
        }
    }
}

/// Serde adapter telling a field given as `null` from an absent one.
mod said {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        // Only called for `Some`: the field is skipped when it is `None`.
        value.as_ref().and_then(Option::as_ref).serialize(s)
    }

    /// Present (as a value or `null`) is `Some`; absent fields never get here and take
    /// the default, `None`.
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_given_as_null_is_told_from_an_absent_one() {
        let none: Readiness = serde_json::from_str(r#"{"status":"ready","ca":null}"#).unwrap();
        assert_eq!(none.ca, Some(None));
        let old: Readiness = serde_json::from_str(r#"{"status":"ready"}"#).unwrap();
        assert_eq!((old.ca, old.version), (None, None));
        let ca: Readiness = serde_json::from_str(
            r#"{"status":"ready","version":"0.1.0","ca":{"trust_domain":"mesh.local","cert_ttl":"24h"}}"#,
        )
        .unwrap();
        let summary = ca.ca.clone().flatten().unwrap();
        assert_eq!(summary.cert_ttl, Duration::from_secs(86_400));
        assert_eq!(ca.version.as_deref(), Some("0.1.0"));
        let back: Readiness = serde_json::from_value(serde_json::to_value(&ca).unwrap()).unwrap();
        assert_eq!(back, ca);
        assert_eq!(
            serde_json::to_value(&none).unwrap()["ca"],
            serde_json::Value::Null
        );
    }
}
