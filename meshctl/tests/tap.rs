//! `meshctl tap SERVICE`: the calls real sidecars see, live, through the registry's
//! relay (or their admin ports with `--direct`): a line per call as calls are made, only
//! the calls the filter lets through, one sidecar's outbound calls with `--via`, the
//! sidecars' JSON lines with `-o json`, and the operator token asked for where the
//! registry has credentials.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{PATIENCE, Registry, Shape, Sidecar, call, eventually, meshctl};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};

const OPERATOR: &str = "operator-secret";

/// A sidecar in front of its own app that shows `x-visible` in taps, writing to the
/// registry with `token` (the operator's, where the registry has credentials).
async fn tapped(registry: &Registry, service: &str, token: Option<&'static str>) -> Sidecar {
    let shape = Shape {
        registry_token: token,
        tap_headers: &["x-visible"],
        ..Shape::default()
    };
    Sidecar::start_shaped(registry, service, shape).await
}

/// A `meshctl tap` running, its output collected line by line as it comes.
struct Tap {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Killed when the test ends.
    _child: tokio::process::Child,
}

impl Tap {
    fn start(registry: &Registry, args: &[&str]) -> Tap {
        let mut child = meshctl(&registry.url(), args).spawn().unwrap();
        let collect = |pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let into = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    into.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Tap {
            stdout,
            stderr,
            _child: child,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn notes(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Calls `path` through `caller`'s outbound listener until a tapped line has
    /// `wanted` in it; returns the lines printed by then.
    async fn until_line(&self, caller: &Sidecar, host: &str, paths: &[&str], wanted: &str) {
        let what = format!("a tapped line with {wanted:?}");
        eventually(PATIENCE, &what, async || {
            for path in paths {
                call(caller.outbound, host, path).await;
            }
            self.lines().iter().any(|l| l.contains(wanted))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_calls_are_printed_as_they_are_made() {
    let registry = Registry::start().await;
    let recs = tapped(&registry, "recs", None).await;
    let web = tapped(&registry, "web", None).await;
    let tap = Tap::start(&registry, &["tap", "recs"]);
    eventually(
        PATIENCE,
        "meshctl saying which sidecar it taps",
        async || tap.notes().contains(&format!("tapping {}", recs.name())),
    )
    .await;

    tap.until_line(&web, "recs", &["/orders/7"], "/orders/7")
        .await;
    let line = tap
        .lines()
        .into_iter()
        .find(|l| l.contains("/orders/7"))
        .unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    // time, sidecar, direction, service, method, path, status, duration.
    assert_eq!(
        cells[1..7],
        [
            recs.name().as_str(),
            "inbound",
            "recs",
            "GET",
            "/orders/7",
            "200"
        ],
        "{line}"
    );
    assert!(cells[7].ends_with("ms"), "{line}");
    // Only recs' inbound calls: none of web's.
    assert!(
        tap.lines()
            .iter()
            .all(|l| l.contains(" inbound ") && l.contains(&recs.name()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_filter_excludes_are_not_printed() {
    let registry = Registry::start().await;
    let _recs = tapped(&registry, "recs", None).await;
    let web = tapped(&registry, "web", None).await;
    let tap = Tap::start(
        &registry,
        &["tap", "recs", "--status", "5xx", "--path-prefix", "/status"],
    );

    // Calls the filter excludes (by path, by status) go first each round, on one sidecar
    // whose tap keeps their order: had they passed, they would show before the one it
    // lets through.
    tap.until_line(
        &web,
        "recs",
        &["/other", "/status/200", "/status/503"],
        "/status/503",
    )
    .await;
    let lines = tap.lines();
    assert!(
        lines
            .iter()
            .all(|l| l.contains("/status/503") && l.contains(" 503 ")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_a_caller_its_outbound_calls_show_with_tries_and_endpoint() {
    let registry = Registry::start().await;
    let _recs = tapped(&registry, "recs", None).await;
    let web = tapped(&registry, "web", None).await;
    let tap = Tap::start(
        &registry,
        &[
            "tap",
            "recs",
            "--via",
            &web.name(),
            "--direction",
            "outbound",
        ],
    );

    tap.until_line(&web, "recs", &["/from-web"], "/from-web")
        .await;
    let line = tap
        .lines()
        .into_iter()
        .find(|l| l.contains("/from-web"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "{}  outbound  recs  GET /from-web  200",
            web.name()
        )),
        "{line}"
    );
    assert!(
        line.contains("tries=1") && line.contains("endpoint=127.0.0.1:"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_the_sidecars_with_header_values_redacted_unless_named() {
    let registry = Registry::start().await;
    let _recs = tapped(&registry, "recs", None).await;
    let web = tapped(&registry, "web", None).await;
    // Straight to the admin port, as meshctl beside the sidecars would.
    let tap = Tap::start(&registry, &["--direct", "-o", "json", "tap", "recs"]);

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    eventually(PATIENCE, "a tapped JSON line with headers", async || {
        let request = Request::get(format!("http://{}/json", web.outbound))
            .header("host", "recs")
            .header("x-visible", "shown")
            .header("x-secret", "hidden")
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        tap.lines().iter().any(|l| l.contains("\"/json\""))
    })
    .await;
    let line = tap
        .lines()
        .into_iter()
        .find(|l| l.contains("\"/json\""))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["direction"], "inbound");
    assert_eq!(event["service"], "recs");
    assert_eq!(event["status"], 200);
    assert_eq!(event["headers"]["x-visible"], "shown");
    assert_eq!(event["headers"]["x-secret"], "[redacted]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_credentials_needs_the_operator_token() {
    let config = mesh_registry::Config {
        token: Some(OPERATOR.to_owned()),
        ..mesh_registry::Config::default()
    };
    let registry = Registry::start_with(config).await;
    let _recs = tapped(&registry, "recs", Some(OPERATOR)).await;
    let web = tapped(&registry, "web", Some(OPERATOR)).await;

    let refused = common::finish(meshctl(&registry.url(), &["tap", "recs"]).spawn().unwrap()).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("the registry needs the operator token to tap (--token)"),
        "{}",
        refused.stderr
    );

    let tap = Tap::start(&registry, &["--token", OPERATOR, "tap", "recs"]);
    tap.until_line(&web, "recs", &["/with-token"], "/with-token")
        .await;
    assert!(tap.notes().contains("tapping recs/"), "{}", tap.notes());
}

#[tokio::test]
async fn filters_the_sidecar_would_refuse_are_refused_naming_the_flag() {
    let run = common::run("http://127.0.0.1:1", &["tap", "recs", "--status", "6xx"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--status"), "{}", run.stderr);
}
