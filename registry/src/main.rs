//! `mesh-registry`: flags → config → [`mesh_registry::run`].
//!
//! Run with: `cargo run -p mesh-registry -- --listen 127.0.0.1:7700`

use anyhow::Context;
use clap::Parser;
use mesh_registry::Config;
use mesh_registry::config::Command;

#[tokio::main]
async fn main() {
    mesh_runtime::init_logging();
    let config = Config::parse();
    // The subcommands: say what was written, or why not.
    let done = match &config.command {
        Some(Command::GenCa {
            out,
            trust_domain,
            force,
            bundle_out,
        }) => Some(
            mesh_registry::ca::write_new(out, trust_domain, *force).and_then(
                |said| match bundle_out {
                    Some(dir) => mesh_registry::ca::copy_bundle(out, dir)
                        .map(|copied| format!("{said}\n{copied}")),
                    None => Ok(said),
                },
            ),
        ),
        Some(Command::GenCert {
            ca,
            names,
            days,
            out,
        }) => Some(mesh_registry::ca::write_server_cert(ca, names, *days, out)),
        None => None,
    };
    match done {
        Some(Ok(message)) => return println!("{message}"),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        None => {}
    }
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        std::process::exit(2);
    }
    // Errors are printed as one line of causes, without a backtrace: they are for
    // operators (a port in use, a corrupt snapshot), not for debugging.
    if let Err(e) = serve(config).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    mesh_registry::run(listener, config, mesh_runtime::shutdown_signal()).await?;
    Ok(())
}
