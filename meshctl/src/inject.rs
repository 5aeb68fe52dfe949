//! `meshctl inject` and `meshctl uninject`: Kubernetes manifests in, the same manifests
//! out with the sidecar added to (or taken from) the pods that ask for it.
//!
//! A pod asks with the annotation `mesh.dev/inject: enabled` on its template (or on its
//! workload), or by living in a namespace labelled `mesh.dev/injection: enabled` (a
//! Namespace object among the manifests), or with `--all`; `mesh.dev/inject: disabled`
//! always opts out. Everything the sidecar needs is read from `mesh.dev/*` annotations
//! ([`pod::ANNOTATIONS`]). Objects that hold no pod template pass through as they are.
//! Each mapping's keys keep their order; comments are not kept.

pub mod pod;
pub mod webhook;
mod yaml;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::{Mapping, Value};

pub use pod::Refusal;

/// Where the sidecar goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A native sidecar: an init container with `restartPolicy: Always` (Kubernetes
    /// 1.29+), started and ready before the app, stopped after it.
    Native,
    /// A second container, first in the list, for older clusters (see
    /// docs/deploy-kubernetes.md for what this mode cannot guarantee).
    Container,
}

/// What every injected sidecar gets unless its pod's annotations say otherwise.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// The sidecar's image.
    pub image: String,
    /// The registry's URL, as sidecars reach it.
    pub registry: String,
    /// Mesh every pod that does not opt out.
    pub all: bool,
}

/// What one run did, for the summary on standard error.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub changed: Vec<String>,
    pub skipped: Vec<String>,
}

// === impl SidecarArgs ===

impl crate::cli::SidecarArgs {
    pub fn options(self, all: bool) -> Options {
        Options {
            mode: self.sidecar,
            image: self.proxy_image,
            registry: self.registry_url,
            all,
        }
    }
}

// === impl Options ===

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Native,
            image: "mesh/proxy".into(),
            registry: "https://registry.mesh.svc:7743".into(),
            all: false,
        }
    }
}

/// Says on standard error what a run changed, so the manifests on standard output stay
/// clean for `kubectl apply -f -`.
pub fn report(summary: &Summary, inject: bool) {
    let done = if inject { "injected" } else { "uninjected" };
    for object in &summary.changed {
        crate::output::note(&format!("{object} {done}"));
    }
    for object in &summary.skipped {
        crate::output::note(&format!(
            "{object} skipped (no mesh.dev/inject: enabled, namespace not labelled)"
        ));
    }
}

/// Why manifests could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not YAML: {source}")]
    Yaml {
        path: String,
        source: serde_norway::Error,
    },
    #[error("cannot inject {object}: {refusal}")]
    Refused { object: String, refusal: Refusal },
}

// === impl Mode ===

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Container => "container",
        }
    }
}

/// The pod template of an object, and the object's kind, name and namespace for
/// messages; `None` for kinds that have none.
fn template(object: &mut Mapping) -> Option<(&mut Mapping, String, String)> {
    let kind = object.get("kind").and_then(Value::as_str)?.to_owned();
    let name = pod::str_at(object, &["metadata", "name"])
        .unwrap_or("")
        .to_owned();
    let path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    };
    let mut at = object;
    for key in path {
        at = at.get_mut(*key)?.as_mapping_mut()?;
    }
    Some((at, kind, name))
}

/// Meshes (or with `inject` false, unmeshes) the pods of one object, and of the items
/// of a `List`. `meshed` are the namespaces labelled for injection.
fn apply(
    object: &mut Value,
    options: &Options,
    inject: bool,
    meshed: &BTreeSet<String>,
    summary: &mut Summary,
) -> Result<(), InjectError> {
    let Some(map) = object.as_mapping_mut() else {
        return Ok(());
    };
    if map.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(Value::Sequence(items)) = map.get_mut("items") {
            for item in items {
                apply(item, options, inject, meshed, summary)?;
            }
        }
        return Ok(());
    }
    let namespace = pod::str_at(map, &["metadata", "namespace"])
        .unwrap_or("")
        .to_owned();
    let workload = map.clone();
    let Some((template, kind, name)) = template(map) else {
        return Ok(());
    };
    let object = format!("{kind}/{name}");
    if !inject {
        if pod::uninject(template) {
            summary.changed.push(object);
        }
        return Ok(());
    }
    let default = options.all || meshed.contains(&namespace);
    let workload = (kind != "Pod").then_some(&workload);
    if !pod::wanted(workload, template, default) {
        summary.skipped.push(object);
        return Ok(());
    }
    pod::inject(template, &name, options).map_err(|refusal| InjectError::Refused {
        object: object.clone(),
        refusal,
    })?;
    summary.changed.push(object);
    Ok(())
}

/// The manifests at `inputs` (files, directories read recursively for `.yaml`, `.yml`
/// and `.json` files in name order, or `-` for standard input) as YAML documents.
fn read(inputs: &[String], stdin: &mut dyn Read) -> Result<Vec<Value>, InjectError> {
    let mut files = Vec::new();
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| InjectError::Read {
                    path: "standard input".into(),
                    source,
                })?;
            files.push(("standard input".to_owned(), text));
            continue;
        }
        let mut paths = Vec::new();
        collect(Path::new(input), &mut paths)?;
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| InjectError::Read {
                path: path.display().to_string(),
                source,
            })?;
            files.push((path.display().to_string(), text));
        }
    }
    let mut documents = Vec::new();
    for (path, text) in files {
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).map_err(|source| InjectError::Yaml {
                path: path.clone(),
                source,
            })?;
            if !value.is_null() {
                documents.push(value);
            }
        }
    }
    Ok(documents)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), InjectError> {
    let unreadable = |source| InjectError::Read {
        path: path.display().to_string(),
        source,
    };
    if !path.is_dir() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(unreadable)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort();
    for entry in entries {
        let manifest = entry
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if entry.is_dir() {
            collect(&entry, out)?;
        } else if manifest {
            out.push(entry);
        }
    }
    Ok(())
}

/// `meshctl inject` (or with `inject` false, `uninject`): reads `inputs`, writes the
/// documents to `out`, and returns what it changed. Nothing is written when any pod
/// that asks to be meshed cannot be.
pub fn run(
    inputs: &[String],
    options: &Options,
    inject: bool,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<Summary, crate::Error> {
    let mut documents = read(inputs, stdin)?;
    let meshed: BTreeSet<String> = documents
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("Namespace"))
        .filter(|d| {
            d.get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get(pod::NAMESPACE_LABEL))
                .and_then(Value::as_str)
                == Some("enabled")
        })
        .filter_map(|d| d.get("metadata")?.get("name")?.as_str().map(str::to_owned))
        .collect();
    let mut summary = Summary::default();
    for document in &mut documents {
        apply(document, options, inject, &meshed, &mut summary)?;
    }
    let mut text = String::new();
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&yaml::to_string(document));
    }
    out.write_all(text.as_bytes())?;
    Ok(summary)
}
