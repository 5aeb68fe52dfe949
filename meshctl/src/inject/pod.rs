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
/// A container's probes, which container mode may rewrite.
const PROBES: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];
const ADMIN_PORT: u16 = 4191;

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
    room_for_a_sidecar(spec)?;
    let mut added = Added {
        mode: options.mode.as_str().to_owned(),
        ..Added::default()
    };
    if options.mode == Mode::Container {
        added.probes = accepted_probes(spec);
    }
    let list = match options.mode {
        Mode::Native => "initContainers",
        Mode::Container => "containers",
    };
    let sidecar = Value::Mapping(settings.container(options.mode));
    seq_entry(spec, list).insert(0, sidecar);
    let volumes = seq_entry(spec, "volumes");
    if !volumes.iter().any(|v| str_of(v, "name") == CA_VOLUME) {
        let item = yaml_map([("key", "ca.pem".into()), ("path", "ca.pem".into())]);
        let config_map = yaml_map([
            ("name", settings.ca_config_map.clone().into()),
            ("items", Value::Sequence(vec![item])),
        ]);
        volumes.push(yaml_map([
            ("name", CA_VOLUME.into()),
            ("configMap", config_map),
        ]));
        added.volume = true;
    }
    label(template, &mut added);
    let record = serde_json::to_string(&added).expect("the record serializes");
    map_entry(map_entry(template, "metadata"), "annotations")
        .insert(INJECTED.into(), record.into());
    Ok(())
}

/// Refuses a pod whose sidecar could not listen: on the node's network, or beside a
/// container using its ports.
fn room_for_a_sidecar(spec: &Mapping) -> Result<(), Refusal> {
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
    Ok(())
}

/// The meshed label, the Prometheus annotations and the default container, each where
/// the pod has none of its own; `added` records which.
fn label(template: &mut Mapping, added: &mut Added) {
    let spec = map_entry(template, "spec");
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
            // Only probes: the record is an annotation whoever writes the pod may forge.
            for (probe, original) in probes.iter().filter(|(p, _)| PROBES.contains(&p.as_str())) {
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

/// The sidecar container's fixed parts, as a manifest spells them; [`Settings::container`]
/// fills in the rest and drops what the mode does not use.
const CONTAINER: &str = r#"
name: mesh-proxy
image: ""
imagePullPolicy: IfNotPresent
# A native sidecar: started, and ready, before the app's containers; stopped only after
# they have exited.
restartPolicy: Always
command: ["/mesh-proxy"]
env: []
ports:
  - {name: mesh-inbound, containerPort: 4143}
  - {name: mesh-admin, containerPort: 4191}
# Container mode: the kubelet starts a pod's containers in order, the next only once this
# hook has returned, so the app starts once its sidecar is ready (or after the wait).
lifecycle:
  postStart:
    exec:
      command: ["/mesh-probe", "--wait", "120s", "http://127.0.0.1:4191/ready"]
startupProbe: {httpGet: {path: /ready, port: mesh-admin}, periodSeconds: 1, failureThreshold: 120}
readinessProbe: {httpGet: {path: /ready, port: mesh-admin}, periodSeconds: 5}
livenessProbe: {httpGet: {path: /live, port: mesh-admin}, periodSeconds: 10}
resources: {}
securityContext:
  runAsNonRoot: true
  runAsUser: 65534
  runAsGroup: 65534
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
  seccompProfile: {type: RuntimeDefault}
volumeMounts:
  - {name: mesh-ca-bundle, mountPath: /ca, readOnly: true}
"#;

// === impl Settings ===

impl Settings {
    fn read(template: &Mapping, name: &str, options: &Options) -> Result<Settings, Refusal> {
        let annotations = annotations_ref(template);
        let get = |key: &str| -> Option<String> {
            annotations
                .and_then(|a| a.get(format!("mesh.dev/{key}").as_str()))
                .and_then(scalar)
        };
        let or = |key: &str, default: &str| get(key).unwrap_or_else(|| default.to_owned());
        let service = service(template, name, get("service"))?;
        let spec = map_at(template, &["spec"]);
        let app_port = app_port(spec, get("app-port"))?;
        let app_protocol = app_protocol(spec, app_port, get("app-protocol"))?;
        let tls = one_of(
            "tls",
            or("tls", "permissive"),
            &["off", "permissive", "strict"],
        )?;
        let access_log = get("access-log")
            .map(|log| one_of("access-log", log, &["off", "stdout"]))
            .transpose()?;
        let drain_timeout = or("drain-timeout", "10s");
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
        Ok(Settings {
            join_token_secret: or("join-token-secret", &format!("mesh-join-token-{service}")),
            service,
            app_port,
            app_protocol,
            health_path: get("health-path"),
            upstreams: get("upstreams"),
            tls,
            allow: get("allow"),
            metadata: get("metadata"),
            registry,
            ca_config_map: or("registry-ca", CA_VOLUME),
            log_level: get("log-level"),
            access_log,
            drain_timeout,
            image: get("proxy-image").unwrap_or_else(|| options.image.clone()),
            resources: [
                ("requests", "cpu", or("proxy-cpu-request", "25m")),
                ("requests", "memory", or("proxy-memory-request", "32Mi")),
                ("limits", "cpu", or("proxy-cpu-limit", "500m")),
                ("limits", "memory", or("proxy-memory-limit", "64Mi")),
            ],
        })
    }

    /// The sidecar container.
    fn container(&self, mode: Mode) -> Mapping {
        let mut c: Mapping = serde_norway::from_str(CONTAINER).expect("the template is YAML");
        c.insert("image".into(), self.image.clone().into());
        c.insert("env".into(), Value::Sequence(self.env()));
        let resources = map_entry(&mut c, "resources");
        for (kind, resource, value) in &self.resources {
            map_entry(resources, kind).insert((*resource).into(), value.clone().into());
        }
        match mode {
            Mode::Native => c.shift_remove("lifecycle"),
            Mode::Container => c.shift_remove("restartPolicy"),
        };
        c
    }

    /// The sidecar's flags, as its environment.
    fn env(&self) -> Vec<Value> {
        let from = |name: &str, source: &str, fields: Value| {
            yaml_map([
                ("name", name.into()),
                ("valueFrom", yaml_map([(source, fields)])),
            ])
        };
        let mut env = vec![
            from(
                "POD_IP",
                "fieldRef",
                yaml_map([("fieldPath", "status.podIP".into())]),
            ),
            from(
                "POD_NAME",
                "fieldRef",
                yaml_map([("fieldPath", "metadata.name".into())]),
            ),
        ];
        let protocol = (self.app_protocol != Protocol::Http).then(|| self.app_protocol.as_str());
        let vars: [(&str, Option<String>); 16] = [
            ("MESH_SERVICE", Some(self.service.clone())),
            ("MESH_APP", Some(format!("127.0.0.1:{}", self.app_port))),
            ("MESH_APP_PROTOCOL", protocol.map(str::to_owned)),
            ("MESH_HEALTH_PATH", self.health_path.clone()),
            ("MESH_UPSTREAMS", self.upstreams.clone()),
            ("MESH_METADATA", self.metadata.clone()),
            ("MESH_REGISTRY", Some(self.registry.clone())),
            ("MESH_REGISTRY_CA", Some(format!("{CA_MOUNT}/ca.pem"))),
            ("MESH_INBOUND", Some(format!("0.0.0.0:{INBOUND_PORT}"))),
            ("MESH_ADVERTISE", Some(format!("$(POD_IP):{INBOUND_PORT}"))),
            ("MESH_ADMIN", Some(format!("0.0.0.0:{ADMIN_PORT}"))),
            ("MESH_ACCESS_LOG", self.access_log.clone()),
            ("MESH_INSTANCE_ID", Some("$(POD_NAME)".into())),
            ("MESH_DRAIN_TIMEOUT", Some(self.drain_timeout.clone())),
            ("MESH_TLS", Some(self.tls.clone())),
            ("MESH_ALLOW", self.allow.clone()),
        ];
        env.extend(vars.into_iter().filter_map(|(name, value)| {
            value.map(|v| yaml_map([("name", name.into()), ("value", v.into())]))
        }));
        let secret = yaml_map([
            ("name", self.join_token_secret.clone().into()),
            ("key", "token".into()),
        ]);
        env.push(from("MESH_JOIN_TOKEN", "secretKeyRef", secret));
        if let Some(level) = &self.log_level {
            env.push(yaml_map([
                ("name", "RUST_LOG".into()),
                ("value", level.clone().into()),
            ]));
        }
        env
    }
}

/// The service name: the annotation, else the pod's app labels, else the workload's name.
fn service(template: &Mapping, name: &str, said: Option<String>) -> Result<String, Refusal> {
    let labels = map_at(template, &["metadata", "labels"]);
    let label = |key: &str| labels.and_then(|l| str_at(l, &[key])).map(str::to_owned);
    let service = said
        .or_else(|| label("app.kubernetes.io/name"))
        .or_else(|| label("app"))
        .or_else(|| (!name.is_empty()).then(|| name.to_owned()))
        .ok_or(Refusal::Annotation {
            key: "service",
            why: "the pod has no app.kubernetes.io/name or app label to name its service by: \
                  set it"
                .into(),
        })?;
    validate::service_name(&service).map_err(|e| Refusal::Annotation {
        key: "service",
        why: format!("{service:?}: {e}"),
    })?;
    Ok(service)
}

/// The app's port: the annotation, else the first port its containers declare.
fn app_port(spec: Option<&Mapping>, said: Option<String>) -> Result<u16, Refusal> {
    let port = match said {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(format!("{port:?} is not a port number (1-65535)")),
        None => spec
            .and_then(|s| app_containers(s).flat_map(|c| seq_at(c, &["ports"])).next())
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("no container declares a port: set the app's port".to_owned()),
    };
    port.map_err(|why| Refusal::Annotation {
        key: "app-port",
        why,
    })
}

/// The app's protocol: the annotation, else what the name of its port says (`grpc…`,
/// `h2…`), else HTTP/1.1.
fn app_protocol(
    spec: Option<&Mapping>,
    port: u16,
    said: Option<String>,
) -> Result<Protocol, Refusal> {
    if let Some(p) = said {
        return p.parse::<Protocol>().map_err(|why| Refusal::Annotation {
            key: "app-protocol",
            why: format!("{p:?}: {why}"),
        });
    }
    let named = spec
        .into_iter()
        .flat_map(containers)
        .flat_map(|c| seq_at(c, &["ports"]))
        .find(|p| p.get("containerPort").and_then(Value::as_u64) == Some(port.into()))
        .map_or("", |p| str_of(p, "name"));
    Ok(match named {
        n if n.starts_with("grpc") => Protocol::Grpc,
        n if n.starts_with("h2") => Protocol::H2,
        _ => Protocol::Http,
    })
}

/// `value` if it is one of `allowed`.
fn one_of(key: &'static str, value: String, allowed: &[&str]) -> Result<String, Refusal> {
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    Err(Refusal::Annotation {
        key,
        why: format!("{value:?}: must be {}", allowed.join(", ")),
    })
}

/// Container mode is for clusters older than 1.24, which refuse gRPC probes: each
/// becomes a TCP probe of the same port. Returns the probes as they were.
fn accepted_probes(spec: &mut Mapping) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut rewritten = BTreeMap::new();
    for c in containers_mut(spec) {
        let name = name_of(c).to_owned();
        for probe in PROBES {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_record_restores_probes_and_nothing_else() {
        let record = r#"{"probes":{"app":{"securityContext":{"privileged":true},"readinessProbe":{"tcpSocket":{"port":80}}}}}"#;
        let mut template: Mapping = serde_norway::from_str(&format!(
            "metadata: {{annotations: {{mesh.dev/injected: '{record}'}}}}\n\
             spec: {{containers: [{{name: app, image: a}}]}}"
        ))
        .unwrap();
        assert!(uninject(&mut template));
        let app = &template["spec"]["containers"][0];
        assert!(app.get("securityContext").is_none(), "{app:?}");
        assert_eq!(app["readinessProbe"]["tcpSocket"]["port"], 80);
    }

    #[test]
    fn the_container_template_agrees_with_the_constants() {
        let c: Mapping = serde_norway::from_str(CONTAINER).unwrap();
        let ports: Vec<u64> = seq_at(&Value::Mapping(c.clone()), &["ports"])
            .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
            .collect();
        assert_eq!(ports, [u64::from(INBOUND_PORT), u64::from(ADMIN_PORT)]);
        assert_eq!(str_at(&c, &["name"]), Some(SIDECAR));
        let mount = &c["volumeMounts"][0];
        assert_eq!(
            (str_of(mount, "name"), str_of(mount, "mountPath")),
            (CA_VOLUME, CA_MOUNT)
        );
        let hook = &c["lifecycle"]["postStart"]["exec"]["command"][3];
        assert_eq!(
            hook.as_str(),
            Some(format!("http://127.0.0.1:{ADMIN_PORT}/ready").as_str())
        );
    }
}
