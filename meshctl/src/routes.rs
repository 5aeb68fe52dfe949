//! `meshctl routes SERVICE`: a destination's routes as its callers' sidecars apply them,
//! and the split their calls actually took.
//!
//! The registry holds the routes; each calling sidecar follows them on its own, so the
//! question an operator moving a canary asks is whether every caller has the new split
//! and what it does with it. For each sidecar following SERVICE this reads the routes in
//! force (`/debug/policy`: the policy index read, whether it is stale) and its tries of
//! the last 10 s per endpoint (`/debug/endpoints`), and counts, for each backend, the
//! tries that went to instances its subset selects (their metadata, from the registry).

use std::collections::BTreeMap;
use std::io::Write;

use mesh_registry_api::AdminPath;
use mesh_registry_api::policy::{PolicyKind, Routes, Selector};
use mesh_registry_api::sidecar::DestinationView;
use serde::{Deserialize, Serialize};

use crate::output::{self, Format, Table};
use crate::reach::SidecarError;
use crate::sidecars::{self, Sidecar, each};
use crate::{Ctl, Error};

/// One destination of a sidecar's `/debug/policy`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Followed {
    service: String,
    index: u64,
    stale: Option<String>,
    refused: BTreeMap<String, String>,
    routes: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct PolicyPage {
    destinations: Vec<Followed>,
}

/// One backend of one rule as one sidecar applies it.
#[derive(Serialize, Debug)]
pub struct Split {
    pub rule: String,
    pub subset: String,
    pub weight: u32,
    /// Instances of the service its subset selects (passing or not).
    pub instances: usize,
    /// The sidecar's tries of the last 10 s to those instances.
    pub tries: u64,
    /// `tries` over all its tries to the service in that time; `None` without tries.
    pub share: Option<f64>,
}

/// What one calling sidecar applies. JSON: an array of these.
#[derive(Serialize, Debug)]
pub struct SidecarRoutes {
    pub sidecar: String,
    /// The policy index its routes were read at, against the registry's.
    pub index: u64,
    pub registry_index: u64,
    /// `current`, `behind` (an older index: the change has not reached it), or `stale`
    /// (it cannot reach the registry and keeps its last routes).
    pub state: &'static str,
    pub refused: Option<String>,
    pub splits: Vec<Split>,
}

pub async fn run(ctl: &Ctl, service: &str, out: &mut dyn Write) -> Result<(), Error> {
    let policy = ctl.registry.policy(service).await?;
    let instances = ctl.registry.service_all(service).await?.instances;
    let asked = sidecars::list(&ctl.registry).await?;
    let answers = each(asked, |sidecar| {
        let admins = ctl.admins.clone();
        async move {
            let pages = read(&admins, &sidecar).await;
            (sidecar, pages)
        }
    })
    .await;
    let mut views = Vec::new();
    for (sidecar, pages) in answers {
        let (policy_page, endpoints) = match pages {
            Ok(pages) => pages,
            Err(e) => {
                output::note(&format!("note: skipped {sidecar}: {}", crate::explain(&e)));
                continue;
            }
        };
        let Some(followed) = policy_page
            .destinations
            .into_iter()
            .find(|d| d.service == service)
        else {
            continue;
        };
        let tries: Vec<(&str, u64)> = endpoints
            .iter()
            .find(|d| d.service == service)
            .map(|d| {
                d.endpoints
                    .iter()
                    .map(|e| (e.instance.as_deref().unwrap_or(&e.address), e.tries))
                    .collect()
            })
            .unwrap_or_default();
        let routes = followed
            .routes
            .clone()
            .and_then(|v| serde_json::from_value::<Routes>(v).ok());
        let state = if followed.stale.is_some() {
            "stale"
        } else if followed.index < policy.index {
            "behind"
        } else {
            "current"
        };
        views.push(SidecarRoutes {
            sidecar: sidecar.to_string(),
            index: followed.index,
            registry_index: policy.index,
            state,
            refused: followed.refused.get(PolicyKind::Routes.as_str()).cloned(),
            splits: splits(routes.as_ref(), &instances, &tries),
        });
    }
    if ctl.format == Format::Json {
        return Ok(output::json(out, &views)?);
    }
    if policy.routes.is_none() {
        writeln!(
            out,
            "{service} has no routes: its callers balance over every instance"
        )?;
    }
    if views.is_empty() {
        writeln!(
            out,
            "no sidecar follows {service} now (a sidecar follows a service from its app's first call to it)"
        )?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "SIDECAR",
        "INDEX",
        "STATE",
        "RULE",
        "SUBSET",
        "WEIGHT",
        "INSTANCES",
        "TRIES",
        "SHARE",
    ]);
    for view in &views {
        let state = match &view.refused {
            Some(_) => format!("{} (refused)", view.state),
            None => view.state.to_owned(),
        };
        if view.splits.is_empty() {
            let cells = [
                &view.sidecar,
                &view.index.to_string(),
                &state,
                "-",
                "all",
                "-",
                "-",
                "-",
                "-",
            ];
            table.row(cells.iter().map(|c| c.to_string()).collect());
        }
        for split in &view.splits {
            let subset = if split.subset.is_empty() {
                "all"
            } else {
                &split.subset
            };
            let share = split
                .share
                .map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0));
            table.row(vec![
                view.sidecar.clone(),
                view.index.to_string(),
                state.clone(),
                split.rule.clone(),
                subset.to_owned(),
                format!("{}%", split.weight),
                split.instances.to_string(),
                split.tries.to_string(),
                share,
            ]);
        }
    }
    table.print(out)?;
    writeln!(
        out,
        "registry policy index {}; TRIES and SHARE: the sidecar's tries of the last 10 s to the instances each subset selects",
        policy.index
    )?;
    Ok(())
}

/// Each backend of each rule, with the tries that went to the instances it selects.
fn splits(
    routes: Option<&Routes>,
    instances: &[mesh_registry_api::Instance],
    tries: &[(&str, u64)],
) -> Vec<Split> {
    let Some(routes) = routes else {
        return Vec::new();
    };
    let total: u64 = tries.iter().map(|(_, n)| n).sum();
    let mut splits = Vec::new();
    for rule in &routes.rules {
        for backend in &rule.backends {
            let selector: Selector = backend.subset.parse().unwrap_or_default();
            let selected: Vec<&mesh_registry_api::Instance> = instances
                .iter()
                .filter(|i| selector.matches(&i.metadata))
                .collect();
            let to_them: u64 = tries
                .iter()
                .filter(|(who, _)| selected.iter().any(|i| i.id == *who || i.address == *who))
                .map(|(_, n)| n)
                .sum();
            splits.push(Split {
                rule: rule.name.clone(),
                subset: backend.subset.clone(),
                weight: backend.weight,
                instances: selected.len(),
                tries: to_them,
                share: (total > 0).then(|| to_them as f64 / total as f64),
            });
        }
    }
    splits
}

/// A sidecar's `/debug/policy` and `/debug/endpoints`.
async fn read(
    admins: &crate::reach::Admins,
    sidecar: &Sidecar,
) -> Result<(PolicyPage, Vec<DestinationView>), SidecarError> {
    let policy = admins.get_ok(sidecar, AdminPath::DebugPolicy).await?;
    let policy = serde_json::from_slice(&policy).map_err(|e| SidecarError::Unreadable {
        path: AdminPath::DebugPolicy,
        reason: e.to_string(),
    })?;
    let endpoints = admins.get_ok(sidecar, AdminPath::DebugEndpoints).await?;
    let endpoints = serde_json::from_slice(&endpoints).map_err(|e| SidecarError::Unreadable {
        path: AdminPath::DebugEndpoints,
        reason: e.to_string(),
    })?;
    Ok((policy, endpoints))
}
