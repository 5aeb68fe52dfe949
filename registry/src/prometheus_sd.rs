//! Prometheus' HTTP service discovery (`GET /v1/prometheus/targets`): every sidecar that
//! registered its admin address becomes a scrape target.
//!
//! A module of its own because it answers in Prometheus' format rather than the
//! registry's, and nothing else depends on it.

use std::collections::BTreeMap;

use mesh_registry_api::ADMIN_METADATA;

use crate::catalog::Catalog;

/// One target group of Prometheus' HTTP service discovery format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

// === impl Catalog ===

impl Catalog {
    /// Prometheus HTTP service discovery: one target group per instance that registered
    /// a sidecar admin address (metadata `admin`), labelled with its service and id.
    /// Instances in every state are listed: a sidecar whose app is failing still has
    /// metrics worth scraping.
    pub fn prometheus_targets(&self) -> Vec<TargetGroup> {
        let mut groups = Vec::new();
        self.each_service(|service, instances| {
            for (id, e) in instances {
                let Some(admin) = e.registration.metadata.get(ADMIN_METADATA) else {
                    continue;
                };
                groups.push(TargetGroup {
                    targets: vec![admin.clone()],
                    labels: BTreeMap::from([
                        ("service".to_owned(), service.to_owned()),
                        ("instance".to_owned(), id.clone()),
                        ("status".to_owned(), e.status().as_str().to_owned()),
                    ]),
                });
            }
        });
        groups.sort_by(|a, b| a.labels.cmp(&b.labels));
        groups
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_registry_api::Registration;
    use tokio::time::Instant;

    use super::*;

    fn reg(addr: &str) -> Registration {
        Registration::new(addr)
    }

    #[tokio::test(start_paused = true)]
    async fn prometheus_targets_are_the_registered_admin_addresses() {
        let c = Catalog::new(Duration::from_secs(30));
        let mut r = reg("10.0.0.7:4143");
        r.metadata
            .insert(ADMIN_METADATA.into(), "10.0.0.7:4191".into());
        c.register("web", "web-1", r, "o", Instant::now()).unwrap();
        c.register("web", "no-sidecar", reg("10.0.0.8:80"), "o", Instant::now())
            .unwrap();
        let groups = c.prometheus_targets();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].targets, vec!["10.0.0.7:4191".to_owned()]);
        assert_eq!(groups[0].labels["service"], "web");
        assert_eq!(groups[0].labels["instance"], "web-1");
        assert_eq!(groups[0].labels["status"], "passing");
    }
}
