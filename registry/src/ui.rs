//! The dashboard at `/ui/`: one HTML page with its stylesheet and scripts, compiled into
//! the binary so the registry stays a single file to deploy.
//!
//! Plain HTML, CSS and JavaScript modules, no build step: the page reads the registry's
//! own API (blocking queries on `/v1/services` and `/v1/events`, services' policies from
//! `/v1/policy/{s}`, the sidecars' admin pages through
//! `/v1/services/{s}/instances/{id}/admin/…`, those by a worker off the page's main
//! thread), exactly as any other client would. The sources are in `registry/src/ui/`.
//!
//! Every string registered or written as policy (tags, metadata, health-check output,
//! header values, subsets) is chosen by whoever may write it, so the page only ever
//! inserts them as text, and a Content-Security-Policy keeps the page to its own scripts
//! and styles should one slip through.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::respond::{Body, whole};

/// Where `/` and `/ui` send browsers.
pub const PATH: &str = "/ui/";

/// One file of the dashboard.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its name under `/ui/`; the page itself is the empty name.
    pub name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("ui/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/api.js"),
    },
    Asset {
        name: "figures.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/figures.js"),
    },
    Asset {
        name: "sidecars.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/sidecars.js"),
    },
    Asset {
        name: "sidecar-reader.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/sidecar-reader.js"),
    },
    Asset {
        name: "policy.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/policy.js"),
    },
    Asset {
        name: "tap.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/tap.js"),
    },
    Asset {
        name: "view.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/view.js"),
    },
];

/// Scripts and styles from the registry only; no frames, no forms, no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset served at `/ui/{name}`.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// Every asset's name, for the tests and the OpenAPI document's check.
pub fn names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

// === impl Asset ===

impl Asset {
    /// The file, with headers that make browsers check for a newer one on every load
    /// (it changes with the binary, under the same URL).
    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(whole(Bytes::from_static(self.body.as_bytes())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }
}

/// A permanent redirect to the dashboard, for `/` (what users of other registries open
/// first) and `/ui` (whose relative links would otherwise resolve against `/`).
pub fn redirect() -> Response<Body> {
    let mut response = Response::new(whole(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(PATH));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_every_script_and_style_it_needs() {
        let page = asset("").unwrap().body;
        assert!(page.contains(r#"href="style.css""#));
        assert!(page.contains(r#"src="app.js""#));
        for module in [
            "api.js",
            "figures.js",
            "sidecars.js",
            "policy.js",
            "tap.js",
            "view.js",
        ] {
            let imported = ASSETS
                .iter()
                .any(|a| a.body.contains(&format!("from \"./{module}\"")));
            assert!(imported, "{module} is served but imported by no script");
        }
        let started = ASSETS.iter().any(|a| {
            a.body
                .contains("new Worker(new URL(\"./sidecar-reader.js\"")
        });
        assert!(
            started,
            "sidecar-reader.js is served but started by no script"
        );
        assert!(asset("nope.js").is_none());
    }

    /// The keys `reader` reads from `object` (`object.key`) in the sidecar reader's
    /// function `function`.
    fn read_keys(function: &str, object: &str) -> Vec<String> {
        let body = asset("sidecar-reader.js").unwrap().body;
        let start = body.find(&format!("function {function}(")).unwrap();
        let end = body[start..].find("\n}\n").unwrap() + start;
        let pattern = format!("{object}.");
        let mut keys: Vec<String> = body[start..end]
            .match_indices(&pattern)
            .filter(|(at, _)| {
                let before = body[..start + at].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            })
            .map(|(at, _)| {
                let rest = &body[start + at + pattern.len()..];
                let len = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                rest[..len].to_owned()
            })
            .filter(|key| key != "length" && key != "slice")
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The keys a value of `T` is written with.
    fn written_keys<T: serde::Serialize>(value: T) -> Vec<String> {
        let json = serde_json::to_value(value).unwrap();
        json.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_dashboard_reads_only_fields_sidecars_write() {
        use mesh_registry_api::sidecar::{DestinationView, EndpointView, SidecarReadiness};
        let full = SidecarReadiness {
            reason: Some(String::new()),
            status: Some(mesh_registry_api::Status::Passing),
            ..SidecarReadiness::default()
        };
        for (function, object, written) in [
            (
                "destinations",
                "d",
                written_keys(DestinationView::default()),
            ),
            ("destinations", "e", written_keys(EndpointView::default())),
            ("readiness", "ready", written_keys(full)),
        ] {
            let read = read_keys(function, object);
            assert!(!read.is_empty(), "{function} reads no field of {object}");
            for key in read {
                assert!(
                    written.contains(&key),
                    "the dashboard reads {object}.{key}, which sidecars do not write \
                     (they write {written:?})"
                );
            }
        }
    }
}
