//! The injection served as a Kubernetes mutating admission webhook: `meshctl
//! inject-webhook` answers `POST /inject` with an `AdmissionReview` (v1) whose response
//! patches a new pod (JSON Patch) exactly as `meshctl inject` would have rewritten it.
//!
//! The path says what the webhook configuration's entry stands for (a webhook's service
//! path cannot carry a query): `/inject/namespace` for pods of a namespace labelled
//! `mesh.dev/injection: enabled` (meshed unless they opt out), else only pods annotated
//! `mesh.dev/inject: enabled` are meshed; a last segment `/fail` refuses a pod that asks to
//! be meshed but cannot be, `/ignore` (the default) admits it unmeshed with the reason as a
//! warning, as the entry's `failurePolicy` does when the webhook is down.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections, the handshake and then the first
//! request, and each request head, within [`HEAD_TIMEOUT`], a body of at most
//! [`MAX_BODY`], an answer within [`REQUEST_TIMEOUT`], a connection at most
//! [`MAX_CONNECTION_AGE`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value as Json, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::{Options, pod};

pub const MAX_CONNECTIONS: usize = 64;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The API server sends whole objects; a pod is far smaller.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// The API server's own default timeout for a webhook call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection is kept, idle or not.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// `meshctl inject-webhook`: logs to standard error, loads the certificate, serves until
/// Ctrl-C or SIGTERM.
pub async fn run(args: crate::cli::WebhookArgs) -> Result<(), crate::Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    mesh_runtime::init_logging();
    let unusable =
        |flag: &'static str, why: String| crate::Error::Webhook(format!("{flag}: {why}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| unusable("--cert", format!("{}: {e}", args.cert.display())))?;
    if chain.is_empty() {
        return Err(unusable(
            "--cert",
            format!("{}: no certificate", args.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|e| unusable("--key", format!("{}: {e}", args.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable("--cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| unusable("--key", format!("does not go with --cert: {e}")))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| unusable("--listen", format!("cannot listen on {}: {e}", args.listen)))?;
    let options = args.sidecar.options(false);
    tracing::info!(
        url = %format!("https://{}/inject", args.listen),
        mode = options.mode.as_str(),
        image = %options.image,
        "injection webhook serving"
    );
    serve(
        listener,
        Arc::new(tls),
        options,
        mesh_runtime::shutdown_signal(),
    )
    .await;
    tracing::info!("injection webhook stopped");
    Ok(())
}

/// Serves the webhook on `listener` with `tls` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (acceptor, options) = (acceptor.clone(), options.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            // The first request must begin within HEAD_TIMEOUT of the handshake: hyper's
            // header timer starts only with a request's first byte.
            let mut stream = tokio::io::BufReader::new(stream);
            match tokio::time::timeout(HEAD_TIMEOUT, stream.fill_buf()).await {
                Ok(Ok(first)) if !first.is_empty() => {}
                _ => return tracing::debug!(%peer, "no request within {HEAD_TIMEOUT:?}"),
            }
            let service = hyper::service::service_fn(move |request| {
                let options = options.clone();
                async move {
                    let answer = tokio::time::timeout(REQUEST_TIMEOUT, handle(request, &options))
                        .await
                        .unwrap_or_else(|_| text(StatusCode::REQUEST_TIMEOUT, "too slow\n"));
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            // A kept-alive connection idles between the API server's calls: past its age it
            // closes once its request in flight (if any) is answered.
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(REQUEST_TIMEOUT, connection).await.unwrap_or(Ok(()))
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

async fn handle(request: Request<Incoming>, options: &Options) -> Response<Full<Bytes>> {
    // The entry's options are path segments (a webhook's service path may not carry a
    // query): /inject[/namespace][/fail|/ignore].
    let path = request.uri().path().to_owned();
    let Some(options_path) = path.strip_prefix("/inject") else {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the webhook is POST /inject\n",
        );
    };
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let mut namespace_enabled = false;
    let mut refuse = false;
    for segment in options_path.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "namespace" => namespace_enabled = true,
            "fail" => refuse = true,
            "ignore" => refuse = false,
            other => {
                let why = format!(
                    "unknown option {other:?} in {path}: /inject[/namespace][/fail|/ignore]\n"
                );
                return text(StatusCode::NOT_FOUND, &why);
            }
        }
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            let why = format!("cannot read the body (at most {MAX_BODY} bytes): {error}\n");
            return text(StatusCode::PAYLOAD_TOO_LARGE, &why);
        }
    };
    match review(&body, namespace_enabled, refuse, options) {
        Ok(answer) => {
            let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
    }
}

/// The answer to one `AdmissionReview`, or why the body is not one.
pub fn review(
    body: &[u8],
    namespace_enabled: bool,
    refuse: bool,
    options: &Options,
) -> Result<Json, String> {
    let review: Json =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request = review
        .get("request")
        .ok_or("not an AdmissionReview: no request")?;
    let uid = request
        .get("uid")
        .and_then(Json::as_str)
        .ok_or("not an AdmissionReview: no request.uid")?;
    let mut response = admit(request, namespace_enabled, refuse, options);
    response["uid"] = uid.into();
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// Admits the pod of `request`, patched when it is to be meshed.
fn admit(request: &Json, namespace_enabled: bool, refuse: bool, options: &Options) -> Json {
    let allowed = json!({ "allowed": true });
    if request["kind"]["kind"] != "Pod" || request["operation"] != "CREATE" {
        return allowed;
    }
    let Ok(serde_norway::Value::Mapping(mut template)) = serde_norway::to_value(&request["object"])
    else {
        return allowed;
    };
    if !pod::wanted(None, &template, namespace_enabled) {
        return allowed;
    }
    // A Deployment's pods are named by the API server after this: take the name they
    // are generated from.
    let name = pod::str_at(&template, &["metadata", "name"])
        .filter(|n| !n.is_empty())
        .or_else(|| pod::str_at(&template, &["metadata", "generateName"]))
        .unwrap_or("")
        .trim_end_matches('-')
        .to_owned();
    if let Err(refusal) = pod::inject(&mut template, &name, options) {
        let message = format!("mesh.dev: cannot inject pod {name}: {refusal}");
        tracing::info!(%message, refuse, "pod not meshed");
        if refuse {
            return json!({
                "allowed": false,
                "status": { "code": 403, "reason": "Forbidden", "message": message },
            });
        }
        return json!({ "allowed": true, "warnings": [message] });
    }
    let meshed = serde_json::to_value(&template).expect("a pod converts to JSON");
    let patch = json!([
        { "op": "add", "path": "/metadata/labels", "value": meshed["metadata"]["labels"] },
        { "op": "add", "path": "/metadata/annotations", "value": meshed["metadata"]["annotations"] },
        { "op": "add", "path": "/spec", "value": meshed["spec"] },
    ]);
    use base64::Engine;
    json!({
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string()),
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}
