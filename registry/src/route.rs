//! Routing by path: which route a request path names.
//!
//! Plain matching on segments, apart from the handlers so it can be read and tested on
//! its own. The method is left to the routing table in [`crate::api`], so a known path
//! with a wrong method gets a 405 naming the right ones rather than a 404.

/// A route matched by path alone; the method is checked afterwards.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Services,
    Service(&'a str),
    Instance(&'a str, &'a str),
    Heartbeat(&'a str, &'a str),
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
    PrometheusTargets,
    CaSign,
    CaBundle,
}

pub fn target(path: &str) -> Option<Target<'_>> {
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
        assert_eq!(target("/"), None);
        assert_eq!(target("//v1/services"), None);
    }
}
