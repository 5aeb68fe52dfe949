//! Routing by path: which route a request path names.
//!
//! Plain matching on segments, apart from the handlers so it can be read and tested on
//! its own. The method is left to the routing table in [`crate::api`], so a known path
//! with a wrong method gets a 405 naming the right ones rather than a 404.

use mesh_registry_api::AdminPath;
use mesh_registry_api::policy::PolicyKind;

use crate::ui::{self, Asset};

/// A route matched by path alone; the method is checked afterwards.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Services,
    Service(&'a str),
    Instance(&'a str, &'a str),
    Heartbeat(&'a str, &'a str),
    /// One of an instance's sidecar admin pages, read by the registry.
    SidecarAdmin(&'a str, &'a str, AdminPath),
    /// Every policy document of a service (what sidecars follow).
    Policy(&'a str),
    /// One policy document of a service.
    PolicyDocument(&'a str, PolicyKind),
    Events,
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
    PrometheusTargets,
    CaSign,
    CaBundle,
    /// `/` and `/ui`, redirected to the dashboard.
    ToDashboard,
    /// A file of the dashboard under `/ui/`.
    Ui(&'static Asset),
}

pub fn target(path: &str) -> Option<Target<'_>> {
    // The dashboard's paths are matched as they are: `/ui/` keeps its slash, which its
    // relative links need.
    if path == "/" || path == "/ui" {
        return Some(Target::ToDashboard);
    }
    if let Some(name) = path.strip_prefix(ui::PATH) {
        return ui::asset(name).map(Target::Ui);
    }
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["v1", "services"] => Target::Services,
        ["v1", "services", service] => Target::Service(service),
        ["v1", "services", service, "instances", id] => Target::Instance(service, id),
        ["v1", "services", service, "instances", id, "heartbeat"] => Target::Heartbeat(service, id),
        [
            "v1",
            "services",
            service,
            "instances",
            id,
            "admin",
            page @ ..,
        ] => {
            let page = match page {
                ["ready"] => AdminPath::Ready,
                ["metrics"] => AdminPath::Metrics,
                ["debug", "endpoints"] => AdminPath::DebugEndpoints,
                ["debug", "policy"] => AdminPath::DebugPolicy,
                ["tap"] => AdminPath::Tap,
                _ => return None,
            };
            Target::SidecarAdmin(service, id, page)
        }
        ["v1", "policy", service] => Target::Policy(service),
        ["v1", "policy", service, kind] => Target::PolicyDocument(service, kind.parse().ok()?),
        ["v1", "events"] => Target::Events,
        ["metrics"] => Target::Metrics,
        ["healthz"] => Target::Healthz,
        ["readyz"] => Target::Readyz,
        ["openapi.json"] => Target::OpenApi,
        ["v1", "prometheus", "targets"] => Target::PrometheusTargets,
        ["v1", "ca", "sign"] => Target::CaSign,
        ["v1", "ca", "bundle"] => Target::CaBundle,
        _ => return None,
    })
}

// === impl Target ===

impl Target<'_> {
    /// The `Allow` header of a 405 on this route.
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Target::Instance(..) => "PUT, DELETE",
            Target::Heartbeat(..) => "PUT",
            Target::PolicyDocument(..) => "GET, PUT, DELETE",
            Target::CaSign => "POST",
            _ => "GET",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_by_segment() {
        assert_eq!(target("/v1/services"), Some(Target::Services));
        assert_eq!(target("/v1/services/"), Some(Target::Services));
        assert_eq!(target("/v1/services/web"), Some(Target::Service("web")));
        assert_eq!(
            target("/v1/services/web/instances/a/heartbeat"),
            Some(Target::Heartbeat("web", "a"))
        );
        assert_eq!(target("/v1/services/web/instances"), None);
        assert_eq!(target("/v1/policy/web"), Some(Target::Policy("web")));
        assert_eq!(
            target("/v1/policy/web/routes"),
            Some(Target::PolicyDocument("web", PolicyKind::Routes))
        );
        assert_eq!(target("/v1/policy/web/route"), None);
        assert_eq!(target("//v1/services"), None);
    }

    #[test]
    fn only_the_sidecars_read_only_pages_are_routed() {
        let admin = |page| Some(Target::SidecarAdmin("web", "a", page));
        let base = "/v1/services/web/instances/a/admin";
        assert_eq!(target(&format!("{base}/ready")), admin(AdminPath::Ready));
        assert_eq!(
            target(&format!("{base}/metrics")),
            admin(AdminPath::Metrics)
        );
        assert_eq!(
            target(&format!("{base}/debug/endpoints")),
            admin(AdminPath::DebugEndpoints)
        );
        assert_eq!(
            target(&format!("{base}/debug/policy")),
            admin(AdminPath::DebugPolicy)
        );
        assert_eq!(target(&format!("{base}/tap")), admin(AdminPath::Tap));
        for other in [
            "",
            "/shutdown",
            "/debug",
            "/live",
            "/metrics/x",
            "/../metrics",
        ] {
            assert_eq!(target(&format!("{base}{other}")), None, "{other}");
        }
    }

    #[test]
    fn the_dashboard_is_at_ui_with_its_slash() {
        assert_eq!(target("/"), Some(Target::ToDashboard));
        assert_eq!(target("/ui"), Some(Target::ToDashboard));
        assert!(matches!(target("/ui/"), Some(Target::Ui(a)) if a.name.is_empty()));
        assert!(matches!(target("/ui/app.js"), Some(Target::Ui(a)) if a.name == "app.js"));
        assert_eq!(target("/ui/missing.js"), None);
        assert_eq!(target("/ui//"), None);
    }
}
