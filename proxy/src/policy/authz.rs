//! A serving service's `intentions`, as its own sidecars apply them to inbound calls:
//! who may call, judged on the identity the caller proved over mTLS.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use http::Request;
use mesh_registry_api::policy::{Action, Intention, Intentions, Mode};
use serde::Serialize;

use crate::grpc;

/// How many denials `/debug/policy` keeps.
const RECENT_DENIALS: usize = 32;

/// The rule name a denial by `default: deny` is counted under.
pub const DEFAULT_RULE: &str = "default";

/// An `intentions` document, ready to judge calls.
#[derive(Debug)]
pub struct Authz {
    pub document: Intentions,
    /// SPIFFE IDs are compared in this trust domain: callers prove a service name in it.
    trust_domain: String,
}

/// A rule that denies a call: enforced (the call is refused) or shadow (it goes
/// through, and the denial is only recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub rule: String,
    pub mode: Mode,
}

/// What the intentions say of one call: the enforced denial if it is refused, and any
/// shadow rule that would have denied it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    pub denied: Option<Denial>,
    pub shadow: Option<Denial>,
}

/// Denials as `/debug/policy` lists them, newest last.
#[derive(Default)]
pub struct Denials {
    /// A std Mutex: held to push or copy a few entries, never across an await.
    recent: Mutex<VecDeque<DenialView>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DenialView {
    /// Unix time, in seconds.
    pub at: u64,
    pub caller: String,
    pub rule: String,
    pub mode: &'static str,
    pub method: String,
    pub path: String,
}

// === impl Authz ===

impl Authz {
    pub fn new(document: Intentions, trust_domain: &str) -> Self {
        Authz {
            document,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// Judges a call from `caller` (the service it proved over mTLS, none when it proved
    /// none). The first rule that matches decides, but a shadow rule only records what it
    /// would deny: the call is judged on as if the rule were not there, so a dry run
    /// changes nothing but the record.
    pub fn judge<B>(&self, caller: Option<&str>, head: &Request<B>) -> Judgement {
        let mut judgement = Judgement::default();
        for rule in &self.document.rules {
            if !self.applies(rule, caller, head) {
                continue;
            }
            let denial = || Denial {
                rule: rule.name.clone(),
                mode: rule.mode,
            };
            match (rule.action, rule.mode) {
                (Action::Deny, Mode::Shadow) => {
                    judgement.shadow.get_or_insert_with(denial);
                }
                (Action::Deny, Mode::Enforce) => {
                    judgement.denied = Some(denial());
                    return judgement;
                }
                (Action::Allow, _) => return judgement,
            }
        }
        if self.document.default == Action::Deny {
            judgement.denied = Some(Denial {
                rule: DEFAULT_RULE.to_owned(),
                mode: Mode::Enforce,
            });
        }
        judgement
    }

    fn applies<B>(&self, rule: &Intention, caller: Option<&str>, head: &Request<B>) -> bool {
        let from = match rule.from.as_str() {
            "*" => true,
            id if id.starts_with("spiffe://") => caller.is_some_and(|service| {
                mesh_registry_api::spiffe_id(&self.trust_domain, service) == id
            }),
            service => caller == Some(service),
        };
        let path = head.uri().path();
        let paths = rule
            .paths
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| path.starts_with(p.as_str())));
        let methods = rule
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == head.method().as_str()));
        let calls = rule.grpc.as_ref().is_none_or(|calls| {
            let call = path.strip_prefix('/').and_then(|p| p.split_once('/'));
            let Some((service, method)) = call.filter(|_| grpc::is_grpc(head.headers())) else {
                return false;
            };
            calls.iter().any(|c| match c.split_once('/') {
                Some((s, "*")) => s == service,
                Some((s, m)) => s == service && m == method,
                None => false,
            })
        });
        from && paths && methods && calls
    }
}

// === impl Denials ===

impl Denials {
    pub fn record<B>(&self, caller: &str, denial: &Denial, head: &Request<B>) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let view = DenialView {
            at,
            caller: caller.to_owned(),
            rule: denial.rule.clone(),
            mode: denial.mode.as_str(),
            method: head.method().to_string(),
            path: head.uri().path().to_owned(),
        };
        let mut recent = self.recent.lock().expect("denials lock");
        if recent.len() == RECENT_DENIALS {
            recent.pop_front();
        }
        recent.push_back(view);
    }

    pub fn recent(&self) -> Vec<DenialView> {
        self.recent
            .lock()
            .expect("denials lock")
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use mesh_registry_api::policy::{Document, PolicyKind};
    use serde_json::json;

    use super::*;

    fn authz(doc: serde_json::Value) -> Authz {
        let body = serde_json::to_vec(&doc).unwrap();
        match Document::parse(PolicyKind::Intentions, &body).unwrap() {
            Document::Intentions(i) => Authz::new(i, "mesh.local"),
            _ => unreachable!(),
        }
    }

    fn head(method: &str, path: &str, grpc: bool) -> Request<()> {
        let mut request = http::Request::builder().method(method).uri(path);
        if grpc {
            request = request.header("content-type", "application/grpc");
        }
        request.body(()).unwrap()
    }

    fn denied_by(j: Judgement) -> Option<String> {
        j.denied.map(|d| d.rule)
    }

    #[test]
    fn the_first_matching_rule_decides_and_none_means_the_default() {
        let a = authz(json!({"rules": [
            {"name": "web-ok", "from": "web", "action": "allow"},
            {"name": "no-batch", "from": "batch", "action": "deny"},
            {"name": "others", "from": "*", "action": "deny", "paths": ["/admin"]},
        ]}));
        let get = |p| head("GET", p, false);
        assert_eq!(denied_by(a.judge(Some("web"), &get("/admin"))), None);
        assert_eq!(
            denied_by(a.judge(Some("batch"), &get("/"))).as_deref(),
            Some("no-batch")
        );
        assert_eq!(
            denied_by(a.judge(None, &get("/admin/x"))).as_deref(),
            Some("others")
        );
        assert_eq!(
            denied_by(a.judge(None, &get("/public"))),
            None,
            "default allow"
        );
        let closed =
            authz(json!({"default": "deny", "rules": [{"from": "web", "action": "allow"}]}));
        assert_eq!(denied_by(closed.judge(Some("web"), &get("/"))), None);
        assert_eq!(
            denied_by(closed.judge(Some("batch"), &get("/"))).as_deref(),
            Some(DEFAULT_RULE)
        );
        assert_eq!(
            denied_by(closed.judge(None, &get("/"))).as_deref(),
            Some(DEFAULT_RULE)
        );
    }

    #[test]
    fn callers_are_named_by_service_or_spiffe_id() {
        let a = authz(json!({"rules": [
            {"from": "spiffe://mesh.local/service/batch", "action": "deny"},
            {"from": "spiffe://elsewhere/service/web", "action": "deny"},
        ]}));
        let get = head("GET", "/", false);
        assert!(a.judge(Some("batch"), &get).denied.is_some());
        assert!(
            a.judge(Some("web"), &get).denied.is_none(),
            "another trust domain's web"
        );
        assert!(a.judge(None, &get).denied.is_none());
    }

    #[test]
    fn narrowing_lists_must_all_hold() {
        let a = authz(
            json!({"rules": [{"from": "*", "action": "deny", "methods": ["POST", "DELETE"],
            "grpc": ["pkg.Svc/Write", "pkg.Admin/*"]}]}),
        );
        assert!(
            a.judge(None, &head("POST", "/pkg.Svc/Write", true))
                .denied
                .is_some()
        );
        assert!(
            a.judge(None, &head("POST", "/pkg.Admin/Drop", true))
                .denied
                .is_some()
        );
        assert!(
            a.judge(None, &head("POST", "/pkg.Svc/Read", true))
                .denied
                .is_none()
        );
        assert!(
            a.judge(None, &head("GET", "/pkg.Svc/Write", true))
                .denied
                .is_none()
        );
        assert!(
            a.judge(None, &head("POST", "/pkg.Svc/Write", false))
                .denied
                .is_none(),
            "not gRPC"
        );
    }

    #[test]
    fn a_shadow_denial_is_recorded_and_judgement_goes_on() {
        let a = authz(json!({"rules": [
            {"name": "dry", "from": "*", "action": "deny", "mode": "shadow"},
            {"name": "real", "from": "batch", "action": "deny"},
        ]}));
        let get = head("GET", "/", false);
        let web = a.judge(Some("web"), &get);
        assert_eq!(web.denied, None);
        assert_eq!(
            web.shadow,
            Some(Denial {
                rule: "dry".into(),
                mode: Mode::Shadow
            })
        );
        let batch = a.judge(Some("batch"), &get);
        assert_eq!(denied_by(batch).as_deref(), Some("real"));
    }

    #[test]
    fn recent_denials_are_bounded() {
        let d = Denials::default();
        let denial = Denial {
            rule: "r".into(),
            mode: Mode::Enforce,
        };
        for i in 0..40 {
            d.record(&format!("c{i}"), &denial, &head("GET", "/", false));
        }
        let recent = d.recent();
        assert_eq!(recent.len(), RECENT_DENIALS);
        assert_eq!(recent.last().unwrap().caller, "c39");
    }
}
