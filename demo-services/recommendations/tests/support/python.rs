//! Python's grpcio as an independent gRPC peer: the interpreter, and stubs generated from
//! the service's `.proto` at test time. Used by this crate's interop test and by the
//! proxy's, which includes this file by path.

use std::path::Path;
use std::process::Output;

use tokio::process::Command;

/// The interpreter: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails the test, with the command's output, unless `what` succeeded.
pub fn check(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Python stubs for `proto_dir/recommendations.proto`, generated into a temporary
/// directory.
pub async fn stubs(proto_dir: &Path) -> tempfile::TempDir {
    let probe = Command::new(python())
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; install Python 3", python()));
    assert!(
        probe.status.success(),
        "this test needs Python's grpcio, and $PYTHON pointing at it: see the README's test \
         command (a virtualenv in .venv)\n{}",
        String::from_utf8_lossy(&probe.stderr),
    );
    let out = tempfile::tempdir().unwrap();
    let protoc = Command::new(python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("--proto_path={}", proto_dir.display()))
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .arg(proto_dir.join("recommendations.proto"))
        .output()
        .await
        .unwrap();
    check("grpc_tools.protoc", &protoc);
    out
}
