//! docs/proxy.md's metrics table against what sidecars export on `/metrics`: every
//! family exported is documented, every documented one is exported, with the labels the
//! table gives it.
//!
//! A labelled family with no series yet is left out of `/metrics`, so the mesh here is
//! set up to give every family one: two sidecars with mTLS (inbound connections, the
//! certificate's gauges), the called one with an allow-list (policy denials at zero), and
//! one call between them (requests, responses, latency on both sides; the caller's
//! per-destination families), and one upgraded connection (the spliced families).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::{App, JOIN_TOKEN, PATIENCE, Registry, Sidecar, SidecarSpec};
use http::StatusCode;
use mesh_proxy::tls::TlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Metric family name → its label names.
type Families = BTreeMap<String, BTreeSet<String>>;

const DOC: &str = include_str!("../../docs/proxy.md");

#[tokio::test]
async fn the_metrics_table_lists_exactly_what_sidecars_export() {
    let registry = Registry::start_with_ca(Duration::from_secs(86_400)).await;
    let web_app = App::start("web-1").await;
    let web = meshed(&registry, "web", &web_app, &["marketplace"]).await;
    let caller_app = App::start("marketplace").await;
    let caller = meshed(&registry, "marketplace", &caller_app, &[]).await;
    registry.until_passing("web", 1).await;

    let answer = common::get_h1(caller.outbound, "web", "/whoami").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // A response is counted once its stream has ended, which may be just after the
    // caller has read it.
    let counted = "mesh_response_latency_seconds_count";
    common::eventually(PATIENCE, "the call counted by both sidecars", async || {
        web.metrics().await.contains(counted) && caller.metrics().await.contains(counted)
    })
    .await;

    // An upgraded connection, carried to its end: the spliced families.
    let shout = meshed_at(&registry, "shout", common::shouting_app().await, &[]).await;
    registry.until_passing("shout", 1).await;
    let mut upgraded = TcpStream::connect(caller.outbound).await.unwrap();
    let request = "GET / HTTP/1.1\r\nhost: shout\r\nconnection: upgrade\r\nupgrade: shout\r\n\r\n";
    upgraded.write_all(request.as_bytes()).await.unwrap();
    let head = common::read_head(&mut upgraded).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    upgraded.write_all(b"hi").await.unwrap();
    upgraded.shutdown().await.unwrap();
    let mut rest = Vec::new();
    upgraded.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"HIbye");
    let closed = "mesh_spliced_closed_total";
    common::eventually(
        PATIENCE,
        "the upgraded connection counted closed",
        async || shout.metrics().await.contains(closed) && caller.metrics().await.contains(closed),
    )
    .await;

    let mut exported = families(&web.metrics().await);
    for (name, labels) in families(&shout.metrics().await) {
        exported.entry(name).or_default().extend(labels);
    }
    for (name, labels) in families(&caller.metrics().await) {
        exported.entry(name).or_default().extend(labels);
    }
    let documented = documented();
    assert!(!documented.is_empty(), "no metrics table in docs/proxy.md");

    let mut wrong = Vec::new();
    for (name, labels) in &exported {
        match documented.get(name) {
            None => wrong.push(format!(
                "{name} is exported but not in docs/proxy.md's metrics table"
            )),
            Some(listed) if listed != labels => wrong.push(format!(
                "{name}: docs/proxy.md lists labels {listed:?}, sidecars export {labels:?}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys().filter(|n| !exported.contains_key(*n)) {
        wrong.push(format!(
            "{name} is in docs/proxy.md's metrics table but no sidecar here exports it \
             (one that appears only after some event needs that event in this test)"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A sidecar for `service` in front of `app`, strict mTLS, admitting `allow`.
async fn meshed(registry: &Registry, service: &str, app: &App, allow: &[&str]) -> Sidecar {
    meshed_at(registry, service, app.addr, allow).await
}

async fn meshed_at(registry: &Registry, service: &str, app: SocketAddr, allow: &[&str]) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app);
    spec.config.tls.mode = TlsMode::Strict;
    spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    spec.config.tls.allow = allow.iter().map(|s| s.to_string()).collect();
    Sidecar::start(spec).await
}

/// The families in a Prometheus text body, with the label names of their series
/// (`le`, the histogram buckets' own, left out).
fn families(text: &str) -> Families {
    let mut families = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            families.entry(name.to_owned()).or_default();
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, labels) = match line.split_once('{') {
            Some((series, rest)) => (series, label_names(rest)),
            None => (line.split(' ').next().unwrap(), BTreeSet::new()),
        };
        let family = ["_bucket", "_sum", "_count", ""]
            .iter()
            .filter_map(|suffix| series.strip_suffix(suffix))
            .find(|name| families.contains_key(*name))
            .unwrap_or_else(|| panic!("{series} has no # TYPE line"));
        let names = families.get_mut(family).unwrap();
        names.extend(labels.into_iter().filter(|l| l != "le"));
    }
    families
}

/// The label names of `a="x",b="y"} 1`.
fn label_names(mut rest: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    while let Some((name, after)) = rest.split_once("=\"") {
        names.insert(name.trim_start_matches(',').to_owned());
        // The value ends at the first quote not escaped by a backslash.
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let ends = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                ends
            })
            .map(|(i, _)| i)
            .expect("a closed label value");
        rest = &after[end + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

/// The rows of the table under "## Metrics" in docs/proxy.md: the metric in the first
/// column, its labels (comma-separated, or none) in the second.
fn documented() -> Families {
    let section = DOC
        .split("\n## ")
        .find(|s| s.starts_with("Metrics\n"))
        .expect("a Metrics section in docs/proxy.md");
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let labels = cells[2]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            (name.to_owned(), labels)
        })
        .collect()
}
