//! `meshctl services` and `meshctl instances SERVICE`: the registry's catalog.

use std::io::Write;
use std::time::SystemTime;

use mesh_registry_api::{Instance, Protocol};

use crate::output::{self, Format, Table};
use crate::{Ctl, Error, human};

/// `meshctl services`: each service with its instance counts. JSON: the registry's
/// answer as it is (`{"index", "services": [{"name", "instances", "passing", "index"}]}`).
pub async fn services(ctl: &Ctl, out: &mut dyn Write) -> Result<(), Error> {
    let list = ctl.registry.services().await?;
    if ctl.format == Format::Json {
        return Ok(output::json(out, &list)?);
    }
    if list.services.is_empty() {
        writeln!(out, "no services registered")?;
        return Ok(());
    }
    let mut table = Table::new(&["SERVICE", "INSTANCES", "PASSING"]);
    for s in &list.services {
        table.row(vec![
            s.name.clone(),
            s.instances.to_string(),
            s.passing.to_string(),
        ]);
    }
    Ok(table.print(out)?)
}

/// `meshctl instances SERVICE`: every instance, whatever its status. JSON: the
/// registry's listing as it is.
pub async fn instances(ctl: &Ctl, service: &str, out: &mut dyn Write) -> Result<(), Error> {
    let listing = ctl.registry.service_all(service).await?;
    if ctl.format == Format::Json {
        return Ok(output::json(out, &listing)?);
    }
    if listing.instances.is_empty() {
        writeln!(out, "no instances of {service}")?;
        return Ok(());
    }
    instance_table(&listing.instances, SystemTime::now()).print(out)?;
    Ok(())
}

/// Instances as rows; heartbeat ages are taken at `now`.
pub fn instance_table(instances: &[Instance], now: SystemTime) -> Table {
    let mut table = Table::new(&[
        "ID",
        "ADDRESS",
        "PROTOCOL",
        "STATUS",
        "WEIGHT",
        "LAST HEARTBEAT",
        "TAGS",
        "METADATA",
    ]);
    for i in instances {
        let metadata: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.row(vec![
            i.id.clone(),
            i.address.clone(),
            protocol(i.protocol).to_owned(),
            i.status.to_string(),
            i.weight.to_string(),
            human::ago(&i.last_heartbeat, now),
            i.tags.join(","),
            metadata.join(","),
        ]);
    }
    table
}

fn protocol(p: Protocol) -> &'static str {
    p.as_str()
}
