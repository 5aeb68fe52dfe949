//! The access log: one JSON line ([`CallEvent`](mesh_registry_api::call::CallEvent))
//! per request or carried connection, to stdout or appended to a file.
//!
//! A request only puts its record on a bounded queue; when the queue is full the line is
//! dropped and counted, so a slow disk never makes a request wait. A task of its own
//! serializes what is queued and writes it in batches: everything waiting is written at
//! once and flushed as soon as the queue is empty, so a quiet sidecar's lines are on disk
//! at once and a busy one writes few, large chunks.
//!
//! Writes are blocking `std::io` on tokio's blocking pool, one call per batch (as
//! `tokio::fs` would do per write).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Arc;

use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::AccessLogTarget;
use super::record::Record;

/// Records waiting to be written; beyond this, lines are dropped.
pub const QUEUE: usize = 4096;

/// A batch is written once it holds this many bytes, even if more records wait.
const BATCH_BYTES: usize = 256 * 1024;

/// The sending side, held by the observers.
pub struct AccessLog {
    queue: mpsc::Sender<Arc<Record>>,
    dropped: IntCounter,
    closing: watch::Sender<bool>,
}

/// Where the writer task writes.
enum Sink {
    Stdout,
    File(std::fs::File),
}

/// The writer task's state.
struct Writer {
    queue: mpsc::Receiver<Arc<Record>>,
    dropped: IntCounter,
    closing: watch::Receiver<bool>,
    /// `None` only while a batch is being written on the blocking pool.
    sink: Option<Sink>,
    /// Whether the last write failed, so a failing disk is reported once, not per batch.
    failing: bool,
}

// === impl AccessLog ===

impl AccessLog {
    /// Opens `target` (a file is created if missing, and appended to) and starts the
    /// writer task. `dropped` counts the lines the writer could not keep up with.
    pub fn open(
        target: &AccessLogTarget,
        dropped: IntCounter,
    ) -> io::Result<(AccessLog, JoinHandle<()>)> {
        let sink = match target {
            AccessLogTarget::Off => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the access log is off",
                ));
            }
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File(path) => {
                Sink::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (queue, receiver) = mpsc::channel(QUEUE);
        let (closing, closing_rx) = watch::channel(false);
        let writer = Writer {
            queue: receiver,
            dropped: dropped.clone(),
            closing: closing_rx,
            sink: Some(sink),
            failing: false,
        };
        let task = tokio::spawn(writer.run());
        let log = AccessLog {
            queue,
            dropped,
            closing,
        };
        Ok((log, task))
    }

    /// Queues one record's line; never waits (this is on the request path).
    pub fn send(&self, record: Arc<Record>) {
        if self.queue.try_send(record).is_err() {
            self.dropped.inc();
        }
    }

    /// Ends the writer task once it has written and flushed what is queued; later
    /// records are dropped.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

// === impl Writer ===

impl Writer {
    async fn run(mut self) {
        let mut closing = false;
        loop {
            let next = if closing {
                self.queue.recv().await
            } else {
                tokio::select! {
                    next = self.queue.recv() => next,
                    // Also when the sending side is gone.
                    _ = self.closing.wait_for(|c| *c) => {
                        closing = true;
                        // What is queued is still received, then `recv` gives `None`.
                        self.queue.close();
                        continue;
                    }
                }
            };
            let Some(first) = next else { break };
            let (batch, lines) = self.batch(first);
            self.write(batch, lines).await;
        }
    }

    /// The lines of `first` and of every record already waiting behind it, up to
    /// [`BATCH_BYTES`].
    fn batch(&mut self, first: Arc<Record>) -> (Vec<u8>, u64) {
        let mut batch = first.event().to_line();
        let mut lines = 1;
        while batch.len() < BATCH_BYTES {
            let Ok(record) = self.queue.try_recv() else {
                break;
            };
            batch.extend_from_slice(&record.event().to_line());
            lines += 1;
        }
        (batch, lines)
    }

    /// Writes and flushes one batch on the blocking pool.
    async fn write(&mut self, batch: Vec<u8>, lines: u64) {
        let Some(mut sink) = self.sink.take() else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || {
            let written = sink.write_all(&batch);
            (sink, written)
        })
        .await;
        let (sink, written) = match written {
            Ok(done) => done,
            // The blocking pool is shutting down with the runtime: nothing more to do.
            Err(_) => return,
        };
        self.sink = Some(sink);
        match written {
            Ok(()) => {
                if self.failing {
                    tracing::info!("access log writes succeed again");
                }
                self.failing = false;
            }
            Err(e) => {
                self.dropped.inc_by(lines);
                if !self.failing {
                    tracing::warn!(error = %e, "access log write failed; lines are dropped until one succeeds");
                }
                self.failing = true;
            }
        }
    }
}

// === impl Sink ===

impl Sink {
    /// One batch, whole: a batch of stdout is not interleaved with other writers' lines.
    fn write_all(&mut self, batch: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(batch)?;
                out.flush()
            }
            Sink::File(file) => {
                file.write_all(batch)?;
                file.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_registry_api::call::CallEvent;

    use super::*;
    use crate::metrics::Direction;
    use crate::observe::Kind;

    fn record(path: &str) -> Arc<Record> {
        let mut record = Record::new(Direction::Outbound, Kind::Request, "web");
        record.path = Some(path.to_owned());
        record.status = Some(200);
        record.headers = Some(http::HeaderMap::from_iter([(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("secret"),
        )]));
        Arc::new(record)
    }

    fn lines(path: &std::path::Path) -> Vec<CallEvent> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn close_writes_every_queued_line_and_ends_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, b"").unwrap();
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let target = AccessLogTarget::File(path.clone());
        let (log, task) = AccessLog::open(&target, dropped.clone()).unwrap();
        for i in 0..100 {
            log.send(record(&format!("/{i}")));
        }
        log.close();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the writer ends once closed")
            .unwrap();
        let events = lines(&path);
        let paths: Vec<_> = events.iter().map(|e| e.path.clone().unwrap()).collect();
        let sent: Vec<_> = (0..100).map(|i| format!("/{i}")).collect();
        assert_eq!(paths, sent, "every line, in order");
        assert!(events.iter().all(|e| e.headers.is_none()), "never headers");
        assert_eq!(dropped.get(), 0);

        log.send(record("/late"));
        assert_eq!(dropped.get(), 1, "a line after the close is dropped");
    }

    #[tokio::test]
    async fn a_file_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, b"{\"kept\":true}\n").unwrap();
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let target = AccessLogTarget::File(path.clone());
        let (log, task) = AccessLog::open(&target, dropped).unwrap();
        log.send(record("/a"));
        log.close();
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"kept\":true}\n"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let target = AccessLogTarget::File(path.clone());
        let (log, task) = AccessLog::open(&target, dropped.clone()).unwrap();
        // On a current-thread runtime the writer cannot run until this test yields, so
        // the queue fills exactly.
        let extra = 10;
        for _ in 0..QUEUE + extra {
            log.send(record("/"));
        }
        assert_eq!(dropped.get(), extra as u64);
        log.close();
        task.await.unwrap();
        assert_eq!(lines(&path).len(), QUEUE);
    }

    #[test]
    fn a_directory_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let target = AccessLogTarget::File(dir.path().to_owned());
        assert!(AccessLog::open(&target, dropped).is_err());
    }
}
