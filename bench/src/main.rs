//! Benchmark tools for the mesh; `bench/run.sh` drives them.
//!
//! Run with: `cargo run --release -p mesh-bench -- backend --listen 127.0.0.1:9000`

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cmd = mesh_bench::Command::parse();
    // One thread: the load generator is pinned to one CPU, the backend to another.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(mesh_bench::run(cmd))
}
