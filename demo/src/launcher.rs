//! Brings the mesh up, keeps an eye on it, and takes it down in order.
//!
//! Start: the registry first (sidecars register with it), then each sidecar before its app
//! (so the app's first calls find a listener), recommendations before the marketplace. The
//! mesh counts as ready when every sidecar's `/ready` and the marketplace's `/healthz`
//! answer 200, the registry lists every instance as passing, and the page comes back
//! through the mesh. Everything shares one `--ready-timeout`.
//!
//! Stop (Ctrl-C or SIGTERM): apps first, so no new calls start; then sidecars, with
//! SIGTERM so they deregister while the registry is still up; then the registry. Each gets
//! `--stop-timeout` before SIGKILL.

use std::{future::Future, path::PathBuf, time::Duration};

use mesh_registry_api::ServiceList;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
    task::JoinSet,
    time::Instant,
};

use crate::{
    Error, UpConfig,
    binaries::{self, Binaries},
    child::{self, Exit, Stopped, Supervised},
    http,
    plan::{Plan, ProcessSpec, Role},
    ports,
    watchdog::Watchdog,
};

/// Between two readiness checks.
const POLL: Duration = Duration::from_millis(100);

/// One readiness request; a process that takes longer is not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The line printed once everything is up; tests wait for it.
pub const READY_LINE: &str = "mesh-demo: ready";

/// Runs the demo until Ctrl-C or SIGTERM, then stops every process it started.
pub async fn run(config: UpConfig) -> Result<(), Error> {
    // Before anything starts, so a Ctrl-C at any point reaches the orderly stop.
    let mut signals = Signals::new()?;
    let uses = config.ports().uses()?;
    ports::check_free(&uses)?;
    let binaries = tokio::select! {
        found = binaries(&config) => found?,
        name = signals.recv() => {
            tracing::info!("{name} during the build: stopping");
            return Err(Error::Interrupted);
        }
    };
    // The build may have taken minutes: look again.
    ports::check_free(&uses)?;
    let plan = Plan::new(&config, &binaries);

    let mut mesh = Mesh::new(Watchdog::spawn()?);
    let started = tokio::select! {
        started = mesh.start(&plan, config.ready_timeout) => started,
        name = signals.recv() => {
            tracing::info!("{name} during start-up: stopping");
            Err(Error::Interrupted)
        }
    };
    match &started {
        Ok(()) => {
            print_banner(&plan, &mesh);
            mesh.supervise(&mut signals).await;
        }
        Err(error) => tracing::error!("{error}; stopping what was started"),
    }
    mesh.stop(config.stop_timeout, &mut signals).await;
    started
}

/// `--bin-dir`, or the launcher's own directory after building into it under cargo.
async fn binaries(config: &UpConfig) -> Result<Binaries, Error> {
    if let Some(dir) = &config.bin_dir {
        return Binaries::locate(dir);
    }
    let dir = binaries::own_dir()?;
    // `cargo run` sets CARGO and has exec'd into us, so it holds no lock: building is safe.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let manifest =
            std::env::var_os("CARGO_MANIFEST_DIR").map(|dir| PathBuf::from(dir).join("Cargo.toml"));
        let command = binaries::build_command(cargo, &dir, manifest.as_deref());
        tracing::info!(
            "building {} with cargo (skip with --bin-dir)",
            binaries::PACKAGES.join(", ")
        );
        binaries::build(&command).await?;
    }
    Binaries::locate(&dir)
}

/// Every started process, and the channels that report on them.
struct Mesh {
    watchdog: Watchdog,
    children: Vec<Supervised>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    /// The tasks copying children's output; awaited at the end so no last line is lost.
    forwarders: JoinSet<()>,
    http: http::Client,
}

// === impl Mesh ===

impl Mesh {
    fn new(watchdog: Watchdog) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Self {
            watchdog,
            children: Vec::new(),
            exits_tx,
            exits,
            forwarders: JoinSet::new(),
            http: http::Client::default(),
        }
    }

    fn spawn(&mut self, spec: &ProcessSpec) -> Result<(), Error> {
        let group = self.watchdog.group();
        let child = child::spawn(spec, group, self.exits_tx.clone(), &mut self.forwarders)?;
        tracing::info!("started {} (pid {})", child.name, child.pid);
        self.children.push(child);
        Ok(())
    }

    /// Starts every process in order and waits until the mesh serves the page.
    async fn start(&mut self, plan: &Plan, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let wait = Wait { deadline, timeout };

        self.spawn(&plan.registry)?;
        self.wait_ready(&plan.registry, wait).await?;
        for pair in &plan.pairs {
            self.spawn(&pair.sidecar)?;
            self.spawn(&pair.app)?;
        }
        for pair in &plan.pairs {
            self.wait_ready(&pair.sidecar, wait).await?;
            self.wait_ready(&pair.app, wait).await?;
        }

        let registry = mesh_registry_api::Client::new(&plan.registry_url)
            .map_err(|error| Error::Config(error.to_string()))?;
        let instances = usize::from(plan.ports.instances);
        let what = format!(
            "the registry listing {instances} passing recommendations and 1 passing marketplace"
        );
        self.wait_until(&what, wait, || {
            let registry = registry.clone();
            async move {
                let list = tokio::time::timeout(PROBE_TIMEOUT, registry.services())
                    .await
                    .map_err(|_| "no answer".to_owned())?
                    .map_err(|error| error.to_string())?;
                let recommendations = passing(&list, "recommendations");
                let marketplace = passing(&list, "marketplace");
                if recommendations == instances && marketplace == 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{recommendations} recommendations and {marketplace} marketplace passing"
                    ))
                }
            }
        })
        .await?;

        let page = plan.page_url.clone();
        let what = format!("the page {page} (through the mesh)");
        let http = self.http.clone();
        self.wait_until(&what, wait, || {
            let (http, page) = (http.clone(), page.clone());
            async move {
                let response = http
                    .get(&page, PROBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status.is_success() && response.text().contains("<li>") {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", response.status))
                }
            }
        })
        .await
    }

    /// Waits until `spec`'s readiness URL answers 200; nothing to wait for without one.
    async fn wait_ready(&mut self, spec: &ProcessSpec, wait: Wait) -> Result<(), Error> {
        let Some(url) = spec.ready_url.clone() else {
            return Ok(());
        };
        let what = format!("{} ({url})", spec.name);
        let http = self.http.clone();
        self.wait_until(&what, wait, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url, PROBE_TIMEOUT).await {
                    Ok(response) if response.status.is_success() => Ok(()),
                    Ok(response) => Err(format!("HTTP {}", response.status)),
                    Err(error) => Err(error.to_string()),
                }
            }
        })
        .await
    }

    /// Polls `check` until it holds, giving up at the deadline or as soon as any child
    /// exits (a process that died will not become ready).
    async fn wait_until<F, Fut>(
        &mut self,
        what: &str,
        wait: Wait,
        mut check: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        loop {
            let last = match check().await {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            if Instant::now() >= wait.deadline {
                return Err(Error::NotReady {
                    what: what.to_owned(),
                    timeout: wait.timeout,
                    last,
                });
            }
            tokio::select! {
                Some(exit) = self.exits.recv() => {
                    return Err(Error::DiedDuringStartup {
                        name: exit.name,
                        pid: exit.pid,
                        status: exit.status,
                    });
                }
                () = tokio::time::sleep_until(wait.deadline.min(Instant::now() + POLL)) => {}
            }
        }
    }

    /// Reports children that exit until a signal asks to stop.
    async fn supervise(&mut self, signals: &mut Signals) {
        loop {
            tokio::select! {
                name = signals.recv() => {
                    tracing::info!("{name}: stopping the mesh");
                    return;
                }
                Some(exit) = self.exits.recv() => {
                    report(&exit);
                    if self.children.iter().all(|child| child.status().is_some()) {
                        tracing::error!("every process has exited: stopping");
                        return;
                    }
                }
            }
        }
    }

    /// Stops every child in order; a second Ctrl-C or SIGTERM kills them all at once.
    async fn stop(mut self, grace: Duration, signals: &mut Signals) {
        tokio::select! {
            () = stop_in_order(&self.children, grace) => {}
            name = signals.recv() => {
                tracing::warn!("{name} again: killing every process now");
                for child in &self.children {
                    child.signal(rustix::process::Signal::KILL);
                }
                for child in &self.children {
                    child.wait(grace).await;
                }
            }
        }
        self.watchdog.dismiss().await;
        // Children are gone, so their pipes are closed and the forwarders end promptly.
        let drained = async { while self.forwarders.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
        tracing::info!("every process has stopped");
    }
}

/// When a readiness wait gives up.
#[derive(Clone, Copy, Debug)]
struct Wait {
    deadline: Instant,
    /// The whole `--ready-timeout`, for the message.
    timeout: Duration,
}

/// Apps, then sidecars, then the registry; each stage's processes stop side by side.
async fn stop_in_order(children: &[Supervised], grace: Duration) {
    let stages: [(&str, &[Role]); 3] = [
        ("apps", &[Role::Recommendations, Role::Marketplace]),
        ("sidecars", &[Role::Sidecar]),
        ("the registry", &[Role::Registry]),
    ];
    for (stage, roles) in stages {
        let running: Vec<&Supervised> = children
            .iter()
            .filter(|c| roles.contains(&c.role) && c.status().is_none())
            .collect();
        if running.is_empty() {
            continue;
        }
        let names: Vec<&str> = running.iter().map(|c| c.name.as_str()).collect();
        tracing::info!("stopping {stage}: {}", names.join(", "));
        let mut stops = JoinSet::new();
        for child in running {
            let child = child.clone();
            stops.spawn(async move { (child.stop(grace).await, child) });
        }
        while let Some(Ok((stopped, child))) = stops.join_next().await {
            let (name, pid) = (&child.name, child.pid);
            match stopped {
                Stopped::Before(_) | Stopped::Exited(_) => {}
                Stopped::Killed(_) => tracing::warn!(
                    "{name} (pid {pid}) ignored SIGTERM for {}: killed",
                    humantime::format_duration(grace)
                ),
                Stopped::Stuck => tracing::error!("{name} (pid {pid}) survived SIGKILL"),
            }
        }
    }
}

/// Says what an unexpected exit means for the demo; nothing stops because of it.
fn report(exit: &Exit) {
    let Exit {
        name, pid, status, ..
    } = exit;
    let meaning = match exit.role {
        Role::Recommendations => {
            "expected if you killed it: its sidecar sees the app fail its health check and \
             the registry drops it within seconds; meanwhile the marketplace's sidecar \
             retries calls that reach it on another instance"
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

/// How many instances of `service` the registry lists as passing.
fn passing(list: &ServiceList, service: &str) -> usize {
    list.services
        .iter()
        .find(|summary| summary.name == service)
        .map_or(0, |summary| summary.passing)
}

/// What to open, where to look, and what to try; ends with [`READY_LINE`].
fn print_banner(plan: &Plan, mesh: &Mesh) {
    let marketplace = plan.marketplace_pair();
    let mut lines = vec![
        String::new(),
        format!("  page       {}", plan.page_url),
        format!("  registry   {}", plan.services_url),
    ];
    // The marketplace's sidecar first: its outbound side counts calls and retries.
    let mut metrics = vec![(
        marketplace.metrics_url.to_string(),
        &marketplace.sidecar.name,
    )];
    for pair in &plan.pairs[..plan.pairs.len() - 1] {
        metrics.push((pair.metrics_url.to_string(), &pair.sidecar.name));
    }
    for (i, (url, name)) in metrics.iter().enumerate() {
        let label = if i == 0 { "metrics" } else { "" };
        lines.push(format!("  {label:<9}  {url:<32}  {name}"));
    }
    let pids: Vec<String> = mesh
        .children
        .iter()
        .map(|c| format!("{}={}", c.name, c.pid))
        .chain([format!("watchdog={}", mesh.watchdog.pid())])
        .collect();
    lines.push(format!("  pids       {}", pids.join(" ")));
    let victim = mesh
        .children
        .iter()
        .find(|c| c.role == Role::Recommendations && c.name.ends_with("-2"));
    match victim {
        Some(victim) => lines.push(format!(
            "  try        kill {}    # stops {}: the page keeps working, and \
             mesh_retries_total moves on {}",
            victim.pid, victim.name, marketplace.metrics_url
        )),
        None => lines.push(
            "  try        --instances 3 to kill one instance and watch the others take over"
                .to_owned(),
        ),
    }
    lines.push(format!(
        "  load       {} traffic --url {}    # in another terminal",
        own_command(),
        plan.page_url
    ));
    lines.push("  stop       Ctrl-C".to_owned());
    lines.push(String::new());
    lines.push(READY_LINE.to_owned());
    println!("{}", lines.join("\n"));
}

/// How to run this program again: relative to the working directory when under it.
fn own_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "mesh-demo".to_owned();
    };
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(|p| p.to_owned()));
    match relative {
        Some(path) => format!("./{}", path.display()),
        None => exe.display().to_string(),
    }
}

/// SIGINT and SIGTERM, installed once so neither kills the launcher before it has stopped
/// its children.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

// === impl Signals ===

impl Signals {
    fn new() -> Result<Self, Error> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(|e| Error::Signal("SIGINT", e))?,
            terminate: signal(SignalKind::terminate()).map_err(|e| Error::Signal("SIGTERM", e))?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT (Ctrl-C)",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
