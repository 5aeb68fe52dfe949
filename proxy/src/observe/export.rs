//! Sending spans to an OTLP/HTTP collector.
//!
//! [`Exporter::send`] is called on the request path, so it only ever tries to queue: a
//! full queue drops the span and counts it (`queue_full`). One task takes the queue in
//! batches (up to [`BATCH`] spans, or what arrived within [`WINDOW`] of a batch's first)
//! and POSTs each, encoded by [`otlp`](super::otlp), over one kept HTTP/1.1 connection.
//! One export at a time, each bounded by [`TIMEOUT`]: a slow or absent collector costs
//! spans (counted, `export_failed`), never a request's time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::record::Record;
use super::{Counters, Resource, otlp};

/// Spans waiting to be exported, at most.
const QUEUE: usize = 2048;

/// Spans in one export request, at most.
const BATCH: usize = 512;

/// How long a batch waits for more spans after its first.
const WINDOW: Duration = Duration::from_secs(1);

/// One export's bound, connecting included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Export failures are logged at most this often: a collector down for an hour is one
/// problem, not thousands of lines.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The largest collector answer read (OTLP's answer is a few bytes at most).
const MAX_ANSWER: usize = 64 * 1024;

/// The request path's side: queues spans for the export task.
pub struct Exporter {
    queue: mpsc::Sender<Arc<Record>>,
    closing: watch::Sender<bool>,
    queue_full: IntCounter,
}

/// The export task's state.
struct Task {
    queue: mpsc::Receiver<Arc<Record>>,
    closing: watch::Receiver<bool>,
    /// The queue takes no more spans: what is left in it goes, then the task ends.
    closed: bool,
    collector: Collector,
    resource: Resource,
    exported: IntCounter,
    export_failed: IntCounter,
    warnings: Warnings,
}

/// The collector and the connection kept to it.
struct Collector {
    uri: Uri,
    /// `host:port` to connect to.
    address: String,
    connection: Option<Connection>,
}

/// One HTTP/1.1 connection to the collector.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    /// The connection's I/O, ended with it: an export abandoned at its timeout must not
    /// leave its connection behind.
    io: JoinHandle<()>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("its answer could not be read: {0}")]
    Answer(Box<dyn std::error::Error + Send + Sync>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Rate-limited logging of failed exports.
#[derive(Default)]
struct Warnings {
    /// When the last warning was logged.
    last: Option<Instant>,
    /// Spans dropped since the last warning.
    dropped: u64,
    /// Whether the last export failed.
    failing: bool,
}

// === impl Exporter ===

impl Exporter {
    /// Starts the export task; it ends after [`Exporter::close`], or once the exporter
    /// is dropped, having sent what was queued.
    pub fn start(
        collector: Uri,
        resource: Resource,
        counters: Counters,
    ) -> (Exporter, JoinHandle<()>) {
        let (exporter, task) = Exporter::new(collector, resource, &counters);
        (exporter, tokio::spawn(task.run()))
    }

    fn new(collector: Uri, resource: Resource, counters: &Counters) -> (Exporter, Task) {
        let (queue, spans) = mpsc::channel(QUEUE);
        let (closing, closed) = watch::channel(false);
        let dropped = |reason: &str| counters.spans_dropped.with_label_values(&[reason]);
        let exporter = Exporter {
            queue,
            closing,
            queue_full: dropped("queue_full"),
        };
        let task = Task {
            queue: spans,
            closing: closed,
            closed: false,
            collector: Collector::new(collector),
            resource,
            exported: counters.spans_exported.clone(),
            export_failed: dropped("export_failed"),
            warnings: Warnings::default(),
        };
        (exporter, task)
    }

    /// Queues a finished span, or drops and counts it if the queue is full (or closed):
    /// never waits.
    pub fn send(&self, record: Arc<Record>) {
        if self.queue.try_send(record).is_err() {
            self.queue_full.inc();
        }
    }

    /// Makes the task send what is queued and end.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

// === impl Task ===

impl Task {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.export(batch).await;
        }
    }

    /// The next batch: up to [`BATCH`] spans, or those that arrived within [`WINDOW`] of
    /// its first; once closed, what is left, at once. None when nothing is left.
    async fn next_batch(&mut self) -> Option<Vec<Arc<Record>>> {
        let mut batch = Vec::with_capacity(BATCH);
        if !self.closed {
            tokio::select! {
                _ = self.queue.recv_many(&mut batch, BATCH) => {}
                // The exporter dropped counts as closed too.
                _ = self.closing.wait_for(|closing| *closing) => self.closed = true,
            }
        }
        let deadline = Instant::now() + WINDOW;
        while !self.closed && !batch.is_empty() && batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                received = self.queue.recv_many(&mut batch, room) => if received == 0 {
                    break;
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.closing.wait_for(|closing| *closing) => self.closed = true,
            }
        }
        if self.closed {
            // Closed, the queue takes no more, and this returns at once with what it
            // still holds.
            self.queue.close();
            let room = BATCH - batch.len();
            self.queue.recv_many(&mut batch, room).await;
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// Sends one batch and counts its spans as exported or dropped.
    async fn export(&mut self, batch: Vec<Arc<Record>>) {
        let spans = batch.len() as u64;
        let body = Bytes::from(otlp::encode(&self.resource, &batch));
        drop(batch);
        let result = match tokio::time::timeout(TIMEOUT, self.collector.post(body)).await {
            Ok(result) => result,
            Err(_) => {
                // Whatever state the abandoned exchange left the connection in.
                self.collector.connection = None;
                Err(ExportError::Timeout(TIMEOUT))
            }
        };
        let collector = &self.collector.uri;
        match result {
            Ok(()) => {
                self.exported.inc_by(spans);
                self.warnings.succeeded(collector);
            }
            Err(e) => {
                self.export_failed.inc_by(spans);
                self.warnings.failed(collector, &e, spans);
            }
        }
    }
}

// === impl Collector ===

impl Collector {
    fn new(uri: Uri) -> Collector {
        // The flag's validation made it an http:// URL with a host.
        let host = uri.host().unwrap_or("localhost");
        let port = uri.port_u16().unwrap_or(80);
        Collector {
            address: format!("{host}:{port}"),
            uri,
            connection: None,
        }
    }

    /// POSTs one export request; Ok once a 2xx answer has been read.
    async fn post(&mut self, body: Bytes) -> Result<(), ExportError> {
        if let Some(mut kept) = self.connection.take() {
            // The collector may have closed a kept connection meanwhile: a request that
            // was not sent on it goes on a new one.
            if kept.sender.ready().await.is_ok() {
                match self.exchange(&mut kept, body.clone()).await {
                    Err(ExportError::Http(e)) if e.is_canceled() => {}
                    result => return self.keep(kept, result),
                }
            }
        }
        let mut fresh = self.connect().await?;
        let result = self.exchange(&mut fresh, body).await;
        self.keep(fresh, result)
    }

    /// Keeps `connection` for the next export if its exchange completed.
    fn keep(
        &mut self,
        connection: Connection,
        result: Result<StatusCode, ExportError>,
    ) -> Result<(), ExportError> {
        let status = result?;
        if !connection.sender.is_closed() {
            self.connection = Some(connection);
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(ExportError::Status(status))
        }
    }

    async fn connect(&self) -> Result<Connection, ExportError> {
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(ExportError::Connect)?;
        // Each export is one write: no waiting for more to fill a packet.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ExportError::Http)?;
        let io = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, io })
    }

    /// One request and its whole answer, on `connection`.
    async fn exchange(
        &self,
        connection: &mut Connection,
        body: Bytes,
    ) -> Result<StatusCode, ExportError> {
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::post(path)
            .header(HOST, authority)
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .expect("a valid request");
        let response = connection
            .sender
            .send_request(request)
            .await
            .map_err(ExportError::Http)?;
        let status = response.status();
        // Read whole, so that the connection may carry the next export.
        Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(ExportError::Answer)?;
        Ok(status)
    }
}

// === impl Connection ===

impl Drop for Connection {
    fn drop(&mut self) {
        self.io.abort();
    }
}

// === impl Warnings ===

impl Warnings {
    fn failed(&mut self, collector: &Uri, error: &ExportError, spans: u64) {
        self.dropped += spans;
        self.failing = true;
        if self.last.is_some_and(|last| last.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            %collector,
            %error,
            dropped = self.dropped,
            "spans not exported to the trace collector (logged at most once a minute)"
        );
        self.last = Some(Instant::now());
        self.dropped = 0;
    }

    fn succeeded(&mut self, collector: &Uri) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(%collector, "the trace collector accepts spans again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::body::Incoming;
    use hyper::service::service_fn;

    use super::*;
    use crate::metrics::Direction;
    use crate::observe::context::Trace;
    use crate::observe::record::Kind;

    fn span() -> Arc<Record> {
        let mut record = Record::new(Direction::Inbound, Kind::Request, "web");
        record.trace = Some(Trace::child_of(None, |_| true));
        Arc::new(record)
    }

    fn resource() -> Resource {
        Resource {
            service: "web".into(),
            instance: None,
        }
    }

    fn dropped(counters: &Counters, reason: &str) -> u64 {
        counters.spans_dropped.with_label_values(&[reason]).get()
    }

    #[test]
    fn past_the_queue_bound_spans_are_dropped_and_counted_without_waiting() {
        let counters = Counters::new();
        let uri: Uri = "http://127.0.0.1:9/v1/traces".parse().unwrap();
        let (exporter, task) = Exporter::new(uri, resource(), &counters);
        // No runtime and no task taking spans: a send that waited would hang here.
        for _ in 0..QUEUE + 5 {
            exporter.send(span());
        }
        assert_eq!(dropped(&counters, "queue_full"), 5);
        // A queue whose task has ended takes nothing either, and says so the same way.
        drop(task);
        exporter.send(span());
        assert_eq!(dropped(&counters, "queue_full"), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_full_at_512_spans_or_ends_a_second_after_its_first() {
        let counters = Counters::new();
        let uri: Uri = "http://127.0.0.1:9/v1/traces".parse().unwrap();
        let (exporter, mut task) = Exporter::new(uri, resource(), &counters);
        for _ in 0..600 {
            exporter.send(span());
        }
        let started = Instant::now();
        assert_eq!(task.next_batch().await.unwrap().len(), BATCH);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a full batch goes at once"
        );
        assert_eq!(task.next_batch().await.unwrap().len(), 88);
        assert_eq!(started.elapsed(), WINDOW);

        // Closing sends what is queued at once, then ends.
        exporter.send(span());
        exporter.send(span());
        exporter.close();
        let started = Instant::now();
        assert_eq!(task.next_batch().await.unwrap().len(), 2);
        assert!(task.next_batch().await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
        exporter.send(span());
        assert_eq!(dropped(&counters, "queue_full"), 1, "closed: taken no more");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_when_the_exporter_is_gone() {
        let counters = Counters::new();
        let uri: Uri = "http://127.0.0.1:9/v1/traces".parse().unwrap();
        let (exporter, mut task) = Exporter::new(uri, resource(), &counters);
        drop(exporter);
        assert!(task.next_batch().await.is_none());
    }

    /// A collector answering 200 to every POST with `application/x-protobuf`, 415 to
    /// anything else; keeps connections alive or not. Counts requests and connections.
    async fn collector(keep_alive: bool) -> (Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (counted, accepted) = (requests.clone(), Arc::clone(&connections));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let counted = counted.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let counted = counted.clone();
                    async move {
                        let protobuf = request.headers()[CONTENT_TYPE] == "application/x-protobuf";
                        let posted = request.method() == http::Method::POST;
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let status = if protobuf && posted && !body.is_empty() {
                            counted.fetch_add(1, Ordering::SeqCst);
                            StatusCode::OK
                        } else {
                            StatusCode::UNSUPPORTED_MEDIA_TYPE
                        };
                        let mut answer = http::Response::new(Full::new(Bytes::new()));
                        *answer.status_mut() = status;
                        Ok::<_, Infallible>(answer)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (uri.parse().unwrap(), requests, connections)
    }

    /// Waits (in real time) until `counter` reaches `n`.
    async fn until(counter: &IntCounter, n: u64) {
        let bound = Instant::now() + Duration::from_secs(30);
        while counter.get() < n {
            assert!(Instant::now() < bound, "{} of {n}", counter.get());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn one_connection_is_kept_and_a_closed_one_replaced() {
        for keep_alive in [true, false] {
            let (uri, requests, connections) = collector(keep_alive).await;
            let counters = Counters::new();
            let (exporter, task) = Exporter::start(uri, resource(), counters.clone());
            // Full batches go at once.
            for round in 1..=2 {
                for _ in 0..BATCH {
                    exporter.send(span());
                }
                until(&counters.spans_exported, round * BATCH as u64).await;
            }
            exporter.send(span());
            exporter.close();
            task.await.unwrap();
            assert_eq!(counters.spans_exported.get(), 2 * BATCH as u64 + 1);
            assert_eq!(dropped(&counters, "export_failed"), 0);
            assert_eq!(requests.load(Ordering::SeqCst), 3);
            let expected = if keep_alive { 1 } else { 3 };
            assert_eq!(connections.load(Ordering::SeqCst), expected, "{keep_alive}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_or_an_error_answer_drops_the_batch_and_counts_it() {
        // A port held bound but not listening: connections are refused.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let uri = format!("http://{}/v1/traces", socket.local_addr().unwrap());
        let counters = Counters::new();
        let (exporter, task) = Exporter::start(uri.parse().unwrap(), resource(), counters.clone());
        exporter.send(span());
        exporter.send(span());
        exporter.close();
        task.await.unwrap();
        assert_eq!(dropped(&counters, "export_failed"), 2);
        assert_eq!(counters.spans_exported.get(), 0);

        // An answer other than 2xx (415 to an empty body here) is a failed export.
        let (uri, _, _) = collector(true).await;
        let mut collector = Collector::new(uri);
        let status = collector.post(Bytes::new()).await;
        assert!(
            matches!(
                status,
                Err(ExportError::Status(StatusCode::UNSUPPORTED_MEDIA_TYPE))
            ),
            "{status:?}"
        );
        assert!(
            collector.connection.is_some(),
            "an answered error keeps the connection"
        );
    }
}
