//! Interop with Python's grpcio, a gRPC implementation independent of tonic: stubs are
//! generated from our `.proto` by `grpc_tools.protoc` at test time, and a Python client
//! (`tests/python/interop_client.py`) calls the in-process server.
//!
//! Needs Python with grpcio and grpcio-tools: the README's test command makes a virtualenv
//! in `.venv` and points the `PYTHON` environment variable at its interpreter (`python3`
//! without it).

#[path = "support/python.rs"]
mod python;
mod support;

use std::path::Path;

use python::{check, python};
use recommendations::Config;
use serde_json::{Value, json};
use support::Server;
use tokio::process::Command;

#[tokio::test]
async fn python_grpcio_client_gets_books_and_not_found() {
    let stubs = python::stubs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")).await;

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
