//! Persistence of the embedded store: the catalog as one JSON snapshot file.
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash leaves
//! either the old snapshot or the new one, never half of one. They are debounced: a burst
//! of registrations costs one write. Lease renewals are not written at all: on restore
//! every instance gets a fresh lease, and live sidecars confirm it with their next
//! heartbeat while dead ones expire as usual.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_registry_api::policy::{Document, PolicyKind};
use mesh_registry_api::{Registration, validate};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::entry::{Entry, LeaseState};
use crate::error::{ApiError, Error};
use crate::metrics::Metrics;
use crate::request;

/// File name of the snapshot inside `--data-dir`.
pub const FILE_NAME: &str = "catalog.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    version: u32,
    /// Last index handed out, so indexes keep growing across restarts and no watcher is
    /// left blocking on an index the new process would only reach later.
    index: u64,
    services: BTreeMap<String, BTreeMap<String, StoredInstance>>,
    /// Each service's policy documents, by kind (absent from snapshots written before
    /// policies were kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    policies: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// One instance as it is written down: in the snapshot, and in etcd by the etcd store.
/// Leases are not written: they are the business of whoever receives the heartbeats.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredInstance {
    #[serde(flatten)]
    pub(crate) registration: Registration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
    registered_at: String,
    last_heartbeat: String,
    /// Who registered it; absent in what was written before owners were kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
    /// Its registration's generation; absent (0) likewise.
    #[serde(default, skip_serializing_if = "is_zero")]
    generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

// === impl StoredInstance ===

impl StoredInstance {
    pub(crate) fn of(entry: &Entry) -> Self {
        StoredInstance {
            registration: entry.registration.clone(),
            output: entry.output.clone(),
            registered_at: humantime::format_rfc3339_millis(entry.registered_at).to_string(),
            last_heartbeat: humantime::format_rfc3339_millis(entry.last_heartbeat).to_string(),
            owner: entry.owner.clone(),
            generation: entry.generation,
        }
    }

    /// Holds one written instance to the rules the API holds registrations to: what was
    /// written by hand, or by another version, must not smuggle in what the API would
    /// refuse. The message names the service, the instance and the field.
    pub(crate) fn check(&self, service: &str, id: &str) -> Result<(), String> {
        validate::service_name(service).map_err(|m| format!("service {service:?}: {m}"))?;
        let at = |e: ApiError| match e {
            ApiError::InvalidArgument { field, message } => {
                format!("service {service:?}, instance {id:?}, field {field}: {message}")
            }
            other => format!("service {service:?}, instance {id:?}: {other}"),
        };
        validate::instance_id(id).map_err(|m| at(ApiError::invalid("id", m)))?;
        request::check_registration(&self.registration).map_err(at)?;
        request::check_output(self.output.as_deref()).map_err(at)?;
        let printable = self.owner.len() <= 512 && self.owner.bytes().all(|b| b.is_ascii_graphic());
        if !printable {
            return Err(at(ApiError::invalid(
                "owner",
                "must be at most 512 printable ASCII characters",
            )));
        }
        Ok(())
    }

    /// The entry, holding `lease`. Times that do not parse (a hand-edited file) read as now.
    pub(crate) fn into_entry(self, lease: LeaseState) -> Entry {
        let parse = |t: &str| humantime::parse_rfc3339(t).unwrap_or_else(|_| SystemTime::now());
        Entry {
            lease,
            registered_at: parse(&self.registered_at),
            last_heartbeat: parse(&self.last_heartbeat),
            registration: self.registration,
            output: self.output,
            spared: false,
            owner: self.owner,
            generation: self.generation,
        }
    }
}

/// Path of the snapshot file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Loads the snapshot in `dir`, if there is one, into a new catalog whose instances all
/// hold fresh leases. A snapshot that exists but cannot be read or parsed is an error:
/// starting empty would silently drop every registration.
pub fn load(dir: &Path, critical_grace: Duration, now: Instant) -> Result<Option<Catalog>, Error> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(Error::SnapshotRead { path, cause }),
    };
    let file: SnapshotFile =
        serde_json::from_slice(&bytes).map_err(|e| Error::SnapshotCorrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if file.version != FORMAT_VERSION {
        return Err(Error::SnapshotCorrupt {
            path,
            reason: format!("format version {} is not {FORMAT_VERSION}", file.version),
        });
    }
    check(&file).map_err(|reason| Error::SnapshotCorrupt {
        path: path.clone(),
        reason,
    })?;
    let catalog = Catalog::starting_at(file.index, critical_grace);
    for (service, instances) in file.services {
        let entries = instances
            .into_iter()
            .map(|(id, stored)| {
                let expires_at = now + stored.registration.ttl;
                (id, stored.into_entry(LeaseState::Live { expires_at }))
            })
            .collect();
        catalog.restore_service(&service, entries, catalog.index());
    }
    for (service, documents) in file.policies {
        for (kind, value) in documents {
            let document = kind
                .parse::<PolicyKind>()
                .and_then(|kind| {
                    Document::from_value(kind, value)
                        .map_err(|e| format!("{}: {}", e.field, e.message))
                })
                .map_err(|reason| Error::SnapshotCorrupt {
                    path: path.clone(),
                    reason: format!("policy {kind:?} of service {service:?}: {reason}"),
                })?;
            catalog.set_policy(&service, document.kind(), Some(document), catalog.index());
        }
    }
    Ok(Some(catalog))
}

/// Holds every entry to the rules the API holds registrations to: a snapshot edited by
/// hand, or written by another version, must not smuggle in what the API would refuse.
fn check(file: &SnapshotFile) -> Result<(), String> {
    for (service, instances) in &file.services {
        for (id, stored) in instances {
            stored.check(service, id)?;
        }
    }
    for service in file.policies.keys() {
        validate::service_name(service)
            .map_err(|m| format!("policy of service {service:?}: {m}"))?;
    }
    Ok(())
}

/// Writes the catalog to `dir` atomically. Blocking: call it off the async workers.
pub fn write(dir: &Path, catalog: &Catalog) -> std::io::Result<()> {
    let mut services = BTreeMap::new();
    catalog.each_service(|service, instances| {
        if !instances.is_empty() {
            let stored = instances
                .iter()
                .map(|(id, e)| (id.clone(), StoredInstance::of(e)))
                .collect();
            services.insert(service.to_owned(), stored);
        }
    });
    let policies = catalog
        .policies()
        .into_iter()
        .map(|policy| {
            let documents = PolicyKind::ALL
                .into_iter()
                .filter_map(|kind| Some((kind.as_str().to_owned(), policy.get(kind)?)))
                .collect();
            (policy.service, documents)
        })
        .collect();
    let file = SnapshotFile {
        policies,
        version: FORMAT_VERSION,
        // Read after the scan, not before: changes keep arriving while it runs, and the
        // snapshot must not hold one whose index is above its own. A restored catalog
        // hands out indexes from here on, and a watcher that saw a later change's index
        // would otherwise wait through new changes with smaller ones.
        index: catalog.index(),
        services,
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("snapshot serializes");

    let final_path = path(dir);
    let tmp_path = dir.join(format!("{FILE_NAME}.tmp"));
    let mut tmp = File::create(&tmp_path)?;
    tmp.write_all(&bytes)?;
    tmp.sync_all()?;
    drop(tmp);
    fs::rename(&tmp_path, &final_path)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

/// Writes a snapshot after each burst of changes (waiting `debounce` after the first
/// change of a burst), and a final one when `shutdown` turns true.
pub async fn run_writer(
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    debounce: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = catalog.subscribe_catalog();
    loop {
        let stopping = tokio::select! {
            changed = changes.changed() => changed.is_err(),
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if !stopping {
            tokio::select! {
                () = tokio::time::sleep(debounce) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
        changes.mark_unchanged();
        let (catalog2, dir2) = (catalog.clone(), dir.clone());
        let written = tokio::task::spawn_blocking(move || write(&dir2, &catalog2)).await;
        match written {
            Ok(Ok(())) => tracing::debug!(path = %path(&dir).display(), "snapshot written"),
            Ok(Err(e)) => {
                metrics.snapshot_failures.inc();
                tracing::error!(path = %path(&dir).display(), error = %e, "snapshot write failed");
            }
            Err(e) => {
                metrics.snapshot_failures.inc();
                tracing::error!(error = %e, "snapshot task failed");
            }
        }
        if stopping || *shutdown.borrow() {
            tracing::info!(path = %path(&dir).display(), "final snapshot written");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn round_trip_keeps_instances_and_the_index_and_gives_fresh_leases() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(30);
        let c = Catalog::new(grace);
        let t0 = Instant::now();
        let mut r = Registration::new("10.0.0.7:4143");
        r.tags = vec!["v2".into()];
        r.weight = 7;
        c.register("web", "a", r.clone(), "o", t0).unwrap();
        c.register("web", "b", Registration::new("10.0.0.8:4143"), "o", t0)
            .unwrap();
        write(dir.path(), &c).unwrap();

        let later = t0 + Duration::from_secs(9);
        let restored = load(dir.path(), grace, later).unwrap().unwrap();
        assert_eq!(restored.index(), c.index());
        let listing = restored.listing("web", false);
        assert_eq!(listing.instances.len(), 2);
        assert_eq!(listing.instances[0].tags, vec!["v2".to_owned()]);
        assert_eq!(listing.instances[0].weight, 7);
        // The old lease would have run out at t0+10s; the fresh one runs to later+10s.
        assert_eq!(restored.sweep(t0 + Duration::from_secs(11)).expired, 0);
        assert!(!dir.path().join("catalog.json.tmp").exists());
    }

    /// Snapshots taken while registrations pour in hold an index at least as high as
    /// every change they contain: each registration of a new name is one change, so a
    /// file with `n` instances must say index `1 + n` or more.
    #[test]
    fn a_snapshot_under_write_load_is_a_consistent_cut() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = std::sync::Arc::new(Catalog::new(Duration::from_secs(30)));
        let writer = std::thread::spawn({
            let catalog = catalog.clone();
            move || {
                for i in 0..20_000 {
                    let name = format!("svc-{i}");
                    let registration = Registration::new("10.0.0.1:4143");
                    catalog
                        .register(&name, "a", registration, "o", Instant::now())
                        .unwrap();
                }
            }
        });
        let mut snapshots = 0;
        while !writer.is_finished() || snapshots == 0 {
            write(dir.path(), &catalog).unwrap();
            let file: SnapshotFile =
                serde_json::from_slice(&fs::read(path(dir.path())).unwrap()).unwrap();
            let instances = file.services.len() as u64;
            assert!(
                file.index > instances,
                "snapshot {snapshots}: index {} with {instances} instances",
                file.index
            );
            snapshots += 1;
        }
        writer.join().unwrap();
        assert!(snapshots > 1, "only {snapshots} snapshot raced the writes");
    }

    #[test]
    fn entries_the_api_would_refuse_make_the_load_fail_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let entry = |fields: &str| {
            let address = if fields.contains("address") {
                ""
            } else {
                r#""address":"10.0.0.7:4143","#
            };
            format!(
                r#"{{{address}"registered_at":"2024-01-01T00:00:00Z",
                    "last_heartbeat":"2024-01-01T00:00:00Z"{fields}}}"#
            )
        };
        let file = |service: &str, id: &str, fields: &str| {
            format!(
                r#"{{"version":1,"index":7,"services":{{"{service}":{{"{id}":{}}}}}}}"#,
                entry(fields)
            )
        };
        let tags = format!(r#","tags":[{}]"#, vec![r#""t""#; 65].join(","));
        let long = format!(r#","output":"{}""#, "x".repeat(5000));
        let cases: Vec<(String, &[&str])> = vec![
            (file("Web", "a", ""), &["\"Web\"", "service name"]),
            (file("web", "a b", ""), &["\"web\"", "\"a b\"", "id"]),
            (
                file("web", "a", r#","address":"nohost""#),
                &["\"web\"", "\"a\"", "address"],
            ),
            (file("web", "a", r#","weight":0"#), &["\"a\"", "weight"]),
            (file("web", "a", r#","weight":5000"#), &["weight"]),
            (file("web", "a", r#","ttl":"0s""#), &["\"a\"", "ttl"]),
            (file("web", "a", r#","ttl":"2h""#), &["ttl"]),
            (file("web", "a", &tags), &["\"a\"", "tags"]),
            (file("web", "a", r#","tags":[""]"#), &["tags"]),
            (
                file("web", "a", r#","metadata":{"":"v"}"#),
                &["\"a\"", "metadata"],
            ),
            (file("web", "a", &long), &["\"a\"", "output"]),
        ];
        rt.block_on(async {
            for (text, wanted) in cases {
                fs::write(path(dir.path()), &text).unwrap();
                let err = load(dir.path(), grace, Instant::now())
                    .err()
                    .unwrap_or_else(|| panic!("loaded {text}"));
                assert!(matches!(err, Error::SnapshotCorrupt { .. }), "{err}");
                let said = err.to_string();
                for word in wanted {
                    assert!(said.contains(word), "{word} not in: {said}");
                }
            }
            // The same entry with valid values loads.
            fs::write(path(dir.path()), file("web", "a", r#","weight":5"#)).unwrap();
            assert!(load(dir.path(), grace, Instant::now()).unwrap().is_some());
        });
    }

    #[test]
    fn a_missing_snapshot_is_a_fresh_start_and_a_corrupt_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(load(dir.path(), grace, Instant::now()).unwrap().is_none());
            fs::write(path(dir.path()), b"{\"version\":1,\"index\":").unwrap();
            let err = load(dir.path(), grace, Instant::now()).unwrap_err();
            assert!(err.to_string().contains("catalog.json"), "{err}");
        });
    }
}
