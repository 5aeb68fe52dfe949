//! `meshctl register` and `meshctl deregister`: writes to the registry.
//!
//! A registration holds a lease like any other: meshctl does not heartbeat, so the
//! instance turns critical when `--ttl` runs out and is removed after the registry's
//! `--critical-grace`. That suits a quick test or a short manual override; a lasting
//! instance needs something that heartbeats (a sidecar, or the registry API's client).

use std::io::Write;
use std::time::SystemTime;

use mesh_registry_api::Registration;

use crate::cli::RegisterArgs;
use crate::output::{self, Format};
use crate::{Ctl, Error, human, listing};

/// Registers the instance and prints it as stored. JSON: the stored instance.
pub async fn register(ctl: &Ctl, args: RegisterArgs, out: &mut dyn Write) -> Result<(), Error> {
    let mut registration = Registration::new(args.address);
    registration.protocol = args.protocol;
    registration.weight = args.weight;
    registration.ttl = args.ttl;
    registration.status = args.status;
    registration.tags = args.tags;
    registration.metadata = args.metadata.into_iter().collect();
    let instance = ctl
        .registry
        .register(&args.service, &args.id, &registration)
        .await?;
    // On stderr: it is advice, not the answer, and must not break JSON output.
    eprintln!(
        "note: {}/{} holds a {} lease; without heartbeats it turns critical when it runs out",
        args.service,
        args.id,
        human::duration(args.ttl)
    );
    if ctl.format == Format::Json {
        return Ok(output::json(out, &instance)?);
    }
    listing::instance_table(&[instance], SystemTime::now()).print(out)?;
    Ok(())
}

/// Deregisters the instance. Removing one the registry does not know is no error: the
/// instance is gone either way. JSON: `{"service", "id", "deregistered": true}`.
pub async fn deregister(
    ctl: &Ctl,
    service: &str,
    id: &str,
    out: &mut dyn Write,
) -> Result<(), Error> {
    ctl.registry.deregister(service, id).await?;
    if ctl.format == Format::Json {
        let answer = serde_json::json!({"service": service, "id": id, "deregistered": true});
        return Ok(output::json(out, &answer)?);
    }
    writeln!(out, "deregistered {service}/{id}")?;
    Ok(())
}
