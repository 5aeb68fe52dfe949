//! The registry's dashboard in a real browser, against the whole demo: headless Chromium
//! opens the registry, follows the redirect to `/ui/`, and the test reads the rendered
//! page; then it kills one recommendations app (not its sidecar) and watches the page
//! turn that instance critical (its check output on the critical colour, a passing
//! instance's left plain), live and again after a reload.
//!
//! Needs Chromium (`apt-get install chromium`; `CHROMIUM` names another binary) and the
//! other programs built next to `mesh-demo` (see `support`). Run with:
//! `cargo test -p mesh-demo --test dashboard -- --ignored`.
//!
//! With `MESH_DASHBOARD_SCREENSHOT=docs/dashboard.png` (a path relative to the workspace
//! root, or absolute) it also writes a screenshot of the page once the instance is
//! critical.
//!
//! [`large_mesh`] runs the page against 3,000 services and hostile sidecars; [`policy`]
//! shows a service's traffic policy on it.

mod browser;
mod large_mesh;
mod policy;
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use browser::Browser;
use rustix::process::{Signal, kill_process};
use support::{Ports, start_mesh};

/// Long enough for the sidecar's health check, the heartbeat and a loaded machine.
const SETTLE: Duration = Duration::from_secs(45);

/// Held by each browser test: both watch the clock (long tasks, timeouts), and two
/// browsers and a mesh on a small machine would slow each other down.
fn one_browser_at_a_time() -> MutexGuard<'static, ()> {
    static BROWSER: Mutex<()> = Mutex::new(());
    BROWSER.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
#[ignore = "needs Chromium (apt-get install chromium); .ci/run runs it"]
fn the_dashboard_shows_the_mesh_and_an_instance_going_critical() {
    let _alone = one_browser_at_a_time();
    let ports = Ports::free();
    let (mut launcher, pids) = start_mesh(&ports);
    let _traffic = Traffic::start(&ports);
    let mut browser = Browser::launch(1200, 900);

    browser.navigate(&format!("http://127.0.0.1:{}/", ports.registry()));
    expect(
        &mut browser,
        "the redirect to /ui/",
        "location.pathname === '/ui/'",
    );
    expect(
        &mut browser,
        "both services with every instance passing",
        &format!(
            "{} === '3' && {} === '1' && {} === '0'",
            count("recommendations", "passing"),
            count("marketplace", "passing"),
            count("recommendations", "critical"),
        ),
    );
    expect(
        &mut browser,
        "the registry's version and CA in the header",
        "/^mesh-registry \\d/.test(document.getElementById('version').textContent) && \
         document.getElementById('ca-summary').textContent.includes('mesh.local')",
    );
    expect_sidecar_figures(&mut browser);

    // Kill the app alone: its sidecar stays, finds it gone and reports it critical.
    let victim = pids["recommendations-2"];
    kill_process(support::pid(victim), Signal::KILL).unwrap();
    let critical = format!(
        "{} === 'critical' && {} === '2'",
        status("recommendations-2"),
        count("recommendations", "passing")
    );
    expect(&mut browser, "recommendations-2 critical, live", &critical);
    expect(
        &mut browser,
        "a critical event for recommendations-2 in the timeline",
        "document.querySelector('li[data-kind=\"critical\"][data-instance=\"recommendations-2\"]') !== null",
    );
    expect(
        &mut browser,
        "recommendations-2's sidecar reporting its app critical",
        "document.querySelector('[data-sidecar=\"recommendations/recommendations-2\"] [data-app-status=\"critical\"]') !== null",
    );
    expect(
        &mut browser,
        "recommendations-2's check output on the critical colour, a passing instance's plain",
        &format!(
            "![null, 'rgba(0, 0, 0, 0)'].includes({}) && {} === 'rgba(0, 0, 0, 0)'",
            output_background("article[data-instance=\"recommendations-2\"]"),
            output_background("article[data-status=\"passing\"]"),
        ),
    );
    if let Some(path) = screenshot_path() {
        browser.screenshot(&path);
    }

    browser.reload();
    expect(
        &mut browser,
        "recommendations-2 critical after a reload",
        &critical,
    );

    launcher.signal(Signal::INT);
    let status = launcher.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// The marketplace's sidecar shows its calls to recommendations: a request rate, success
/// and latency figures, and the three endpoints it balances over; every sidecar shows a
/// certificate with most of its life ahead.
fn expect_sidecar_figures(browser: &mut Browser) {
    let sidecar = "[data-sidecar=\"marketplace/marketplace-1\"][data-state=\"ok\"]";
    let figure = |name: &str| {
        format!(
            "document.querySelector('{sidecar} [data-figure=\"{name}\"][data-direction=\"outbound\"]')?.textContent"
        )
    };
    expect(
        browser,
        "the marketplace sidecar's outbound figures",
        &format!(
            "parseFloat({}) > 0 && /%$/.test({}) && /s$/.test({}) && /s$/.test({})",
            figure("rps"),
            figure("success"),
            figure("p50"),
            figure("p99"),
        ),
    );
    expect(
        browser,
        "three ready recommendations endpoints seen by the marketplace sidecar",
        &format!(
            "document.querySelectorAll('{sidecar} [data-destination=\"recommendations\"] tr[data-state=\"ready\"]').length === 3"
        ),
    );
    expect(
        browser,
        "no connection carried as bytes to a recommendations endpoint (gRPC is HTTP)",
        &format!(
            "document.querySelectorAll('{sidecar} [data-destination=\"recommendations\"] td[data-open=\"0\"]').length === 3"
        ),
    );
    expect(
        browser,
        "a figure for a recommendations sidecar too",
        "document.querySelector('[data-sidecar=\"recommendations/recommendations-1\"] [data-figure=\"rps\"][data-direction=\"inbound\"]') !== null",
    );
    expect(
        browser,
        "every sidecar's certificate with most of its life left",
        "document.querySelectorAll('tr[data-cert][data-cert-state=\"ok\"]').length === 4",
    );
}

/// Waits for `condition` on the page, failing with what the page shows.
fn expect(browser: &mut Browser, what: &str, condition: &str) {
    if let Err(page) = browser.wait_for(SETTLE, condition) {
        panic!("the page never showed {what} ({condition}); it shows:\n{page}");
    }
}

/// The count of instances of `service` with `status` in the services table, as text.
fn count(service: &str, status: &str) -> String {
    format!(
        "document.querySelector('tr[data-service=\"{service}\"] td[data-count=\"{status}\"]')?.textContent"
    )
}

/// The status an instance's card shows.
fn status(instance: &str) -> String {
    format!("document.querySelector('article[data-instance=\"{instance}\"]')?.dataset.status")
}

/// The background of the check output in the first card `article` matches, as the
/// browser computed it (`rgba(0, 0, 0, 0)` for none); null while that card shows no
/// output.
fn output_background(article: &str) -> String {
    format!(
        "(o => o ? getComputedStyle(o).backgroundColor : null)(document.querySelector('{article} [data-output]'))"
    )
}

/// Where `MESH_DASHBOARD_SCREENSHOT` asks for the screenshot, relative paths from the
/// workspace root.
fn screenshot_path() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("MESH_DASHBOARD_SCREENSHOT")?);
    Some(if path.is_absolute() {
        path
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    })
}

/// `mesh-demo traffic` on the marketplace page, so sidecars have figures to show.
struct Traffic(Child);

// === impl Traffic ===

impl Traffic {
    fn start(ports: &Ports) -> Traffic {
        let page = format!("http://127.0.0.1:{}/", ports.marketplace());
        let child = Command::new(support::LAUNCHER)
            .args([
                "traffic",
                "--url",
                &page,
                "--rate",
                "10",
                "--duration",
                "10m",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Traffic(child)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
