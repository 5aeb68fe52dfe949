//! Traffic policy in the tests: documents written to the registry, and waiting until a
//! sidecar has the policy in force.

use mesh_registry_api::policy::{Document, PolicyKind};
use serde_json::Value;

use super::{PATIENCE, Registry, Sidecar, eventually, get};

/// Writes a `kind` document for `service` and returns the policy index it made.
pub async fn put_policy(registry: &Registry, service: &str, kind: PolicyKind, doc: Value) -> u64 {
    let body = serde_json::to_vec(&doc).unwrap();
    let document = Document::parse(kind, &body).unwrap();
    registry
        .client
        .put_policy(service, &document)
        .await
        .unwrap();
    registry.client.policy(service).await.unwrap().index
}

/// `/debug/policy` of a sidecar.
pub async fn debug_policy(sidecar: &Sidecar) -> Value {
    let answer = get(&format!("http://{}/debug/policy", sidecar.admin)).await;
    serde_json::from_str(&answer.text).unwrap()
}

/// Waits until `sidecar` applies the policy of destination `service` at `index` or later.
pub async fn until_routes(sidecar: &Sidecar, service: &str, index: u64) {
    let what = format!("the routes of {service} at index {index} in force");
    eventually(PATIENCE, &what, async || {
        let page = debug_policy(sidecar).await;
        let destinations = page["destinations"].as_array().cloned().unwrap_or_default();
        destinations
            .iter()
            .any(|d| d["service"] == service && d["index"].as_u64() >= Some(index))
    })
    .await;
}

/// Waits until `sidecar` applies its own service's policy at `index` or later.
pub async fn until_serving(sidecar: &Sidecar, index: u64) {
    let what = format!("the local service's policy at index {index} in force");
    eventually(PATIENCE, &what, async || {
        debug_policy(sidecar).await["serving"]["index"].as_u64() >= Some(index)
    })
    .await;
}
