//! The registry's own test helpers, beside what the mesh's tests share
//! (`mesh-test-support`): requests by path to a test registry, and etcd clusters.

#![allow(dead_code, unused_imports)]

use bytes::Bytes;
use http::Method;

pub use mesh_test_support::client::{Answer, request};
pub use mesh_test_support::{
    PATIENCE, Registry, eventually, eventually_some, metric, metric_sum, within,
};

pub mod etcd;

pub const JSON: (&str, &str) = ("content-type", "application/json");

/// What the registry's tests ask of a test registry by path.
pub trait RegistryExt {
    /// The URL of `path` on it.
    fn url_for(&self, path: &str) -> String;

    /// One request, answered with its status, headers and body (parsed as JSON when it is).
    async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer;

    /// Every instance of `service` in any status (`?all=true`), as JSON.
    async fn all_instances(&self, service: &str) -> serde_json::Value;

    /// Waits until `n` blocking queries are parked.
    async fn until_watchers(&self, n: f64);
}

impl RegistryExt for Registry {
    fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        request(method, &self.url_for(path), headers, body.into()).await
    }

    async fn all_instances(&self, service: &str) -> serde_json::Value {
        let path = format!("/v1/services/{service}?all=true");
        self.raw(Method::GET, &path, &[], Bytes::new()).await.json["instances"].take()
    }

    async fn until_watchers(&self, n: f64) {
        let what = format!("{n} parked blocking queries");
        eventually(PATIENCE, &what, async || {
            self.metric("mesh_registry_watchers").await == Some(n)
        })
        .await;
    }
}
