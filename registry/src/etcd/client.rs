//! A small etcd v3 client over etcd's JSON API (the gRPC gateway every etcd since 3.4
//! serves on its client port under `/v3/`): plain HTTP/1.1 and JSON, so the registry needs
//! neither protobuf code generation nor a gRPC stack to talk to etcd.
//!
//! Keys and values travel base64-encoded and 64-bit integers as strings; fields at their
//! default value are left out of answers. Each request goes to the endpoint that answered
//! last; one that fails (cannot connect, times out, answers 5xx) hands the request to the
//! next, so losing one member of a cluster costs one failed attempt, not an outage.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use mesh_registry_api::Rotation;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::metrics::EtcdMetrics;

/// Deadline of one attempt at one endpoint. A member without quorum holds a linearizable
/// request for seconds before giving up; the next member may have quorum.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Deadline of a request over every endpoint it tries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer, or message of a watch, taken from etcd: what a member that lies
/// (or a proxy in front of it that misbehaves) can make a replica hold in memory. A full
/// read of 10k instances is about 15 MiB.
const MAX_ANSWER: usize = 256 << 20;

/// Why an etcd request failed. Messages name etcd and the endpoint, because they end up
/// in the registry's 503 answers and logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd at {endpoint} answered {status}: {message}")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("etcd at {endpoint} sent an answer that is not etcd's JSON: {reason}")]
    Malformed { endpoint: String, reason: String },
    #[error("no etcd endpoint answered within {0:?}")]
    Timeout(Duration),
}

impl EtcdError {
    /// The endpoint is fine but the request is wrong (an unknown lease, say): trying
    /// another member would give the same answer.
    fn is_final(&self) -> bool {
        matches!(self, EtcdError::Refused { status, .. } if *status < 500)
    }
}

/// One key-value pair as etcd returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct Kv {
    #[serde(deserialize_with = "base64_string")]
    pub key: String,
    #[serde(default, deserialize_with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "int")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    pub lease: i64,
}

/// A change seen by a watch: the key's new value, or its deletion.
#[derive(Clone, Debug)]
pub enum Change {
    Put(Kv),
    Delete { key: String, revision: i64 },
}

/// One message of a watch stream.
#[derive(Debug)]
pub enum WatchMessage {
    /// Changes, in revision order, and the store's revision when they were sent.
    Changes(Vec<Change>),
    /// The revision asked for was compacted away: read everything again.
    Compacted { compact_revision: i64 },
}

/// A condition of a transaction.
pub enum Compare {
    /// The key was last modified at this revision (0: the key does not exist).
    ModRevision(String, i64),
}

/// An operation of a transaction.
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

/// Handle to an etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// The members, the one that answered last in use.
    endpoints: Rotation<String>,
    metrics: Arc<EtcdMetrics>,
    /// [`MAX_ANSWER`], smaller in tests.
    max_answer: usize,
}

// === impl Etcd ===

impl Etcd {
    /// A client for `endpoints` (`http://host:port`, at least one).
    pub fn new(endpoints: Vec<String>, metrics: Arc<EtcdMetrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Etcd {
            http,
            endpoints: Rotation::new(endpoints),
            metrics,
            max_answer: MAX_ANSWER,
        }
    }

    /// Every key under `prefix`, and the revision of the store they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        let body = json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))});
        let answer = self.call("range", "/v3/kv/range", body).await?;
        let revision = header_revision(&answer);
        let kvs = parse_field(&answer, "kvs", self.endpoint())?.unwrap_or_default();
        Ok((revision, kvs))
    }

    /// The highest revision at which a key under `prefix` was written, by a linearizable
    /// read: what a watch that is keeping up has seen. Also tells whether etcd has quorum.
    /// etcd sorts every key under `prefix` for it: keep the prefix's keys few.
    pub async fn latest_under(&self, prefix: &str) -> Result<i64, EtcdError> {
        let body = json!({
            "key": b64(prefix), "range_end": b64(&prefix_end(prefix)),
            "limit": 1, "sort_order": "DESCEND", "sort_target": "MOD", "keys_only": true,
        });
        let answer = self.call("probe", "/v3/kv/range", body).await?;
        let kvs: Vec<Kv> = parse_field(&answer, "kvs", self.endpoint())?.unwrap_or_default();
        Ok(kvs.first().map_or(0, |kv| kv.mod_revision))
    }

    /// Applies `ops` if every comparison holds. Returns whether it did, and the revision
    /// of the store after the transaction.
    pub async fn txn(&self, compare: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|Compare::ModRevision(key, revision)| {
                json!({"key": b64(key), "target": "MOD", "result": "EQUAL",
                       "mod_revision": revision.to_string()})
            })
            .collect();
        let success: Vec<Value> = ops.iter().map(Op::to_json).collect();
        let body = json!({"compare": compare, "success": success});
        let answer = self.call("txn", "/v3/kv/txn", body).await?;
        let succeeded = answer.get("succeeded").and_then(Value::as_bool) == Some(true);
        Ok((succeeded, header_revision(&answer)))
    }

    /// A new lease of `ttl`; returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let body = json!({"TTL": ttl.as_secs().max(1).to_string()});
        let answer = self.call("lease_grant", "/v3/lease/grant", body).await?;
        let id = answer.get("ID").map(int_value).unwrap_or(0);
        if id == 0 {
            return Err(EtcdError::Malformed {
                endpoint: self.endpoint(),
                reason: "lease grant without an ID".into(),
            });
        }
        Ok(id)
    }

    /// Renews a lease. `false` when etcd no longer knows it (it expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let body = json!({"ID": lease.to_string()});
        let answer = self
            .call("lease_keepalive", "/v3/lease/keepalive", body)
            .await?;
        // One message of the keep-alive stream: `{"result": {"ID", "TTL"}}`; a TTL of 0
        // (left out) means the lease is gone.
        let ttl = answer
            .get("result")
            .and_then(|r| r.get("TTL"))
            .map(int_value)
            .unwrap_or(0);
        Ok(ttl > 0)
    }

    /// Revokes a lease, deleting every key attached to it.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let body = json!({"ID": lease.to_string()});
        self.call("lease_revoke", "/v3/lease/revoke", body)
            .await
            .map(drop)
    }

    /// Opens a watch of every key under `prefix` from `start_revision` on. Messages come
    /// from [`WatchStream::next`]; the stream ends when the connection does.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix), "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let (at, endpoint) = self.endpoints.current();
        let endpoint = endpoint.clone();
        let request = post(&endpoint, "/v3/watch", &body);
        // A member that cannot be reached, or refuses, is left for the next: the watch is
        // opened again there after the caller's backoff.
        let response = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.http.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                self.endpoints.fail_over(at);
                return Err(unreachable(&endpoint, &e.to_string()));
            }
            Err(_) => {
                self.endpoints.fail_over(at);
                return Err(unreachable(&endpoint, "timed out opening the watch"));
            }
        };
        if response.status() != StatusCode::OK {
            self.endpoints.fail_over(at);
            return Err(EtcdError::Refused {
                endpoint,
                status: response.status().as_u16(),
                message: "watch refused".into(),
            });
        }
        Ok(WatchStream {
            endpoint,
            body: response.into_body(),
            buffer: BytesMut::new(),
            scanned: 0,
            max_message: self.max_answer,
        })
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> String {
        self.endpoints.current().1.clone()
    }

    /// Moves on from the endpoint in use to the next one.
    pub fn move_on(&self) {
        self.endpoints.fail_over(self.endpoints.current().0);
    }

    /// One request, tried at each endpoint in turn until one answers.
    async fn call(&self, op: &'static str, path: &str, body: Value) -> Result<Value, EtcdError> {
        let started = std::time::Instant::now();
        let attempts = async {
            let mut last = None;
            for _ in 0..self.endpoints.len() {
                let (at, endpoint) = self.endpoints.current();
                match self.attempt(endpoint, path, &body).await {
                    Ok(answer) => return Ok(answer),
                    Err(e) if e.is_final() => return Err(e),
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, "etcd request failed; trying the next member");
                        self.endpoints.fail_over(at);
                        last = Some(e);
                    }
                }
            }
            Err(last.expect("at least one endpoint"))
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, attempts)
            .await
            .unwrap_or(Err(EtcdError::Timeout(REQUEST_TIMEOUT)));
        self.metrics.observe(op, started.elapsed(), result.is_ok());
        result
    }

    async fn attempt(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let request = post(endpoint, path, body);
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(endpoint, &e.to_string()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), self.max_answer)
                .collect()
                .await
                .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
                    Some(_) => too_large(endpoint, "an answer", self.max_answer),
                    None => unreachable(endpoint, &e.to_string()),
                })?
                .to_bytes();
            Ok::<_, EtcdError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(endpoint, "no answer in time"))??;
        let answer: Value = serde_json::from_slice(&bytes).map_err(|e| EtcdError::Malformed {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
        if status != StatusCode::OK {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_owned();
            return Err(EtcdError::Refused {
                endpoint: endpoint.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(answer)
    }
}

// === impl Op ===

impl Op {
    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                let mut put = json!({"key": b64(key), "value": B64.encode(value)});
                if *lease != 0 {
                    put["lease"] = Value::String(lease.to_string());
                }
                json!({ "request_put": put })
            }
            Op::Delete(key) => json!({"request_delete_range": {"key": b64(key)}}),
        }
    }
}

/// The messages of one watch, read off its HTTP answer as they arrive.
pub struct WatchStream {
    endpoint: String,
    body: hyper::body::Incoming,
    /// Bytes read and not yet taken as messages.
    buffer: BytesMut,
    /// How much of `buffer` is known to hold no newline.
    scanned: usize,
    max_message: usize,
}

// === impl WatchStream ===

impl WatchStream {
    /// The next message; `None` once the stream ended (the member went away, or etcd
    /// cancelled the watch). Messages are newline-separated JSON objects.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        loop {
            if let Some(at) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(self.scanned + at + 1);
                self.scanned = 0;
                if let Some(message) = self.parse(&line)? {
                    return Ok(Some(message));
                }
                continue;
            }
            self.scanned = self.buffer.len();
            if self.buffer.len() > self.max_message {
                return Err(too_large(
                    &self.endpoint,
                    "a watch message",
                    self.max_message,
                ));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(unreachable(&self.endpoint, &e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// One line of the stream; `None` for messages that carry nothing to apply (the
    /// watch's creation, progress notifications).
    fn parse(&self, line: &[u8]) -> Result<Option<WatchMessage>, EtcdError> {
        let malformed = |reason: String| EtcdError::Malformed {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let message: Value = serde_json::from_slice(line).map_err(|e| malformed(e.to_string()))?;
        if let Some(error) = message.get("error") {
            return Err(EtcdError::Refused {
                endpoint: self.endpoint.clone(),
                status: 500,
                message: error.to_string(),
            });
        }
        let result = message.get("result").unwrap_or(&Value::Null);
        let compact_revision = result.get("compact_revision").map(int_value).unwrap_or(0);
        if compact_revision > 0 {
            return Ok(Some(WatchMessage::Compacted { compact_revision }));
        }
        let Some(events) = result.get("events").and_then(Value::as_array) else {
            return Ok(None);
        };
        let mut changes = Vec::with_capacity(events.len());
        for event in events {
            let kv: Kv = serde_json::from_value(event.get("kv").cloned().unwrap_or(Value::Null))
                .map_err(|e| malformed(e.to_string()))?;
            changes.push(match event.get("type").and_then(Value::as_str) {
                Some("DELETE") => Change::Delete {
                    key: kv.key,
                    revision: kv.mod_revision,
                },
                _ => Change::Put(kv),
            });
        }
        Ok(Some(WatchMessage::Changes(changes)))
    }
}

fn post(endpoint: &str, path: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(format!("{endpoint}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("endpoints are checked URLs")
}

fn too_large(endpoint: &str, what: &str, limit: usize) -> EtcdError {
    EtcdError::Malformed {
        endpoint: endpoint.to_owned(),
        reason: format!("{what} larger than {} MiB", limit >> 20),
    }
}

fn unreachable(endpoint: &str, reason: &str) -> EtcdError {
    EtcdError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte
/// incremented (our prefixes are ASCII and end in `/`).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.pop().expect("prefixes are not empty");
    bytes.push(last + 1);
    String::from_utf8(bytes).expect("ASCII prefix")
}

fn header_revision(answer: &Value) -> i64 {
    answer
        .get("header")
        .and_then(|h| h.get("revision"))
        .map(int_value)
        .unwrap_or(0)
}

fn parse_field<T: serde::de::DeserializeOwned>(
    answer: &Value,
    field: &str,
    endpoint: String,
) -> Result<Option<T>, EtcdError> {
    answer
        .get(field)
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| EtcdError::Malformed {
            endpoint,
            reason: format!("{field}: {e}"),
        })
}

/// An int64 as the gateway writes it: a string of digits (or, leniently, a number).
fn int_value(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(int_value(&Value::deserialize(d)?))
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

fn base64_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::from_utf8(base64_bytes(d)?).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer on 127.0.0.1 that answers every request 200 with a body that never ends
    /// and holds no newline; returns its URL.
    async fn endless_peer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0; 4096];
                    let _ = socket.read(&mut head).await;
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                  transfer-encoding: chunked\r\n\r\n";
                    socket.write_all(answer.as_bytes()).await?;
                    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                    loop {
                        socket.write_all(chunk.as_bytes()).await?;
                    }
                    #[allow(unreachable_code)]
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn a_peer_that_never_stops_sending_is_cut_off_at_the_limit() {
        let metrics = Arc::new(EtcdMetrics::new(&crate::metrics::Metrics::new()));
        let mut etcd = Etcd::new(vec![endless_peer().await], metrics);
        etcd.max_answer = 1 << 20;

        let mut watch = etcd.watch("/mesh/", 1).await.unwrap();
        let refused = watch.next().await.unwrap_err().to_string();
        assert!(
            refused.contains("a watch message larger than 1 MiB"),
            "{refused}"
        );

        let refused = etcd.range_prefix("/mesh/").await.unwrap_err().to_string();
        assert!(refused.contains("an answer larger than 1 MiB"), "{refused}");
    }

    #[tokio::test]
    async fn a_watch_that_cannot_reach_a_member_is_opened_at_the_next() {
        // A port bound but not listening: connections to it are refused, and, held for
        // the whole test, no other socket can take it meanwhile (a port merely freed can
        // be handed to the next listener a parallel test binds).
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dead = format!("http://{}", held.local_addr().unwrap());
        let live = endless_peer().await;
        let metrics = Arc::new(EtcdMetrics::new(&crate::metrics::Metrics::new()));
        let etcd = Etcd::new(vec![dead.clone(), live.clone()], metrics);

        let refused = etcd.watch("/mesh/", 1).await.err().unwrap().to_string();
        assert!(refused.contains(&dead), "{refused}");
        assert!(etcd.watch("/mesh/", 1).await.is_ok());
        assert_eq!(etcd.endpoint(), live);
    }

    #[test]
    fn the_range_of_a_prefix_ends_just_past_it() {
        assert_eq!(prefix_end("/mesh/"), "/mesh0");
        assert!("/mesh/zzz".as_bytes() < prefix_end("/mesh/").as_bytes());
    }

    #[test]
    fn key_values_decode_from_the_gateway_json() {
        let kv: Kv = serde_json::from_value(json!({
            "key": b64("/mesh/i/web/a"), "value": B64.encode(b"{}"),
            "create_revision": "2", "mod_revision": "7", "version": "1"
        }))
        .unwrap();
        assert_eq!(
            (
                kv.key.as_str(),
                kv.value.as_slice(),
                kv.mod_revision,
                kv.lease
            ),
            ("/mesh/i/web/a", &b"{}"[..], 7, 0)
        );
    }
}
