//! The JSON of a sidecar's admin pages `/ready` and `/debug/endpoints` (docs/proxy.md,
//! "Admin endpoints").
//!
//! A mesh-proxy writes its pages with these types, the registry relays them as they are,
//! and meshctl reads them with the same types. Readers take a field a sidecar does not
//! send as its default, so one meshctl reads sidecars of older and newer releases.

use serde::{Deserialize, Serialize};

use crate::types::Status;

/// The body of a sidecar's `/ready`: 200 when `ready`, 503 with the same body when not.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct SidecarReadiness {
    pub ready: bool,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// False while its last call to the registry failed (it routes with the endpoints it
    /// knew last). `None`: the sidecar does not say.
    pub registry_connected: Option<bool>,
    /// Its release, so operators' tools can tell a mesh running mixed releases.
    pub version: Option<String>,
    /// Why a traffic policy in force is not the registry's (the last one read is applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<String>,
    /// With `--service`: whether the registry holds its registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    /// With `--service`: the status the registry lists the instance with (`None` for a
    /// status this release does not know).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "known")]
    pub status: Option<Status>,
    /// With `--service`: registered and passing, the only standing that gets traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passing: Option<bool>,
}

/// Where a sidecar's endpoints of a destination come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The registry's passing instances.
    Registry,
    /// DNS: a name the registry does not know.
    Dns,
}

// === impl Source ===

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Registry => "registry",
            Source::Dns => "dns",
        }
    }
}

/// One destination of a sidecar's `/debug/endpoints` (a JSON array of these): a service
/// its app has called and that it follows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct DestinationView {
    pub service: String,
    /// How the sidecar carries connections to it: `tcp` (as bytes: its instances are
    /// registered `tcp`) or `http`.
    pub protocol: String,
    /// `None` until discovery has answered (or for a source this release does not know).
    #[serde(deserialize_with = "known")]
    pub source: Option<Source>,
    pub last_error: Option<String>,
    pub endpoints: Vec<EndpointView>,
    /// Endpoints discovery found but this sidecar will not dial.
    pub refused: Vec<RefusedView>,
}

/// An endpoint discovery found that the sidecar will not dial, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RefusedView {
    pub address: String,
    pub reason: String,
}

/// One endpoint of a destination, as the sidecar's balancer sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct EndpointView {
    pub address: String,
    /// The registry's instance id; `None` for endpoints from DNS.
    pub instance: Option<String>,
    /// `ready` or `ejected`.
    pub state: String,
    pub weight: u32,
    /// The balancer's moving average of its latency.
    pub ewma_ms: f64,
    /// The balancer's estimate of the share of recent tries that succeeded.
    pub success: f64,
    /// Tries over the success-rate window, and the share that succeeded.
    pub tries: u64,
    pub success_rate: f64,
    pub in_flight: u64,
    /// Of `in_flight`, connections carried as bytes: TCP connections, upgraded HTTP ones.
    pub open_connections: u64,
    pub last_error: Option<String>,
    /// Why the endpoint is in (or out of) rotation.
    pub reason: String,
    /// The rule that ejected it (`consecutive-failures`, `success-rate`, `probe-failed`).
    pub ejected_by: Option<String>,
    /// How much longer an ejected endpoint stays out.
    pub ejected_for_ms: Option<u64>,
}

/// A value of an enum, or `None` for one this release does not know: a sidecar of a
/// newer release must not make its whole page unreadable.
fn known<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages as a mesh-proxy of this release writes them.
    const READY: &str = r#"{"ready":false,"reason":"not registered yet","registry_connected":true,
        "version":"0.1.0","policy":["routes v2: unknown version"],"registered":true,
        "status":"warning","passing":false}"#;
    const ENDPOINTS: &str = r#"[{"service":"recommendations","protocol":"http",
        "source":"registry","last_error":null,
        "endpoints":[{"address":"10.0.0.7:9000","instance":"r-1","state":"ejected","weight":1,
          "ewma_ms":2.5,"success":0.5,"tries":4,"success_rate":0.25,"in_flight":1,
          "open_connections":0,"last_error":"connect refused","reason":"ejected: 5 failures",
          "ejected_by":"consecutive-failures","ejected_for_ms":9000}],
        "refused":[{"address":"127.0.0.1:1","reason":"loopback"}]}]"#;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(json: &str) {
        let read: T = serde_json::from_str(json).unwrap();
        let written = serde_json::to_value(&read).unwrap();
        let expected: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(written, expected, "every field read is written back");
    }

    #[test]
    fn the_pages_round_trip_field_for_field() {
        round_trip::<SidecarReadiness>(READY);
        round_trip::<Vec<DestinationView>>(ENDPOINTS);
        let ready: SidecarReadiness = serde_json::from_str(READY).unwrap();
        assert_eq!(ready.status, Some(Status::Warning));
        let d: Vec<DestinationView> = serde_json::from_str(ENDPOINTS).unwrap();
        assert_eq!(d[0].source, Some(Source::Registry));
        assert_eq!(
            d[0].endpoints[0].ejected_by.as_deref(),
            Some("consecutive-failures")
        );
    }

    #[test]
    fn pages_of_other_releases_read_with_defaults() {
        // Older: fewer fields. Newer: fields this release does not know.
        let ready: SidecarReadiness = serde_json::from_str(r#"{"ready":true,"new":1}"#).unwrap();
        assert!(ready.ready);
        assert_eq!(ready.registry_connected, None);
        assert_eq!(ready.version, None);
        let d: Vec<DestinationView> =
            serde_json::from_str(r#"[{"service":"web","endpoints":[{"address":"a:1"}]}]"#).unwrap();
        assert_eq!(d[0].endpoints[0].tries, 0);
        assert!(d[0].refused.is_empty());
        let newer: SidecarReadiness =
            serde_json::from_str(r#"{"ready":true,"status":"draining"}"#).unwrap();
        assert_eq!((newer.ready, newer.status), (true, None));
        let newer: Vec<DestinationView> =
            serde_json::from_str(r#"[{"service":"web","source":"static"}]"#).unwrap();
        assert_eq!((newer[0].service.as_str(), newer[0].source), ("web", None));
    }
}
