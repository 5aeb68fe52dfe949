//! The whole demo over real processes: the launcher brings the mesh up on free loopback
//! ports, the page survives a recommendations instance killed with SIGKILL, and no process
//! outlives the launcher, whether it is stopped with Ctrl-C or killed.
//!
//! Needs the other programs built next to `mesh-demo` (see `support`).

mod support;

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use mesh_demo::http::{Client, GetError, Response};
use mesh_test_support::blocking;
use rustix::process::{Signal, kill_process};
use support::{Launcher, Ports, bin_dir, start_mesh, wait_gone};

/// Blocking GETs for a synchronous test.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Http {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The client's pool lives on the runtime, so build it there.
        let client = runtime.block_on(async { Client::default() });
        Self { runtime, client }
    }

    fn get(&self, url: &str) -> Result<Response, GetError> {
        let uri = url.parse().unwrap();
        self.runtime
            .block_on(self.client.get(&uri, Duration::from_secs(5)))
    }

    /// Passing instances per service, as the registry lists them.
    fn passing(&self, ports: &Ports) -> BTreeMap<String, usize> {
        let registry =
            mesh_registry_api::Client::new(&format!("http://127.0.0.1:{}", ports.registry()))
                .unwrap();
        let list = self.runtime.block_on(registry.services()).unwrap();
        list.services
            .into_iter()
            .map(|s| (s.name, s.passing))
            .collect()
    }
}

/// The tutorial's page: its title and three books.
fn is_full_page(response: &Response) -> bool {
    let page = response.text();
    response.status == 200
        && page.contains("<title>Online Books For You</title>")
        && page.matches("<li>").count() == 3
}

#[test]
fn the_page_survives_a_killed_instance_and_ctrl_c_stops_everything() {
    let ports = Ports::free();
    let (mut launcher, pids) = start_mesh(&ports);
    let http = Http::new();
    let page = format!("http://127.0.0.1:{}/", ports.marketplace());

    let first = http.get(&page).unwrap();
    assert!(is_full_page(&first), "{}", first.text());
    // The registry has loaded the CA: its key file is gone already.
    assert_eq!(launcher.key_files(), Vec::<std::path::PathBuf>::new());
    // Without --log-dir, the access logs are in a temporary directory of the run.
    let access = launcher
        .wait_for_line(Duration::ZERO, |l| l.starts_with("out:   access "))
        .expect("the banner names the access logs");
    let tmp = launcher.tmp.path().display().to_string();
    assert!(access.contains(&tmp), "{access}");
    let passing = http.passing(&ports);
    assert_eq!(passing.get("recommendations"), Some(&3), "{passing:?}");
    assert_eq!(passing.get("marketplace"), Some(&1), "{passing:?}");
    let metrics = http
        .get(&format!("http://127.0.0.1:{}/metrics", ports.admin(0)))
        .unwrap();
    assert!(metrics.text().contains("mesh_requests_total"));

    // Kill one app outright: its sidecar stays, finds it gone and takes it out of the
    // registry, and the marketplace's sidecar stops sending it calls.
    let victim = pids["recommendations-2"];
    kill_process(support::pid(victim), Signal::KILL).unwrap();
    let reported = launcher.wait_for_line(Duration::from_secs(10), |line| {
        line.contains(&format!(
            "recommendations-2 (pid {victim}) exited (killed by SIGKILL)"
        ))
    });
    assert!(reported.is_some(), "{}", launcher.transcript());

    // Some calls may fail while the instance is being dropped; soon every one succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streak = 0;
    while streak < 20 {
        assert!(
            Instant::now() < deadline,
            "the page did not recover: last answer {:?}\n{}",
            http.get(&page).map(|r| r.text()),
            launcher.transcript()
        );
        match http.get(&page) {
            Ok(response) if is_full_page(&response) => streak += 1,
            _ => streak = 0,
        }
    }
    let two_passing = blocking::within(Duration::from_secs(30), || {
        (http.passing(&ports).get("recommendations") == Some(&2)).then_some(())
    });
    assert!(two_passing.is_some(), "{:?}", http.passing(&ports));

    // The traffic generator sees only successes now, and stops by itself.
    let traffic = Command::new(support::LAUNCHER)
        .args([
            "traffic",
            "--url",
            &page,
            "--rate",
            "10",
            "--duration",
            "2s",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&traffic.stdout);
    let errors = String::from_utf8_lossy(&traffic.stderr);
    assert!(
        traffic.status.success(),
        "{}\n{report}\n{errors}",
        traffic.status
    );
    let total = report.lines().find(|l| l.starts_with("total: ")).unwrap();
    assert!(total.contains("ok 100.0%"), "{report}");
    assert!(!total.contains("recommendations-2"), "{report}");

    let transcript = launcher.interrupt();
    assert!(
        transcript.contains("every process has stopped"),
        "{transcript}"
    );
    // Sidecars were stopped while the registry was still up, so they deregistered.
    assert!(
        transcript.contains("deregistered service=marketplace"),
        "{transcript}"
    );
    let all: Vec<u32> = pids.values().copied().collect();
    let left = wait_gone(&all, Duration::from_secs(5));
    assert!(left.is_empty(), "still running: {left:?}\n{transcript}");
    // Nothing of the run is left in temporary files: neither its CA nor its access logs.
    assert_eq!(launcher.temporary_files(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn children_do_not_outlive_a_killed_launcher() {
    let ports = Ports::free();
    let (mut launcher, pids) = start_mesh(&ports);
    launcher.signal(Signal::KILL);
    assert!(launcher.wait_exit(Duration::from_secs(10)).is_some());
    // Killed, the launcher removed nothing; but the CA key went once the registry served.
    assert_eq!(launcher.key_files(), Vec::<std::path::PathBuf>::new());
    let all: Vec<u32> = pids.values().copied().collect();
    // The watchdog's grace period is 3 s before SIGKILL.
    let left = wait_gone(&all, Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "still running: {left:?} of {pids:?}\n{}",
        launcher.transcript()
    );
}

#[test]
fn a_process_dying_during_start_up_is_named_and_the_rest_stopped() {
    let real = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    for name in ["mesh-registry", "recommendations", "marketplace"] {
        std::os::unix::fs::symlink(real.join(name), dir.path().join(name)).unwrap();
    }
    // A sidecar that cannot start.
    let proxy = dir.path().join("mesh-proxy");
    std::fs::write(&proxy, "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&proxy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let ports = Ports::free();
    let mut args = vec!["--bin-dir".to_owned(), dir.path().display().to_string()];
    args.extend(ports.flags());
    let mut launcher = Launcher::start(&args);
    let status = launcher.wait_exit(Duration::from_secs(60));
    let transcript = launcher.finish();
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}\n{transcript}"
    );
    assert!(
        transcript.contains("[sidecar/recommendations-1] cannot start"),
        "{transcript}"
    );
    // Every sidecar fails; whichever exit the launcher notices first is named.
    assert!(
        transcript.contains("error: sidecar/")
            && transcript.contains(") exited during start-up: exit code 3"),
        "{transcript}"
    );
    // Everything it had started, listed as `started NAME (pid N)`, is gone.
    let started: Vec<u32> = transcript
        .lines()
        .filter_map(|l| l.split_once("(pid ")?.1.strip_suffix(')')?.parse().ok())
        .collect();
    assert!(started.len() >= 2, "{transcript}");
    let left = wait_gone(&started, Duration::from_secs(5));
    assert!(left.is_empty(), "still running: {left:?}\n{transcript}");
}
