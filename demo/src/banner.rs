//! What the launcher tells the person at the terminal once the mesh is up, and when one
//! of its processes exits on its own.

use crate::{
    child::{Exit, Supervised},
    logs,
    plan::{Plan, Role},
};

/// The line printed last once everything is up; tests wait for it.
pub const READY_LINE: &str = "mesh-demo: ready";

/// What to open, where to look and what to try, then [`READY_LINE`]. `watchdog` is the
/// watchdog's pid, listed with the children's so every process can be found.
pub fn print(plan: &Plan, children: &[Supervised], watchdog: u32) {
    let marketplace = plan.marketplace_pair();
    let instances = plan.pairs.len() - 1;
    let mut lines = vec![
        String::new(),
        format!(
            "mesh-demo: the registry, {instances} recommendations instances and the marketplace \
             are up, each app behind its own sidecar"
        ),
        String::new(),
        format!("  page       {}", plan.page_url),
        format!("  dashboard  {}", plan.dashboard_url),
        format!("  registry   {}", plan.services_url),
    ];
    // The marketplace's sidecar first: its outbound side counts calls and retries.
    let mut metrics = vec![(&marketplace.metrics_url, &marketplace.sidecar.name)];
    for pair in &plan.pairs[..instances] {
        metrics.push((&pair.metrics_url, &pair.sidecar.name));
    }
    for (i, (url, name)) in metrics.into_iter().enumerate() {
        let label = if i == 0 { "metrics" } else { "" };
        lines.push(format!("  {label:<9}  {:<32}  {name}", url.to_string()));
    }
    lines.extend(calls(plan));
    let pids: Vec<String> = children
        .iter()
        .map(|c| format!("{}={}", c.name, c.pid))
        .chain([format!("watchdog={watchdog}")])
        .collect();
    lines.push(format!("  pids       {}", pids.join(" ")));
    let victim = children
        .iter()
        .find(|c| c.role == Role::Recommendations && c.name.ends_with("-2"));
    match victim {
        Some(victim) => lines.push(format!(
            "  try        kill -9 {}    # crashes {}: the page keeps working; watch \
             mesh_endpoints and mesh_retries_total on {}",
            victim.pid, victim.name, marketplace.metrics_url
        )),
        None => lines.push(
            "  try        --instances 3, to kill one instance and watch the others take over"
                .to_owned(),
        ),
    }
    lines.push(format!(
        "  load       {} traffic --url {}    # in another terminal",
        own_command(),
        plan.page_url
    ));
    lines.push(format!(
        "  meshctl    {} --registry {} check    # also: services, endpoints recommendations, top",
        sibling("meshctl"),
        plan.registry_url
    ));
    if let Some(file) = &plan.operator_token_file {
        lines.push(format!(
            "  operator   export MESH_REGISTRY_TOKEN=$(cat {})    # for meshctl's writes (policy apply, docs/traffic.md) and taps",
            file.display()
        ));
    }
    lines.push("  stop       Ctrl-C".to_owned());
    lines.push(String::new());
    lines.push(READY_LINE.to_owned());
    println!("{}", lines.join("\n"));
}

/// Where to see single calls: the access logs, the live tap, and the traces' collector.
fn calls(plan: &Plan) -> Vec<String> {
    let marketplace = plan.marketplace_pair();
    let kept = if plan.logs_kept {
        "kept after the run"
    } else {
        "removed when the demo stops; --log-dir keeps them"
    };
    let mut lines = vec![
        format!(
            "  access     {}    # every sidecar's access log, one JSON line per call ({kept})",
            logs::access_log(&plan.log_dir, "sidecar/*").display()
        ),
        format!(
            "  follow     tail -f {}    # the marketplace's calls as they end",
            marketplace.access_log.display()
        ),
        format!(
            "  tap        {} --registry {} tap recommendations    # live calls, with the operator \
             token below; or curl -sN {}",
            sibling("meshctl"),
            plan.registry_url,
            marketplace.tap_url
        ),
    ];
    if let Some((collector, ratio)) = &plan.tracing {
        lines.push(format!(
            "  traces     {collector}    # every sidecar sends its spans there; share of page \
             views traced: {ratio}"
        ));
    }
    lines
}

/// Says what an exit nobody asked for means for the demo; the launcher keeps running.
pub fn report(exit: &Exit) {
    let Exit {
        name, pid, status, ..
    } = exit;
    let meaning = match exit.role {
        Role::Recommendations => {
            "expected if you killed it: its sidecar finds the app gone and reports it \
             critical, so the registry stops listing it and callers stop choosing it"
        }
        Role::Sidecar if name.ends_with("/marketplace") => {
            "the marketplace can no longer reach recommendations; Ctrl-C and start again"
        }
        Role::Sidecar => {
            "its instance stops answering and leaves the registry when its lease runs out"
        }
        Role::Marketplace => "the page is down; Ctrl-C and start again",
        Role::Registry => {
            "sidecars keep routing to the instances they know, but no change reaches them"
        }
    };
    tracing::warn!("{name} (pid {pid}) exited ({status}): {meaning}");
}

/// How to run this program again: relative to the working directory when under it.
fn own_command() -> String {
    match own_path() {
        Some(exe) => shown(&exe),
        None => "mesh-demo".to_owned(),
    }
}

/// How to run `program`, built next to this one.
fn sibling(program: &str) -> String {
    match own_path() {
        Some(exe) => shown(&exe.with_file_name(program)),
        None => program.to_owned(),
    }
}

/// Where this executable is. Linux names a replaced one `<path> (deleted)` (a build since
/// the launcher started); the path is still where the program is run from.
fn own_path() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    match exe
        .to_str()
        .and_then(|path| path.strip_suffix(" (deleted)"))
    {
        Some(path) => Some(path.into()),
        None => Some(exe),
    }
}

/// `path`, relative to the working directory when under it.
fn shown(path: &std::path::Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.to_owned()));
    match relative {
        Some(path) => format!("./{}", path.display()),
        None => path.display().to_string(),
    }
}
