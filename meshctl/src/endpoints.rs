//! `meshctl endpoints SERVICE [--via SIDECAR]`: the endpoints of a service as sidecars
//! see them, from their `/debug/endpoints`.
//!
//! The registry says which instances exist; only a sidecar knows which of them it
//! actually routes to (ejected, refused, slow). A sidecar follows a service from its
//! app's first call to it until it has been idle for `--destination-idle-timeout`.

use std::io::Write;

use mesh_registry_api::AdminPath;
use mesh_registry_api::sidecar::DestinationView;
use serde::Serialize;

use crate::output::{self, Format, Table};
use crate::reach::SidecarError;
use crate::sidecars::{self, Sidecar, each};
use crate::{Ctl, Error, human};

/// A destination and the sidecar that sees it so. JSON: an array of these.
#[derive(Serialize, Clone, Debug)]
pub struct View {
    pub sidecar: String,
    #[serde(flatten)]
    pub destination: DestinationView,
}

pub async fn run(
    ctl: &Ctl,
    service: &str,
    via: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let asked = match via {
        Some(via) => vec![sidecars::find(&ctl.registry, via).await?],
        None => sidecars::list(&ctl.registry).await?,
    };
    let answers = each(asked, |sidecar| {
        let admins = ctl.admins.clone();
        async move {
            let destinations = destinations(&admins, &sidecar).await;
            (sidecar, destinations)
        }
    })
    .await;
    let mut views = Vec::new();
    let mut followed = Vec::new();
    for (sidecar, destinations) in answers {
        let destinations = match destinations {
            Ok(d) => d,
            Err(source) if via.is_some() => {
                let sidecar = sidecar.to_string();
                return Err(Error::Sidecar { sidecar, source });
            }
            Err(e) => {
                output::note(&format!("note: skipped {sidecar}: {}", crate::explain(&e)));
                continue;
            }
        };
        for destination in destinations {
            if destination.service == service {
                let sidecar = sidecar.to_string();
                views.push(View {
                    sidecar,
                    destination,
                });
            } else {
                followed.push(destination.service);
            }
        }
    }
    if ctl.format == Format::Json {
        return Ok(output::json(out, &views)?);
    }
    if views.is_empty() {
        let said = nobody(service, via, &followed);
        return Ok(writeln!(out, "{}", output::escape(&said))?);
    }
    for (i, view) in views.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        print(view, out)?;
    }
    Ok(())
}

async fn destinations(
    admins: &crate::reach::Admins,
    sidecar: &Sidecar,
) -> Result<Vec<DestinationView>, SidecarError> {
    let body = admins.get_ok(sidecar, AdminPath::DebugEndpoints).await?;
    serde_json::from_slice(&body).map_err(|e| SidecarError::Unreadable {
        path: AdminPath::DebugEndpoints,
        reason: e.to_string(),
    })
}

/// What to say when no sidecar (or not the one asked) follows `service`.
fn nobody(service: &str, via: Option<&str>, followed: &[String]) -> String {
    match via {
        Some(via) if followed.is_empty() => {
            format!("{via} does not follow {service}; it follows no service now")
        }
        Some(via) => format!(
            "{via} does not follow {service}; it follows {}",
            followed.join(", ")
        ),
        None => format!(
            "no registered sidecar follows {service} now (a sidecar follows a service from \
             its app's first call to it until it has been idle a while)"
        ),
    }
}

fn print(view: &View, out: &mut dyn Write) -> std::io::Result<()> {
    let d = &view.destination;
    let source = d.source.map_or("no answer yet", |s| s.as_str());
    let (sidecar, service) = (output::escape(&view.sidecar), output::escape(&d.service));
    let source = output::escape(source);
    let tcp = if d.protocol == "tcp" { "tcp, " } else { "" };
    writeln!(out, "{sidecar} sees {service} ({tcp}from {source}):")?;
    if let Some(error) = &d.last_error {
        writeln!(out, "last discovery error: {}", output::escape(error))?;
    }
    let mut table = Table::new(&[
        "ADDRESS",
        "INSTANCE",
        "STATE",
        "SUCCESS",
        "EWMA",
        "IN-FLIGHT",
        "OPEN",
        "EJECTED-BY",
        "REASON",
    ]);
    for e in &d.endpoints {
        let success = if e.tries == 0 {
            String::new()
        } else {
            format!("{} of {}", human::percent(e.success_rate), e.tries)
        };
        let ejected = match (&e.ejected_by, e.ejected_for_ms) {
            (Some(rule), Some(ms)) => format!("{rule} ({}s left)", ms.div_ceil(1000)),
            (Some(rule), None) => rule.clone(),
            (None, _) => String::new(),
        };
        table.row(vec![
            e.address.clone(),
            e.instance.clone().unwrap_or_default(),
            e.state.clone(),
            success,
            human::latency(e.ewma_ms / 1000.0),
            e.in_flight.to_string(),
            e.open_connections.to_string(),
            ejected,
            e.reason.clone(),
        ]);
    }
    if table.is_empty() {
        writeln!(out, "no endpoints")?;
    } else {
        table.print(out)?;
    }
    for r in &d.refused {
        let (address, reason) = (output::escape(&r.address), output::escape(&r.reason));
        writeln!(out, "refused {address}: {reason}")?;
    }
    Ok(())
}
