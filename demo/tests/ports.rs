//! A port already in use stops the launcher before it starts anything, with a message
//! naming the port, what it was for, and the flag that moves it.

mod support;

use std::{net::TcpListener, time::Duration};

use support::{Launcher, Ports};

#[test]
fn a_taken_port_is_named_with_its_flag() {
    let ports = Ports::free();
    // The checked ports come before the binaries: an empty directory proves it.
    let empty = tempfile::tempdir().unwrap();
    for (port, what, flag) in [
        (
            ports.marketplace(),
            "the marketplace app",
            "--marketplace-port",
        ),
        (ports.registry(), "the registry", "--registry-port"),
        (
            ports.admin(2),
            "sidecar/recommendations-2's admin listener",
            "--base-port",
        ),
    ] {
        let _holder = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut args = vec!["--bin-dir".to_owned(), empty.path().display().to_string()];
        args.extend(ports.flags());
        let mut launcher = Launcher::start(&args);
        let status = launcher.wait_exit(Duration::from_secs(30));
        let output = launcher.finish();
        assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{output}");
        let expected = format!(
            "port {port} ({what}) is already in use on 127.0.0.1: stop what holds it or \
             choose another port with {flag}"
        );
        assert!(output.contains(&expected), "{output}");
        assert!(!output.contains("started"), "{output}");
    }
}
