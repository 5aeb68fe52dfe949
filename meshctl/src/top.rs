//! `meshctl top [SERVICE]`: live golden metrics of the calls sidecars make, per
//! destination service: requests/s, success rate, p50/p99 latency, retries/s.
//!
//! Every interval, every registered sidecar's `/metrics` is scraped; each line is what
//! the `direction="outbound"` counters grew by since the scrape before, summed over
//! sidecars. Sidecars that appear between two scrapes count from the next one (their
//! totals since start are not traffic of this interval).

mod golden;

use std::collections::BTreeMap;
use std::io::Write;

use mesh_registry_api::AdminPath;
use serde::Serialize;
use tokio::time::Instant;

pub use self::golden::{Counters, Golden};
use crate::cli::TopArgs;
use crate::output::{self, Escaped, Format, Table};
use crate::sidecars::{self, each};
use crate::{Ctl, Error, human, prom};

/// One scrape of every registered sidecar.
pub struct Scrape {
    /// When the scrape began (sidecars are scraped concurrently).
    pub taken: Instant,
    /// Sidecar (`service/id`) → destination service → its counters.
    pub sidecars: BTreeMap<String, BTreeMap<String, Counters>>,
    /// Sidecars whose metrics could not be had, and why.
    pub missed: Vec<(String, String)>,
}

/// One line of `top`: every destination over one interval.
#[derive(Serialize)]
pub struct Frame {
    pub interval_seconds: f64,
    /// Sidecars counted (scraped at both ends of the interval).
    pub sidecars: usize,
    pub services: Vec<Golden>,
    /// Sidecars left out, with the reason.
    pub missed: Vec<Missed>,
}

#[derive(Serialize)]
pub struct Missed {
    pub sidecar: String,
    pub error: String,
}

/// Prints one frame per interval until interrupted (Ctrl-C ends the process: there is
/// nothing to clean up), or one with `--once`.
pub async fn run(
    ctl: &Ctl,
    args: &TopArgs,
    out: &mut Escaped<'_>,
    redraw: bool,
) -> Result<(), Error> {
    let mut before = scrape(ctl).await?;
    let mut next = before.taken + args.interval;
    loop {
        tokio::time::sleep_until(next).await;
        next += args.interval;
        let after = match scrape(ctl).await {
            Ok(after) => after,
            // Live mode outlasts a registry restart; the next frame spans the gap.
            Err(e) if !args.once => {
                output::note(&format!("error: {}", crate::explain(&e)));
                continue;
            }
            Err(e) => return Err(e),
        };
        let frame = frame(&before, &after, args.service.as_deref());
        print(ctl.format, &frame, out, redraw && !args.once, args.once)?;
        if args.once {
            return Ok(());
        }
        before = after;
    }
}

/// Scrapes every registered sidecar's `/metrics` now.
pub async fn scrape(ctl: &Ctl) -> Result<Scrape, Error> {
    let taken = Instant::now();
    let list = sidecars::list(&ctl.registry).await?;
    let results = each(list, |sidecar| {
        let admins = ctl.admins.clone();
        async move {
            let metrics = admins.get_ok(&sidecar, AdminPath::Metrics).await;
            (sidecar, metrics)
        }
    })
    .await;
    let mut scrape = Scrape {
        taken,
        sidecars: BTreeMap::new(),
        missed: Vec::new(),
    };
    for (sidecar, metrics) in results {
        match metrics {
            Ok(body) => {
                let samples = prom::parse(&String::from_utf8_lossy(&body));
                scrape
                    .sidecars
                    .insert(sidecar.to_string(), golden::counters(&samples));
            }
            Err(e) => scrape
                .missed
                .push((sidecar.to_string(), crate::explain(&e))),
        }
    }
    Ok(scrape)
}

/// The golden metrics between two scrapes, of `only` that service if given, busiest
/// first.
pub fn frame(before: &Scrape, after: &Scrape, only: Option<&str>) -> Frame {
    let mut totals: BTreeMap<&str, Counters> = BTreeMap::new();
    let mut counted = 0;
    for (sidecar, services) in &after.sidecars {
        let Some(earlier) = before.sidecars.get(sidecar) else {
            continue;
        };
        counted += 1;
        for (service, now) in services
            .iter()
            .filter(|(s, _)| only.is_none_or(|o| o == *s))
        {
            // A destination first called during the interval had counted nothing.
            let then = earlier.get(service).cloned().unwrap_or_default();
            golden::add(
                totals.entry(service).or_default(),
                &golden::increase(&then, now),
            );
        }
    }
    let interval = after.taken.duration_since(before.taken);
    let mut services: Vec<Golden> = totals
        .iter()
        .map(|(service, growth)| golden::golden(service, growth, interval))
        .collect();
    services.sort_by(|a, b| {
        b.requests
            .total_cmp(&a.requests)
            .then_with(|| a.service.cmp(&b.service))
    });
    Frame {
        interval_seconds: interval.as_secs_f64(),
        sidecars: counted,
        services,
        missed: after
            .missed
            .iter()
            .map(|(sidecar, error)| Missed {
                sidecar: sidecar.clone(),
                error: error.clone(),
            })
            .collect(),
    }
}

fn print(
    format: Format,
    frame: &Frame,
    out: &mut Escaped<'_>,
    redraw: bool,
    once: bool,
) -> Result<(), Error> {
    if format == Format::Json {
        // Live JSON is one document per line, so a reader can take them one at a time.
        if once {
            output::json(out, frame)?;
        } else {
            output::json_line(out, frame)?;
        }
        return Ok(out.flush()?);
    }
    if redraw {
        // Cursor home and clear the screen: the frame replaces the last one, as in top(1).
        out.clear_screen()?;
    } else if !once {
        writeln!(out)?;
    }
    writeln!(
        out,
        "outbound calls from {} sidecars over {:.1}s",
        frame.sidecars, frame.interval_seconds
    )?;
    let mut table = Table::new(&["SERVICE", "RPS", "SUCCESS", "P50", "P99", "RETRIES/S"]);
    for g in &frame.services {
        table.row(vec![
            g.service.clone(),
            format!("{:.1}", g.requests_per_second),
            g.success_rate.map(human::percent).unwrap_or_default(),
            g.p50_seconds.map(human::latency).unwrap_or_default(),
            g.p99_seconds.map(human::latency).unwrap_or_default(),
            format!("{:.1}", g.retries_per_second),
        ]);
    }
    if table.is_empty() {
        writeln!(out, "no outbound calls seen")?;
    } else {
        table.print(out)?;
    }
    for missed in &frame.missed {
        let (sidecar, error) = (
            output::escape(&missed.sidecar),
            output::escape(&missed.error),
        );
        writeln!(out, "not counted: {sidecar}: {error}")?;
    }
    Ok(out.flush()?)
}
