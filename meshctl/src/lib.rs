//! `meshctl`, the mesh's operators' CLI, as a library the binary and the tests drive.
//!
//! Everything goes through the registry: it lists services and instances, its metadata
//! names every sidecar's admin address, and it relays sidecars' admin pages
//! ([`reach`]), so one reachable address is enough to inspect the mesh.
//!
//! - [`cli`]: the flags; [`run`] turns them into a [`Ctl`] and runs one command.
//! - [`check`]: `linkerd check`-style health checks.
//! - [`listing`]: `services`, `instances`; [`register`]: `register`, `deregister`.
//! - [`endpoints`]: a service's endpoints as sidecars see them.
//! - [`top`]: live golden metrics, computed from sidecars' `/metrics` ([`prom`]).
//! - [`policy`]: traffic policy documents, applied from files and read back; [`routes`]:
//!   a destination's routes as its callers apply them, and the split their calls took.
//! - [`tap`]: the calls sidecars see, live, from their taps.
//! - [`inject`]: the sidecar added to Kubernetes manifests, offline.

pub mod check;
pub mod cli;
pub mod endpoints;
mod error;
pub mod human;
pub mod inject;
pub mod listing;
pub mod output;
pub mod policy;
pub mod prom;
pub mod reach;
pub mod register;
pub mod routes;
pub mod sidecars;
pub mod tap;
pub mod top;

use std::io::Write;
use std::process::ExitCode;

use mesh_registry_api::Client;

use crate::cli::{Cli, Command, Global, PolicyCommand};
pub use crate::error::Error;
use crate::output::Format;
use crate::reach::Admins;

/// What a command needs: the registry, the output format, and the way to sidecars.
pub struct Ctl {
    pub registry: Client,
    pub format: Format,
    pub admins: std::sync::Arc<Admins>,
    /// `--token`, for the requests meshctl sends without [`Ctl::registry`] (taps).
    pub token: Option<String>,
}

/// How a command ended, when it ran to the end: a check may fail without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// At least one check failed: exit status 1.
    Failure,
}

// === impl Ctl ===

impl Ctl {
    /// The context the global flags describe; a registry URL that cannot be one is
    /// refused here, naming the flag.
    pub fn new(global: &Global) -> Result<Self, Error> {
        let mut registry = Client::new(&global.registry).map_err(Error::RegistryUrl)?;
        if let Some(token) = &global.token {
            registry = registry.with_token(token.clone());
        }
        Ok(Ctl {
            admins: std::sync::Arc::new(Admins::new(registry.clone(), global.direct)),
            registry,
            format: global.output,
            token: global.token.clone(),
        })
    }
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        match outcome {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Failure => ExitCode::from(1),
        }
    }
}

/// Runs the command `cli` names, printing to `out`. `redraw` says that `out` is a
/// terminal, where `top` redraws its table in place instead of printing one per sample.
///
/// Commands print through [`output::Escaped`]: no control character they were sent
/// reaches `out`, whichever command prints it.
pub async fn run(cli: Cli, out: &mut dyn Write, redraw: bool) -> Result<Outcome, Error> {
    let ctl = Ctl::new(&cli.global)?;
    let out = &mut output::Escaped::new(out);
    let done = Ok(Outcome::Success);
    match cli.command {
        Command::Check => check::run(&ctl, out).await,
        Command::Services => listing::services(&ctl, out).await.and(done),
        Command::Instances { service } => listing::instances(&ctl, &service, out).await.and(done),
        Command::Endpoints { service, via } => endpoints::run(&ctl, &service, via.as_deref(), out)
            .await
            .and(done),
        Command::Register(args) => register::register(&ctl, args, out).await.and(done),
        Command::Deregister { service, id } => register::deregister(&ctl, &service, &id, out)
            .await
            .and(done),
        Command::Top(args) => top::run(&ctl, &args, out, redraw).await.and(done),
        Command::Routes { service } => routes::run(&ctl, &service, out).await.and(done),
        Command::Tap(args) => tap::run(&ctl, &args, out).await.and(done),
        Command::Inject(args) => {
            let options = args.sidecar.options(args.all);
            let summary = inject::run(&args.inputs, &options, true, &mut std::io::stdin(), out)?;
            inject::report(&summary, true);
            done
        }
        Command::InjectWebhook(args) => inject::webhook::run(args).await.and(done),
        Command::Uninject { inputs } => {
            let options = inject::Options::default();
            let summary = inject::run(&inputs, &options, false, &mut std::io::stdin(), out)?;
            inject::report(&summary, false);
            done
        }
        Command::Policy(command) => match command {
            PolicyCommand::Apply { file, diff } => policy::apply(&ctl, &file, diff, out).await,
            PolicyCommand::Get { service } => policy::get(&ctl, &service, out).await,
            PolicyCommand::Delete { service, kind } => {
                policy::delete(&ctl, &service, kind, out).await
            }
        }
        .and(done),
    }
}

/// An error and its causes on one line, each cause once: "registry at … unreachable:
/// client error (Connect): tcp connect error: Connection refused (os error 111)".
pub fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}
