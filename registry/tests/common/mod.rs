//! An in-process registry on 127.0.0.1:0 and a raw HTTP helper for the tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_registry::{Config, Error};
use mesh_registry_api::Client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod etcd;

pub struct TestRegistry {
    pub addr: SocketAddr,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl TestRegistry {
    pub async fn start(config: Config) -> TestRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mesh_registry::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestRegistry {
            addr,
            client: Client::new(&format!("http://{addr}")).unwrap(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn start_default() -> TestRegistry {
        Self::start(Config::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts the registry down the way SIGTERM does and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// One request, answered with its status, headers and body (parsed as JSON when it is).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        raw(method, &self.url(path), headers, body.into()).await
    }

    /// Every instance of `service` in any status (`?all=true`), as JSON.
    pub async fn all_instances(&self, service: &str) -> serde_json::Value {
        let path = format!("/v1/services/{service}?all=true");
        self.raw(Method::GET, &path, &[], Bytes::new()).await.json["instances"].take()
    }

    /// The registry's /metrics text.
    pub async fn metrics(&self) -> String {
        self.raw(Method::GET, "/metrics", &[], Bytes::new())
            .await
            .text
    }

    /// The value of one unlabelled (or fully labelled) sample in /metrics.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
    }

    /// Waits until `n` blocking queries are parked (no sleeps as synchronisation).
    pub async fn until_watchers(&self, n: f64) {
        let what = format!("{n} parked blocking queries");
        eventually(PATIENCE, &what, async || {
            self.metric("mesh_registry_watchers").await == Some(n)
        })
        .await;
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Answer {
    pub fn index(&self) -> u64 {
        self.headers["x-mesh-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The `field` of an error body.
    pub fn error_field(&self) -> Option<&str> {
        self.json["error"]["field"].as_str()
    }

    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

pub async fn raw(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    let client: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

pub const JSON: (&str, &str) = ("content-type", "application/json");

/// How long a test waits for a state it expects before it fails: far more than anything
/// takes on an idle machine, so that a loaded one does not fail the test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds; panics naming `what` (what the test was
/// waiting for) once `bound` has passed. Tests wait for the state they need this way,
/// never with a fixed sleep that a loaded machine can outlast.
pub async fn eventually<F: AsyncFn() -> bool>(bound: Duration, what: &str, condition: F) {
    let started = tokio::time::Instant::now();
    loop {
        if condition().await {
            return;
        }
        if started.elapsed() >= bound {
            panic!("waited {bound:?} for {what}, in vain");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
