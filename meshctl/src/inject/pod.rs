//! One pod template meshed, or unmeshed: the sidecar container its annotations describe,
//! and what it needs beside it (a volume, labels, annotations, probes older clusters
//! accept).
//!
//! Everything inject adds besides the sidecar container is listed in the pod's
//! `mesh.dev/injected` annotation, so [`uninject`] takes away exactly that and injecting
//! twice is injecting once.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_registry_api::{Protocol, validate};
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

use super::{Mode, Options};

/// The annotation (on a pod template or its workload) opting in (`enabled`) or out
/// (`disabled`); a label of the same name counts too.
pub const INJECT: &str = "mesh.dev/inject";
/// The namespace label meshing every pod in the namespace that does not opt out.
pub const NAMESPACE_LABEL: &str = "mesh.dev/injection";
/// Set on injected pods: how, and what was added.
pub const INJECTED: &str = "mesh.dev/injected";
/// The injected container's name.
pub const SIDECAR: &str = "mesh-proxy";

/// The label every meshed pod carries (network policies select on it).
const MESHED_LABEL: (&str, &str) = ("mesh/sidecar", "true");
const CA_VOLUME: &str = "mesh-ca-bundle";
const CA_MOUNT: &str = "/ca";
const INBOUND_PORT: u16 = 4143;
const ADMIN_PORT: u16 = 4191;
const RESTRICTED_UID: i64 = 65534;
/// How long container mode's sidecar may take to become ready before the app starts
/// anyway (the `postStart` hook gives up).
const STARTUP_WAIT: &str = "120s";

/// The annotations read, with what each sets. Prefixed with `mesh.dev/`.
pub const ANNOTATIONS: &[(&str, &str)] = &[
    ("inject", "enabled or disabled"),
    (
        "service",
        "the service name (default: the pod's app.kubernetes.io/name or app label, else the workload's name)",
    ),
    (
        "app-port",
        "the app's port (default: the first container's first port)",
    ),
    (
        "app-protocol",
        "http, h2, grpc or tcp (default: grpc or h2 when that port is named so, else http)",
    ),
    ("health-path", "the app's HTTP health path (--health-path)"),
    (
        "upstreams",
        "local ports for destinations, NAME:PORT=127.0.0.1:PORT,… (--upstreams)",
    ),
    ("tls", "off, permissive or strict (default: permissive)"),
    ("allow", "the services allowed to call this one (--allow)"),
    (
        "metadata",
        "registration metadata, KEY=VALUE,… (--metadata)",
    ),
    (
        "registry",
        "the registry's URL (default: meshctl inject's --registry-url)",
    ),
    (
        "registry-ca",
        "the ConfigMap holding the mesh CA's ca.pem (default: mesh-ca-bundle)",
    ),
    (
        "join-token-secret",
        "the Secret whose key `token` holds the service's join token (default: mesh-join-token-SERVICE)",
    ),
    ("log-level", "the sidecar's RUST_LOG (default: info)"),
    ("access-log", "off or stdout (default: off)"),
    (
        "drain-timeout",
        "how long the sidecar drains on shutdown (default: 10s)",
    ),
    (
        "proxy-image",
        "the sidecar's image (default: --proxy-image)",
    ),
    ("proxy-cpu-request", "default: 25m"),
    ("proxy-memory-request", "default: 32Mi"),
    ("proxy-cpu-limit", "default: 500m"),
    ("proxy-memory-limit", "default: 64Mi"),
];

/// Why a pod template cannot be meshed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("annotation mesh.dev/{key}: {why}")]
    Annotation { key: &'static str, why: String },
    #[error("{0}")]
    Pod(String),
}

/// What inject added besides the sidecar container, kept in [`INJECTED`].
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
struct Added {
    mode: String,
    annotations: Vec<String>,
    labels: Vec<String>,
    volume: bool,
    /// Probes inject rewrote (container mode: gRPC probes, which older clusters refuse),
    /// by container and probe, as they were.
    probes: BTreeMap<String, BTreeMap<String, Value>>,
}

/// The sidecar's settings, read from the pod's annotations.
#[derive(Debug)]
struct Settings {
    service: String,
    app_port: u16,
    app_protocol: Protocol,
    health_path: Option<String>,
    upstreams: Option<String>,
    tls: String,
    allow: Option<String>,
    metadata: Option<String>,
    registry: String,
    ca_config_map: String,
    join_token_secret: String,
    log_level: Option<String>,
    access_log: Option<String>,
    drain_timeout: String,
    image: String,
    resources: [(&'static str, &'static str, String); 4],
}

/// Whether the pod template asks to be meshed: its own `mesh.dev/inject`, else its
/// workload's, else `default` (a labelled namespace, or `--all`).
pub fn wanted(workload: Option<&Mapping>, template: &Mapping, default: bool) -> bool {
    // An annotation, or a label (which the webhook configuration's objectSelector can
    // also read, so pods labelled `disabled` are never even sent to the webhook).
    let said = |metadata: Option<&Mapping>| {
        metadata
            .and_then(|m| {
                str_at(m, &["annotations", INJECT]).or_else(|| str_at(m, &["labels", INJECT]))
            })
            .map(|v| v == "enabled")
    };
    said(map_at(template, &["metadata"]))
        .or_else(|| said(workload.and_then(|w| map_at(w, &["metadata"]))))
        .unwrap_or(default)
}

/// Meshes `template` (a pod, or a workload's pod template: `metadata` and `spec`) of
/// the workload named `name`. A template injected already is injected anew, so its
/// annotations' changes apply.
pub fn inject(template: &mut Mapping, name: &str, options: &Options) -> Result<(), Refusal> {
    uninject(template);
    let settings = Settings::read(template, name, options)?;
    let spec = map_entry(template, "spec");
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(Refusal::Pod(
            "it uses the node's network (hostNetwork): its sidecar's ports would be the \
             node's"
                .into(),
        ));
    }
    for container in containers(spec) {
        for port in seq_at(container, &["ports"]) {
            let number = port.get("containerPort").and_then(Value::as_u64);
            if number == Some(u64::from(INBOUND_PORT)) || number == Some(u64::from(ADMIN_PORT)) {
                return Err(Refusal::Pod(format!(
                    "container {} uses port {}, which the sidecar listens on",
                    str_of(container, "name"),
                    number.unwrap_or_default()
                )));
            }
        }
    }
    let mut added = Added {
        mode: options.mode.as_str().to_owned(),
        ..Added::default()
    };
    if options.mode == Mode::Container {
        added.probes = accepted_probes(spec);
    }
    let sidecar = Value::Mapping(settings.container(options.mode));
    let list = match options.mode {
        Mode::Native => "initContainers",
        Mode::Container => "containers",
    };
    seq_entry(spec, list).insert(0, sidecar);
    let volumes = seq_entry(spec, "volumes");
    if !volumes.iter().any(|v| str_of(v, "name") == CA_VOLUME) {
        volumes.push(yaml_map([
            ("name", CA_VOLUME.into()),
            (
                "configMap",
                yaml_map([
                    ("name", settings.ca_config_map.clone().into()),
                    (
                        "items",
                        Value::Sequence(vec![yaml_map([
                            ("key", "ca.pem".into()),
                            ("path", "ca.pem".into()),
                        ])]),
                    ),
                ]),
            ),
        ]));
        added.volume = true;
    }

    let app = app_containers(spec)
        .next()
        .map(|c| str_of(c, "name").to_owned());
    let scraped = annotations_ref(template).is_some_and(|a| a.contains_key("prometheus.io/scrape"));
    let metadata = map_entry(template, "metadata");
    let labels = map_entry(metadata, "labels");
    if !labels.contains_key(MESHED_LABEL.0) {
        labels.insert(MESHED_LABEL.0.into(), MESHED_LABEL.1.into());
        added.labels.push(MESHED_LABEL.0.to_owned());
    }
    let annotations = map_entry(metadata, "annotations");
    let mut add = |key: &str, value: String| {
        if !annotations.contains_key(key) {
            annotations.insert(key.into(), value.into());
            added.annotations.push(key.to_owned());
        }
    };
    if !scraped {
        add("prometheus.io/scrape", "true".into());
        add("prometheus.io/port", ADMIN_PORT.to_string());
        add("prometheus.io/path", "/metrics".into());
    }
    if let Some(app) = app {
        add("kubectl.kubernetes.io/default-container", app);
    }
    let record = serde_json::to_string(&added).expect("the record serializes");
    map_entry(map_entry(template, "metadata"), "annotations")
        .insert(INJECTED.into(), record.into());
    Ok(())
}

/// Takes away what [`inject`] added to `template`; true if there was anything.
pub fn uninject(template: &mut Mapping) -> bool {
    let record = annotations_ref(template)
        .and_then(|a| a.get(INJECTED))
        .and_then(Value::as_str)
        .map(|r| serde_json::from_str::<Added>(r).unwrap_or_default());
    let spec = map_entry(template, "spec");
    let mut removed = false;
    for list in ["initContainers", "containers"] {
        if let Some(Value::Sequence(items)) = spec.get_mut(list) {
            let before = items.len();
            items.retain(|c| str_of(c, "name") != SIDECAR);
            removed |= items.len() != before;
            if items.is_empty() && list == "initContainers" {
                spec.shift_remove(list);
            }
        }
    }
    let Some(added) = record else {
        return removed;
    };
    if added.volume
        && let Some(Value::Sequence(volumes)) = spec.get_mut("volumes")
    {
        volumes.retain(|v| str_of(v, "name") != CA_VOLUME);
        if volumes.is_empty() {
            spec.shift_remove("volumes");
        }
    }
    for (container, probes) in &added.probes {
        if let Some(c) = containers_mut(spec).find(|c| name_of(c) == container) {
            for (probe, original) in probes {
                c.insert(probe.as_str().into(), original.clone());
            }
        }
    }
    let metadata = map_entry(template, "metadata");
    for (field, keys) in [
        ("labels", &added.labels),
        ("annotations", &added.annotations),
    ] {
        if let Some(Value::Mapping(map)) = metadata.get_mut(field) {
            for key in keys {
                map.shift_remove(key.as_str());
            }
        }
    }
    if let Some(Value::Mapping(annotations)) = metadata.get_mut("annotations") {
        annotations.shift_remove(INJECTED);
    }
    for field in ["labels", "annotations"] {
        if matches!(metadata.get(field), Some(Value::Mapping(m)) if m.is_empty()) {
            metadata.shift_remove(field);
        }
    }
    true
}

// === impl Settings ===

impl Settings {
    fn read(template: &Mapping, name: &str, options: &Options) -> Result<Settings, Refusal> {
        let annotations = annotations_ref(template);
        let get = |key: &str| -> Option<String> {
            annotations
                .and_then(|a| a.get(format!("mesh.dev/{key}").as_str()))
                .and_then(scalar)
        };
        let labels = map_at(template, &["metadata", "labels"]);
        let service = get("service")
            .or_else(|| labels.and_then(|l| str_at(l, &["app.kubernetes.io/name"])).map(str::to_owned))
            .or_else(|| labels.and_then(|l| str_at(l, &["app"])).map(str::to_owned))
            .or_else(|| (!name.is_empty()).then(|| name.to_owned()))
            .ok_or(Refusal::Annotation {
                key: "service",
                why: "the pod has no app.kubernetes.io/name or app label to name its service by: set it".into(),
            })?;
        validate::service_name(&service).map_err(|e| Refusal::Annotation {
            key: "service",
            why: format!("{service:?}: {e}"),
        })?;

        let spec = map_at(template, &["spec"]);
        let first_port =
            spec.and_then(|s| app_containers(s).flat_map(|c| seq_at(c, &["ports"])).next());
        let app_port = match get("app-port") {
            Some(port) => {
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(Refusal::Annotation {
                        key: "app-port",
                        why: format!("{port:?} is not a port number (1-65535)"),
                    })?
            }
            None => first_port
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(Refusal::Annotation {
                    key: "app-port",
                    why: "no container declares a port: set the app's port".into(),
                })?,
        };
        let app_protocol = match get("app-protocol") {
            Some(p) => p.parse::<Protocol>().map_err(|why| Refusal::Annotation {
                key: "app-protocol",
                why: format!("{p:?}: {why}"),
            })?,
            None => {
                let named = spec
                    .into_iter()
                    .flat_map(containers)
                    .flat_map(|c| seq_at(c, &["ports"]))
                    .find(|p| {
                        p.get("containerPort").and_then(Value::as_u64) == Some(app_port.into())
                    })
                    .map(|p| str_of(p, "name").to_owned())
                    .unwrap_or_default();
                match named.as_str() {
                    n if n.starts_with("grpc") => Protocol::Grpc,
                    n if n.starts_with("h2") => Protocol::H2,
                    _ => Protocol::Http,
                }
            }
        };
        let tls = get("tls").unwrap_or_else(|| "permissive".into());
        if !matches!(tls.as_str(), "off" | "permissive" | "strict") {
            return Err(Refusal::Annotation {
                key: "tls",
                why: format!("{tls:?}: must be off, permissive or strict"),
            });
        }
        let access_log = get("access-log");
        if let Some(log) = &access_log
            && !matches!(log.as_str(), "off" | "stdout")
        {
            return Err(Refusal::Annotation {
                key: "access-log",
                why: format!(
                    "{log:?}: must be off or stdout (a file would be lost with the container)"
                ),
            });
        }
        let drain_timeout = get("drain-timeout").unwrap_or_else(|| "10s".into());
        humantime::parse_duration(&drain_timeout)
            .ok()
            .filter(|d| *d <= Duration::from_secs(3600))
            .ok_or(Refusal::Annotation {
                key: "drain-timeout",
                why: format!("{drain_timeout:?} is not a duration such as 10s"),
            })?;
        let registry = get("registry").unwrap_or_else(|| options.registry.clone());
        if !(registry.starts_with("https://") || registry.starts_with("http://")) {
            return Err(Refusal::Annotation {
                key: "registry",
                why: format!("{registry:?} is not an http:// or https:// URL"),
            });
        }
        let resources = [
            (
                "requests",
                "cpu",
                get("proxy-cpu-request").unwrap_or_else(|| "25m".into()),
            ),
            (
                "requests",
                "memory",
                get("proxy-memory-request").unwrap_or_else(|| "32Mi".into()),
            ),
            (
                "limits",
                "cpu",
                get("proxy-cpu-limit").unwrap_or_else(|| "500m".into()),
            ),
            (
                "limits",
                "memory",
                get("proxy-memory-limit").unwrap_or_else(|| "64Mi".into()),
            ),
        ];
        Ok(Settings {
            join_token_secret: get("join-token-secret")
                .unwrap_or_else(|| format!("mesh-join-token-{service}")),
            service,
            app_port,
            app_protocol,
            health_path: get("health-path"),
            upstreams: get("upstreams"),
            tls,
            allow: get("allow"),
            metadata: get("metadata"),
            registry,
            ca_config_map: get("registry-ca").unwrap_or_else(|| CA_VOLUME.into()),
            log_level: get("log-level"),
            access_log,
            drain_timeout,
            image: get("proxy-image").unwrap_or_else(|| options.image.clone()),
            resources,
        })
    }

    /// The sidecar container.
    fn container(&self, mode: Mode) -> Mapping {
        let field = |name: &str, path: &str| {
            yaml_map([
                ("name", name.into()),
                (
                    "valueFrom",
                    yaml_map([("fieldRef", yaml_map([("fieldPath", path.into())]))]),
                ),
            ])
        };
        let var =
            |name: &str, value: String| yaml_map([("name", name.into()), ("value", value.into())]);
        let mut env = vec![
            field("POD_IP", "status.podIP"),
            field("POD_NAME", "metadata.name"),
            var("MESH_SERVICE", self.service.clone()),
            var("MESH_APP", format!("127.0.0.1:{}", self.app_port)),
        ];
        if self.app_protocol != Protocol::Http {
            env.push(var("MESH_APP_PROTOCOL", self.app_protocol.as_str().into()));
        }
        let optional = [
            ("MESH_HEALTH_PATH", &self.health_path),
            ("MESH_UPSTREAMS", &self.upstreams),
            ("MESH_METADATA", &self.metadata),
        ];
        env.extend(
            optional
                .iter()
                .filter_map(|(n, v)| v.as_ref().map(|v| var(n, v.clone()))),
        );
        env.extend([
            var("MESH_REGISTRY", self.registry.clone()),
            var("MESH_REGISTRY_CA", format!("{CA_MOUNT}/ca.pem")),
            var("MESH_INBOUND", format!("0.0.0.0:{INBOUND_PORT}")),
            var("MESH_ADVERTISE", format!("$(POD_IP):{INBOUND_PORT}")),
            var("MESH_ADMIN", format!("0.0.0.0:{ADMIN_PORT}")),
        ]);
        if let Some(log) = &self.access_log {
            env.push(var("MESH_ACCESS_LOG", log.clone()));
        }
        env.extend([
            var("MESH_INSTANCE_ID", "$(POD_NAME)".into()),
            var("MESH_DRAIN_TIMEOUT", self.drain_timeout.clone()),
            var("MESH_TLS", self.tls.clone()),
        ]);
        if let Some(allow) = &self.allow {
            env.push(var("MESH_ALLOW", allow.clone()));
        }
        env.push(yaml_map([
            ("name", "MESH_JOIN_TOKEN".into()),
            (
                "valueFrom",
                yaml_map([(
                    "secretKeyRef",
                    yaml_map([
                        ("name", self.join_token_secret.clone().into()),
                        ("key", "token".into()),
                    ]),
                )]),
            ),
        ]));
        if let Some(level) = &self.log_level {
            env.push(var("RUST_LOG", level.clone()));
        }

        let http_get = |path: &str| {
            yaml_map([(
                "httpGet",
                yaml_map([("path", path.into()), ("port", "mesh-admin".into())]),
            )])
        };
        let probe = |path: &str, period: u64, extra: Option<(&str, u64)>| {
            let Value::Mapping(mut probe) = http_get(path) else {
                unreachable!("http_get makes a mapping")
            };
            probe.insert("periodSeconds".into(), period.into());
            if let Some((key, value)) = extra {
                probe.insert(key.into(), value.into());
            }
            Value::Mapping(probe)
        };
        let mut resources = Mapping::new();
        for (kind, resource, value) in &self.resources {
            map_entry(&mut resources, kind).insert((*resource).into(), value.clone().into());
        }
        let mut c = Mapping::new();
        c.insert("name".into(), SIDECAR.into());
        c.insert("image".into(), self.image.clone().into());
        c.insert("imagePullPolicy".into(), "IfNotPresent".into());
        if mode == Mode::Native {
            // A native sidecar: started, and ready, before the app's containers; stopped
            // only after they have exited.
            c.insert("restartPolicy".into(), "Always".into());
        }
        c.insert(
            "command".into(),
            Value::Sequence(vec!["/mesh-proxy".into()]),
        );
        c.insert("env".into(), Value::Sequence(env));
        c.insert(
            "ports".into(),
            Value::Sequence(vec![
                yaml_map([
                    ("name", "mesh-inbound".into()),
                    ("containerPort", INBOUND_PORT.into()),
                ]),
                yaml_map([
                    ("name", "mesh-admin".into()),
                    ("containerPort", ADMIN_PORT.into()),
                ]),
            ]),
        );
        if mode == Mode::Container {
            // The kubelet starts the containers in order and the next only once this hook
            // has returned: the app starts once its sidecar is ready, or after the wait.
            c.insert(
                "lifecycle".into(),
                yaml_map([(
                    "postStart",
                    yaml_map([(
                        "exec",
                        yaml_map([(
                            "command",
                            Value::Sequence(vec![
                                "/mesh-probe".into(),
                                "--wait".into(),
                                STARTUP_WAIT.into(),
                                format!("http://127.0.0.1:{ADMIN_PORT}/ready").into(),
                            ]),
                        )]),
                    )]),
                )]),
            );
        }
        c.insert(
            "startupProbe".into(),
            probe("/ready", 1, Some(("failureThreshold", 120))),
        );
        c.insert("readinessProbe".into(), probe("/ready", 5, None));
        c.insert("livenessProbe".into(), probe("/live", 10, None));
        c.insert("resources".into(), Value::Mapping(resources));
        c.insert(
            "securityContext".into(),
            yaml_map([
                ("runAsNonRoot", true.into()),
                ("runAsUser", RESTRICTED_UID.into()),
                ("runAsGroup", RESTRICTED_UID.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    yaml_map([("drop", Value::Sequence(vec!["ALL".into()]))]),
                ),
                (
                    "seccompProfile",
                    yaml_map([("type", "RuntimeDefault".into())]),
                ),
            ]),
        );
        c.insert(
            "volumeMounts".into(),
            Value::Sequence(vec![yaml_map([
                ("name", CA_VOLUME.into()),
                ("mountPath", CA_MOUNT.into()),
                ("readOnly", true.into()),
            ])]),
        );
        c
    }
}

/// Container mode is for clusters older than 1.24, which refuse gRPC probes: each
/// becomes a TCP probe of the same port. Returns the probes as they were.
fn accepted_probes(spec: &mut Mapping) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut rewritten = BTreeMap::new();
    for c in containers_mut(spec) {
        let name = name_of(c).to_owned();
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let Some(Value::Mapping(p)) = c.get_mut(probe) else {
                continue;
            };
            let Some(Value::Mapping(grpc)) = p.get("grpc") else {
                continue;
            };
            let port = grpc.get("port").cloned().unwrap_or(Value::Null);
            let original = Value::Mapping(p.clone());
            p.shift_remove("grpc");
            p.insert("tcpSocket".into(), yaml_map([("port", port)]));
            rewritten
                .entry(name.clone())
                .or_insert_with(BTreeMap::new)
                .insert(probe.to_owned(), original);
        }
    }
    rewritten
}

// === YAML helpers ===

fn yaml_map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// A scalar annotation value as text (YAML may have read `8080` as a number).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn name_of(container: &Mapping) -> &str {
    container.get("name").and_then(Value::as_str).unwrap_or("")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn map_at<'a>(map: &'a Mapping, path: &[&str]) -> Option<&'a Mapping> {
    let mut at = map;
    for key in path {
        at = at.get(*key)?.as_mapping()?;
    }
    Some(at)
}

pub(super) fn str_at<'a>(map: &'a Mapping, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    map_at(map, parents)?.get(*last)?.as_str()
}

fn seq_at<'a>(map: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a Value> {
    let mut at = Some(map);
    for key in path {
        at = at.and_then(|v| v.get(*key));
    }
    at.and_then(Value::as_sequence).into_iter().flatten()
}

fn annotations_ref(template: &Mapping) -> Option<&Mapping> {
    map_at(template, &["metadata", "annotations"])
}

/// The mapping at `key`, made (or made a mapping) if it is not one.
pub(super) fn map_entry<'a>(map: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let entry = map
        .entry(key.into())
        .or_insert(Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut().expect("made a mapping")
}

fn seq_entry<'a>(map: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let entry = map.entry(key.into()).or_insert(Value::Sequence(Vec::new()));
    if !entry.is_sequence() {
        *entry = Value::Sequence(Vec::new());
    }
    entry.as_sequence_mut().expect("made a sequence")
}

/// The pod's containers, init containers first.
fn containers(spec: &Mapping) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|list| spec.get(list).and_then(Value::as_sequence))
        .flatten()
}

/// The app's containers: the pod's `containers` but the sidecar.
fn app_containers(spec: &Mapping) -> impl Iterator<Item = &Value> {
    spec.get("containers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter(|c| str_of(c, "name") != SIDECAR)
}

fn containers_mut(spec: &mut Mapping) -> impl Iterator<Item = &mut Mapping> {
    spec.iter_mut()
        .filter(|(k, _)| k.as_str() == Some("containers") || k.as_str() == Some("initContainers"))
        .filter_map(|(_, v)| v.as_sequence_mut())
        .flatten()
        .filter_map(Value::as_mapping_mut)
}
