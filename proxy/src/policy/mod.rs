//! Traffic policy from the registry: each followed service's documents, kept current by
//! a blocking query on `GET /v1/policy/{service}` and read by requests without a lock.
//!
//! Two sides apply them:
//! - the caller's sidecar follows each destination's `routes` ([`routes`]): which subset
//!   of its instances a request goes to, with what timeout and retries;
//! - the serving sidecar follows its own service's `intentions` ([`authz`]) and `limits`
//!   ([`limit`]) and applies them to inbound calls.
//!
//! What is in force changes only for a document this build can read: one of a `version`
//! it does not know, or that fails its checks, is refused and the previous one of its
//! kind stays, with the reason in `/ready` and `/debug/policy`. While the registry is
//! unreachable the last policy read stays in force too, marked stale.

mod admit;
pub mod authz;
pub mod limit;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_registry_api::policy::{Document, PolicyKind, PolicyListing};
use mesh_registry_api::{Backoff, Client, ClientError};
use serde::Serialize;
use tokio::sync::watch;

use self::authz::{Authz, Denials};
use self::limit::Limiter;
use self::routes::RouteTable;

/// How long each blocking query on the policy may wait on the registry.
const WAIT: Duration = Duration::from_secs(30);

/// The policy of one service, as this sidecar applies it.
pub struct Policy {
    pub service: String,
    /// The kinds this side applies: `routes` for a destination, `intentions` and
    /// `limits` for the local service. Others are not read.
    kinds: &'static [PolicyKind],
    /// Callers' SPIFFE IDs in intentions are read in this trust domain.
    trust_domain: String,
    in_force: ArcSwap<InForce>,
    /// A std Mutex: held to read or write a few fields, never across an await.
    status: Mutex<Status>,
    /// True once the registry answered (or failed to) for the first time.
    pub(crate) received: watch::Sender<bool>,
    /// Recent inbound denials, for `/debug/policy`.
    pub denials: Denials,
}

/// The documents in force, replaced whole when one changes.
#[derive(Default)]
pub struct InForce {
    pub routes: Option<Arc<RouteTable>>,
    pub authz: Option<Arc<Authz>>,
    pub limiter: Option<Arc<Limiter>>,
}

/// How current the policy in force is, and why it may not be.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The registry's policy index last read; 0 before the first answer.
    pub index: u64,
    /// Why the policy in force may be out of date: the registry is unreachable.
    pub stale: Option<String>,
    /// Kinds whose latest document was refused (the previous one stays), and why.
    pub refused: BTreeMap<&'static str, String>,
}

// === impl Policy ===

impl Policy {
    /// The routes of destination `service`, as its callers apply them.
    pub fn destination(service: &str) -> Arc<Policy> {
        Self::new(service, &[PolicyKind::Routes], "")
    }

    /// The intentions and limits of the local `service`, as its own sidecar applies
    /// them; callers are identified in `trust_domain`.
    pub fn serving(service: &str, trust_domain: &str) -> Arc<Policy> {
        Self::new(
            service,
            &[PolicyKind::Intentions, PolicyKind::Limits],
            trust_domain,
        )
    }

    fn new(service: &str, kinds: &'static [PolicyKind], trust_domain: &str) -> Arc<Policy> {
        Arc::new(Policy {
            service: service.to_owned(),
            kinds,
            trust_domain: trust_domain.to_owned(),
            in_force: ArcSwap::from_pointee(InForce::default()),
            status: Mutex::new(Status::default()),
            received: watch::Sender::new(false),
            denials: Denials::default(),
        })
    }

    /// The documents in force now, without locking.
    pub fn in_force(&self) -> arc_swap::Guard<Arc<InForce>> {
        self.in_force.load()
    }

    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    /// What `/ready` says of this policy: why it may not be what the registry holds.
    pub fn problem(&self) -> Option<String> {
        let status = self.status();
        let refused = status
            .refused
            .iter()
            .map(|(kind, why)| format!("{kind} refused: {why}"));
        let problems: Vec<String> = status.stale.into_iter().chain(refused).collect();
        (!problems.is_empty())
            .then(|| format!("policy of {}: {}", self.service, problems.join("; ")))
    }

    /// Keeps the policy current for as long as the task runs.
    pub async fn follow(self: Arc<Self>, registry: Client) {
        let mut index = 0;
        let mut backoff = Backoff::default();
        loop {
            match registry.policy_blocking(&self.service, index, WAIT).await {
                Ok(listing) => {
                    backoff.reset();
                    // An index that went backwards is a registry that restarted: a change.
                    if index == 0 || listing.index != index {
                        self.apply(&listing);
                    } else {
                        self.reachable();
                    }
                    index = listing.index;
                }
                Err(e) => {
                    self.unreachable(&e);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Puts the documents of `listing` in force, kind by kind: one that cannot be read
    /// leaves its kind as it was.
    pub fn apply(&self, listing: &PolicyListing) {
        let current = self.in_force.load();
        let mut next = InForce {
            routes: current.routes.clone(),
            authz: current.authz.clone(),
            limiter: current.limiter.clone(),
        };
        let mut status = self.status.lock().expect("status lock");
        status.index = listing.index;
        status.stale = None;
        for &kind in self.kinds {
            match listing.decode(kind) {
                Ok(document) => {
                    if status.refused.remove(kind.as_str()).is_some() {
                        tracing::info!(service = %self.service, %kind, "policy readable again");
                    }
                    self.put(&mut next, kind, document);
                }
                Err(e) => {
                    let why = e.to_string();
                    if status.refused.get(kind.as_str()) != Some(&why) {
                        tracing::warn!(service = %self.service, %kind, index = listing.index, error = %why,
                            "policy document refused; the previous one stays in force");
                    }
                    status.refused.insert(kind.as_str(), why);
                }
            }
        }
        self.in_force.store(Arc::new(next));
        drop(status);
        tracing::debug!(service = %self.service, index = listing.index, "policy applied");
        self.received.send_replace(true);
    }

    /// `document` (or none) in place of its kind's in `next`. An unchanged one keeps
    /// its state (the buckets of limits).
    fn put(&self, next: &mut InForce, kind: PolicyKind, document: Option<Document>) {
        match (kind, document) {
            (PolicyKind::Routes, Some(Document::Routes(d))) => {
                if next.routes.as_ref().is_none_or(|r| r.document != d) {
                    next.routes = Some(Arc::new(RouteTable::new(d)));
                }
            }
            (PolicyKind::Intentions, Some(Document::Intentions(d))) => {
                if next.authz.as_ref().is_none_or(|a| a.document != d) {
                    next.authz = Some(Arc::new(Authz::new(d, &self.trust_domain)));
                }
            }
            (PolicyKind::Limits, Some(Document::Limits(d))) => {
                if next.limiter.as_ref().is_none_or(|l| l.document != d) {
                    next.limiter = Some(Arc::new(Limiter::new(d)));
                }
            }
            (PolicyKind::Routes, _) => next.routes = None,
            (PolicyKind::Intentions, _) => next.authz = None,
            (PolicyKind::Limits, _) => next.limiter = None,
        }
    }

    /// The registry answered, with nothing new: what is in force is current again.
    fn reachable(&self) {
        let mut status = self.status.lock().expect("status lock");
        if status.stale.take().is_some() {
            tracing::info!(service = %self.service, "policy watch back; the policy in force is current");
        }
    }

    /// The registry could not be asked: what is in force stays, marked stale.
    fn unreachable(&self, e: &ClientError) {
        let why = if e.is_no_route() {
            "the registry does not serve /v1/policy (older than this sidecar)".to_owned()
        } else {
            format!("registry unreachable, keeping the last policy read: {e}")
        };
        let mut status = self.status.lock().expect("status lock");
        if status.stale.as_deref() != Some(why.as_str()) {
            tracing::warn!(service = %self.service, error = %e, "policy watch failed; the policy in force stays");
        }
        status.stale = Some(why);
        drop(status);
        self.received.send_replace(true);
    }

    /// The policy as `/debug/policy` shows it.
    pub fn view(&self) -> PolicyView {
        let in_force = self.in_force();
        let json = |d: Option<serde_json::Value>| d.unwrap_or(serde_json::Value::Null);
        let mut documents = BTreeMap::new();
        for kind in self.kinds {
            let document = match kind {
                PolicyKind::Routes => in_force.routes.as_ref().map(|r| to_json(&r.document)),
                PolicyKind::Intentions => in_force.authz.as_ref().map(|a| to_json(&a.document)),
                PolicyKind::Limits => in_force.limiter.as_ref().map(|l| to_json(&l.document)),
            };
            documents.insert(kind.as_str(), json(document));
        }
        PolicyView {
            service: self.service.clone(),
            status: self.status(),
            documents,
        }
    }
}

fn to_json(document: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(document).expect("policy documents serialize")
}

/// One followed policy as `/debug/policy` shows it.
#[derive(Serialize)]
pub struct PolicyView {
    pub service: String,
    #[serde(flatten)]
    pub status: Status,
    /// The documents in force, by kind (`null`: none).
    #[serde(flatten)]
    pub documents: BTreeMap<&'static str, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listing(index: u64, routes: serde_json::Value, limits: serde_json::Value) -> PolicyListing {
        serde_json::from_value(json!({
            "service": "web", "index": index, "routes": routes, "intentions": null, "limits": limits,
        }))
        .unwrap()
    }

    #[test]
    fn a_document_of_an_unknown_version_leaves_the_previous_one_in_force() {
        let p = Policy::destination("web");
        let v1 = json!({"rules": [{"backends": [{"weight": 100}]}]});
        p.apply(&listing(1, v1.clone(), json!(null)));
        assert!(p.in_force().routes.is_some());
        p.apply(&listing(
            2,
            json!({"version": 2, "rules": "new things"}),
            json!(null),
        ));
        assert!(
            p.in_force().routes.is_some(),
            "the version 1 document stays"
        );
        let status = p.status();
        assert_eq!(status.index, 2);
        assert!(status.refused["routes"].contains("version 2"), "{status:?}");
        assert!(p.problem().unwrap().contains("routes refused"));
        p.apply(&listing(3, json!(null), json!(null)));
        assert!(p.in_force().routes.is_none());
        assert!(p.problem().is_none());
    }

    #[test]
    fn a_policy_is_stale_while_the_registry_is_away_and_current_once_it_answers() {
        let p = Policy::destination("web");
        p.apply(&listing(4, json!({"rules": []}), json!(null)));
        let away = ClientError::Timeout {
            base: "http://r:7700".into(),
            timeout: Duration::from_secs(1),
        };
        p.unreachable(&away);
        assert!(p.problem().unwrap().contains("registry unreachable"));
        assert!(p.in_force().routes.is_some(), "the last policy read stays");
        // Back, with the same index: nothing to apply, but nothing stale either.
        p.reachable();
        assert!(p.problem().is_none());
    }

    #[test]
    fn unchanged_limits_keep_their_buckets() {
        let p = Policy::serving("web", "mesh.local");
        let limits = json!({"rps": 1});
        p.apply(&listing(1, json!(null), limits.clone()));
        let before = p.in_force().limiter.clone().unwrap();
        p.apply(&listing(2, json!({"rules": []}), limits));
        assert!(Arc::ptr_eq(&before, p.in_force().limiter.as_ref().unwrap()));
        assert!(
            p.in_force().routes.is_none(),
            "routes are the callers' to apply"
        );
        p.apply(&listing(3, json!(null), json!({"rps": 2})));
        assert!(!Arc::ptr_eq(
            &before,
            p.in_force().limiter.as_ref().unwrap()
        ));
    }
}
