//! `mesh-proxy`: flags → config → [`mesh_proxy::run`].
//!
//! Run with: `cargo run -p mesh-proxy -- --service web --app 127.0.0.1:8080`

use clap::Parser;
use mesh_proxy::{Config, Listeners};

fn main() {
    let config = Config::parse();
    let mut builder = match config.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.into());
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build();
    match runtime {
        Ok(runtime) => runtime.block_on(start(config)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn start(config: Config) {
    mesh_runtime::init_logging();
    if let Err(invalid) = config.validate() {
        eprintln!("error: {invalid}");
        std::process::exit(2);
    }
    if let Err(e) = serve(config).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let local_service = config.registration.service.is_some();
    let listeners = Listeners::bind(&config.listen, local_service).await?;
    mesh_proxy::run(listeners, config, mesh_runtime::shutdown_signal()).await?;
    Ok(())
}
