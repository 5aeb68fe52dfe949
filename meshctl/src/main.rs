//! `meshctl`: flags → [`meshctl::run`].
//!
//! Run with: `cargo run -p meshctl -- --registry http://127.0.0.1:7700 check`

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use meshctl::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: a CLI waits on the network, and a few concurrent fetches need no more.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the runtime starts");
    let stdout = std::io::stdout();
    let redraw = stdout.is_terminal();
    match runtime.block_on(meshctl::run(cli, &mut stdout.lock(), redraw)) {
        Ok(outcome) => outcome.into(),
        // The reader went away (`meshctl … | head`): nothing is left to tell anyone.
        Err(meshctl::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            meshctl::output::note(&format!("error: {}", meshctl::explain(&e)));
            ExitCode::from(1)
        }
    }
}
