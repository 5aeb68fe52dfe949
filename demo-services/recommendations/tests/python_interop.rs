//! Interop with Python's grpcio, a gRPC implementation independent of tonic: stubs are
//! generated from our `.proto` by `grpc_tools.protoc` at test time, and a Python client
//! (`tests/python/interop_client.py`) calls the in-process server.
//!
//! Needs `python3` with grpcio: `pip install grpcio grpcio-tools`. The interpreter can be
//! chosen with the `PYTHON` environment variable.

mod support;

use std::{path::Path, process::Output};

use recommendations::Config;
use serde_json::{Value, json};
use support::Server;
use tokio::process::Command;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn check(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Generates the Python stubs for `proto/recommendations.proto` into `out`.
async fn generate_stubs(out: &Path) {
    let probe = Command::new(python())
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; install Python 3", python()));
    assert!(
        probe.status.success(),
        "this test needs Python's grpcio: run `pip install grpcio grpcio-tools`\n{}",
        String::from_utf8_lossy(&probe.stderr),
    );

    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let protoc = Command::new(python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("--proto_path={}", proto_dir.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(proto_dir.join("recommendations.proto"))
        .output()
        .await
        .unwrap();
    check("grpc_tools.protoc", &protoc);
}

#[tokio::test]
async fn python_grpcio_client_gets_books_and_not_found() {
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(stubs.path()).await;

    let config = Config {
        instance_name: "reco-py".parse().unwrap(),
        ..Config::default()
    };
    let server = Server::start(config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop_client.py");
    let client = Command::new(python())
        .arg(script)
        .arg(server.address.to_string())
        .env("PYTHONPATH", stubs.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    check("the Python client", &client);

    let mut result: Value = serde_json::from_slice(&client.stdout).unwrap();
    let books = result["success"]["books"].as_array_mut().unwrap();
    books.sort_by_key(|book| book[0].as_i64());
    assert_eq!(
        result["success"],
        json!({
            "books": [
                [4, "The Hitchhiker's Guide to the Galaxy"],
                [5, "Ender's Game"],
                [6, "The Dune Chronicles"],
            ],
            "served_by": "reco-py",
        })
    );
    assert_eq!(
        result["not_found"],
        json!({
            "code": "NOT_FOUND",
            "details": "Category not found",
            "served_by": "reco-py",
        })
    );
}
