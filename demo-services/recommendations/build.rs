//! Generates the gRPC code from `proto/recommendations.proto`.
//!
//! The proto is parsed by `protox`, a pure-Rust compiler, so building needs no `protoc`.

use std::io;

const PROTO: &str = "proto/recommendations.proto";

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"]).map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Channels are built by the callers (`connect_lazy` in the marketplace), so the
        // generated `connect` helper is not needed.
        .build_transport(false)
        .compile_fds(descriptors)
}
