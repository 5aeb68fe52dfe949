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

use std::{path::PathBuf, time::Duration};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
    task::JoinSet,
};

use crate::{
    Error, UpConfig, banner,
    binaries::{self, Binaries},
    child::{self, Exit, Stopped, Supervised},
    http,
    logs::LogDir,
    plan::{Plan, ProcessSpec, Role, Secrets},
    ports,
    ready::{self, Wait},
    watchdog::Watchdog,
};

/// Runs the demo until Ctrl-C or SIGTERM, then stops every process it started.
pub async fn run(config: UpConfig) -> Result<(), Error> {
    // Before anything starts, so a Ctrl-C at any point reaches the orderly stop.
    let mut signals = Signals::new()?;
    config.check().map_err(Error::Config)?;
    let uses = config.ports().uses()?;
    ports::check_free(&uses)?;
    // Before the build: it starts this very executable, which the build may replace.
    let watchdog = Watchdog::spawn()?;
    let prepared = tokio::select! {
        prepared = prepare(&config, &uses) => prepared,
        name = signals.recv() => {
            tracing::info!("{name} during the build: stopping");
            Err(Error::Interrupted)
        }
    };
    let (binaries, secrets, logs) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            watchdog.dismiss().await;
            return Err(error);
        }
    };
    // `logs` lives to the end of this function: a temporary log directory goes only once
    // every sidecar writing to it has stopped.
    let plan = Plan::new(&config, &binaries, Some(&secrets), &logs);

    let mut mesh = Mesh::new(watchdog);
    let started = tokio::select! {
        started = mesh.start(&plan, &secrets, config.ready_timeout) => started,
        name = signals.recv() => {
            tracing::info!("{name} during start-up: stopping");
            Err(Error::Interrupted)
        }
    };
    match &started {
        Ok(()) => {
            banner::print(&plan, &mesh.children, mesh.watchdog.pid());
            mesh.supervise(&mut signals).await;
        }
        Err(_) => tracing::error!("start-up failed: stopping what was started"),
    }
    mesh.stop(config.stop_timeout, &mut signals).await;
    started
}

/// The programs to run (built first under `cargo run`), the CA of an mTLS run and the
/// directory of the access logs.
async fn prepare(
    config: &UpConfig,
    uses: &[ports::PortUse],
) -> Result<(Binaries, Secrets, LogDir), Error> {
    let binaries = binaries(config).await?;
    // The build may have taken minutes: look again.
    ports::check_free(uses)?;
    let secrets = crate::plan::secrets(config, &binaries)?;
    let logs = LogDir::create(config)?;
    Ok((binaries, secrets, logs))
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
    async fn start(
        &mut self,
        plan: &Plan,
        secrets: &Secrets,
        timeout: Duration,
    ) -> Result<(), Error> {
        let wait = Wait::new(timeout);
        self.spawn(&plan.registry)?;
        self.wait_ready(&plan.registry, wait).await?;
        // A serving registry has loaded its CA: the key file is no longer needed.
        secrets
            .remove_key()
            .map_err(|e| Error::Ca(format!("cannot remove the CA key once loaded: {e}")))?;
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
        wait.until(&what, &mut self.exits, || {
            ready::registered(registry.clone(), instances)
        })
        .await?;

        let what = format!("the page {} (through the mesh)", plan.page_url);
        let http = &self.http;
        wait.until(&what, &mut self.exits, || {
            ready::page_served(http.clone(), plan.page_url.clone())
        })
        .await
    }

    /// Waits until `spec`'s readiness URL answers; nothing to wait for without one.
    async fn wait_ready(&mut self, spec: &ProcessSpec, wait: Wait) -> Result<(), Error> {
        let Some(url) = &spec.ready_url else {
            return Ok(());
        };
        let what = format!("{} ({url})", spec.name);
        let http = &self.http;
        wait.until(&what, &mut self.exits, || {
            ready::answers(http.clone(), url.clone())
        })
        .await
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
                    banner::report(&exit);
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
