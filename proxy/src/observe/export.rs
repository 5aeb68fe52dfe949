//! Sending spans to an OTLP/HTTP collector. (Placeholder being replaced.)

use std::sync::Arc;

use http::Uri;
use tokio::task::JoinHandle;

use super::record::Record;
use super::{Counters, Resource};

pub struct Exporter {
    _counters: Counters,
}

impl Exporter {
    pub fn start(
        _collector: Uri,
        _resource: Resource,
        counters: Counters,
    ) -> (Exporter, JoinHandle<()>) {
        (
            Exporter {
                _counters: counters,
            },
            tokio::spawn(async {}),
        )
    }

    pub fn send(&self, _record: Arc<Record>) {}

    pub fn close(&self) {}
}
