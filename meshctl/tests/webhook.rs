//! `meshctl inject-webhook` over HTTPS with real AdmissionReview requests: the patched pod
//! is the pod `meshctl inject` prints, opt-outs and refusals follow the entry's path, and the
//! listener is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshctl::inject::{Mode, Options};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

struct Webhook {
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Webhook {
    /// A webhook serving with a certificate from a new mesh CA, as `mesh-registry
    /// gen-cert` writes it, and a client that trusts only that CA.
    async fn start(mode: Mode) -> Webhook {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_registry::ca::Ca::generate("mesh.local").unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), &ca.key_pem).unwrap();
        let out = dir.path().join("tls");
        mesh_registry::ca::write_server_cert(dir.path(), &["localhost".into()], 1, &out).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(out.join("tls.crt"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(out.join("tls.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = Options {
            mode,
            ..Options::default()
        };
        tokio::spawn(meshctl::inject::webhook::serve(
            listener,
            Arc::new(server),
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        Webhook {
            addr,
            client: Arc::new(client),
            _stop: stop,
            _dir: dir,
        }
    }

    /// `method path` with `body`, over HTTPS to "localhost": the status and body.
    async fn send(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    /// The response to an AdmissionReview of creating `pod`.
    async fn review(&self, options: &str, pod: &Value) -> Value {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
            },
        });
        let path = format!("/inject{options}");
        let (status, body) = self
            .send("POST", &path, review.to_string().into_bytes())
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        answer["response"].clone()
    }
}

/// A Deployment's pod as the API server asks about it: named by generateName only.
fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9c6b5f4-",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "web"},
            "annotations": annotations,
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "shop/web:1.4",
                "ports": [{"name": "grpc", "containerPort": 50051}],
                "readinessProbe": {"grpc": {"port": 50051}},
            }],
        },
    })
}

/// `pod` with the response's JSON Patch applied (the webhook only adds whole members).
fn patched(pod: &Value, response: &Value) -> Value {
    use base64::Engine;
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let mut pod = pod.clone();
    for op in patch {
        assert_eq!(op["op"], "add");
        let target = pod.pointer_mut(op["path"].as_str().unwrap()).unwrap();
        *target = op["value"].clone();
    }
    pod
}

/// What `meshctl inject` prints for `pod`, as JSON.
fn injected_offline(pod: &Value, mode: Mode) -> Value {
    let options = Options {
        mode,
        ..Options::default()
    };
    let yaml = serde_norway::to_string(pod).unwrap();
    let mut out = Vec::new();
    meshctl::inject::run(
        &["-".into()],
        &options,
        true,
        &mut yaml.as_bytes(),
        &mut out,
    )
    .unwrap();
    let value: serde_norway::Value = serde_norway::from_slice(&out).unwrap();
    serde_json::to_value(value).unwrap()
}

#[tokio::test]
async fn an_annotated_pod_is_patched_into_what_meshctl_inject_prints() {
    for mode in [Mode::Native, Mode::Container] {
        let webhook = Webhook::start(mode).await;
        let asked = pod(json!({"mesh.dev/inject": "enabled"}));
        let response = webhook.review("", &asked).await;
        assert_eq!(response["allowed"], true, "{response}");
        let meshed = patched(&asked, &response);
        assert_eq!(meshed, injected_offline(&asked, mode), "{mode:?}");
        let list = match mode {
            Mode::Native => "initContainers",
            Mode::Container => "containers",
        };
        assert_eq!(meshed["spec"][list][0]["name"], "mesh-proxy");
        let env = meshed["spec"][list][0]["env"].as_array().unwrap();
        let service = env.iter().find(|e| e["name"] == "MESH_SERVICE").unwrap();
        assert_eq!(service["value"], "web", "named after its app label");
    }
}

#[tokio::test]
async fn the_namespace_entry_meshes_every_pod_that_does_not_opt_out() {
    let webhook = Webhook::start(Mode::Native).await;
    let plain = pod(json!({}));
    let meshed = webhook.review("/namespace", &plain).await;
    assert_eq!(meshed["patchType"], "JSONPatch", "{meshed}");
    let elsewhere = webhook.review("", &plain).await;
    assert_eq!(elsewhere, json!({"allowed": true, "uid": elsewhere["uid"]}));
    let opted_out = pod(json!({"mesh.dev/inject": "disabled"}));
    let left = webhook.review("/namespace", &opted_out).await;
    assert!(left.get("patch").is_none(), "{left}");
    assert_eq!(left["allowed"], true);
}

#[tokio::test]
async fn a_pod_that_cannot_be_meshed_is_refused_or_admitted_as_the_entry_says() {
    let webhook = Webhook::start(Mode::Native).await;
    let mut host = pod(json!({"mesh.dev/inject": "enabled"}));
    host["spec"]["hostNetwork"] = true.into();
    let refused = webhook.review("/fail", &host).await;
    assert_eq!(refused["allowed"], false, "{refused}");
    assert_eq!(refused["status"]["code"], 403);
    let message = refused["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("web-7d9c6b5f4") && message.contains("hostNetwork"),
        "{message}"
    );
    let admitted = webhook.review("/ignore", &host).await;
    assert_eq!(admitted["allowed"], true, "{admitted}");
    assert!(admitted.get("patch").is_none());
    assert!(
        admitted["warnings"][0]
            .as_str()
            .unwrap()
            .contains("hostNetwork")
    );
    let bad = pod(json!({"mesh.dev/inject": "enabled", "mesh.dev/tls": "maybe"}));
    let refused = webhook.review("/namespace/fail", &bad).await;
    let message = refused["status"]["message"].as_str().unwrap();
    assert!(message.contains("mesh.dev/tls"), "{message}");
}

#[tokio::test]
async fn what_is_not_an_admission_review_gets_a_clear_error() {
    let webhook = Webhook::start(Mode::Native).await;
    let (status, body) = webhook
        .send("POST", "/inject", b"{\"kind\":".to_vec())
        .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not an AdmissionReview"));
    let (status, body) = webhook.send("POST", "/inject", b"{}".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("no request"));
    let (status, _) = webhook.send("GET", "/inject", Vec::new()).await;
    assert_eq!(status, 405);
    let (status, _) = webhook.send("POST", "/mutate", Vec::new()).await;
    assert_eq!(status, 404);
    let (status, body) = webhook
        .send("POST", "/inject/everything", b"{}".to_vec())
        .await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("everything"));
    let huge = vec![b' '; meshctl::inject::webhook::MAX_BODY + 1];
    let (status, _) = webhook.send("POST", "/inject", huge).await;
    assert_eq!(status, 413);
    // A pod of another kind of request (an update) passes untouched.
    let review = json!({"request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "UPDATE",
        "object": pod(json!({"mesh.dev/inject": "enabled"}))}});
    let (status, body) = webhook
        .send("POST", "/inject", review.to_string().into_bytes())
        .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"], json!({"allowed": true, "uid": "u"}));
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed() {
    let webhook = Webhook::start(Mode::Native).await;
    let mut silent = TcpStream::connect(webhook.addr).await.unwrap();
    until_closed(&mut silent, "a silent connection").await;
}

#[tokio::test]
async fn a_connection_that_sends_no_request_after_its_handshake_is_closed() {
    let webhook = Webhook::start(Mode::Native).await;
    let tcp = TcpStream::connect(webhook.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(webhook.client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    until_closed(&mut tls, "a connection that sends no request").await;
}

/// Waits, well past the webhook's head timeout, for it to close `stream` (`what`).
async fn until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), what: &str) {
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(
        meshctl::inject::webhook::HEAD_TIMEOUT + Duration::from_secs(25),
        stream.read(&mut buf),
    )
    .await
    .unwrap_or_else(|_| panic!("the webhook never closed {what}"));
    assert!(matches!(closed, Ok(0) | Err(_)), "{what}: {closed:?}");
}
