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
//! shows a service's traffic policy on it. The marketplace sidecar's live tap is opened on
//! its panel: refused without the demo's operator token, then calls appear as they are
//! made, a path carrying markup shows as text and runs nothing, and a filter keeps other
//! calls out.

mod browser;
mod large_mesh;
mod policy;
mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use browser::Browser;
use mesh_test_support::ChildGuard;
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

    launcher.interrupt();
}

/// Markup in a request path: sent percent-encoded (as any HTTP client must), shown
/// decoded by the tap panel, as text.
const MARKUP: &str = "/<img src=x onerror=window.tapped=1>";
const MARKUP_ENCODED: &str = "/%3Cimg%20src=x%20onerror=window.tapped=1%3E";
/// The marketplace sidecar's tap panel.
const TAP: &str = "[data-sidecar=\"marketplace/marketplace-1\"] details[data-tap]";

#[test]
#[ignore = "needs Chromium (apt-get install chromium); .ci/run runs it"]
fn the_marketplace_sidecars_calls_show_live_on_its_tap_panel_as_text() {
    let _alone = one_browser_at_a_time();
    let ports = Ports::free();
    let (launcher, _pids) = start_mesh(&ports);
    let _traffic = Traffic::start(&ports);
    let token = operator_token(&launcher);
    let mut browser = Browser::launch(1400, 1000);
    browser.navigate(&format!("http://127.0.0.1:{}/ui/", ports.registry()));

    expect(
        &mut browser,
        "the marketplace sidecar's tap panel",
        &format!("document.querySelector('{TAP}') !== null"),
    );
    browser.eval(&format!("document.querySelector('{TAP}').open = true"));
    // The demo's registry has credentials: only the operator taps, and the panel says so.
    expect(
        &mut browser,
        "the panel asking for the operator token",
        &format!("document.querySelector('{TAP} [data-tap-auth]')?.hidden === false"),
    );
    click(&mut browser, "[data-tap-toggle]");
    expect(
        &mut browser,
        "a tap without the token refused",
        &format!(
            "document.querySelector('{TAP}').dataset.tapState === 'needs-token' && \
             document.querySelector('{TAP} [data-tap-status]').textContent.includes('operator token')"
        ),
    );

    browser.eval(&format!(
        "document.querySelector('{TAP} [data-tap-token]').value = {}",
        js_string(&token)
    ));
    click(&mut browser, "[data-tap-toggle]");
    expect(
        &mut browser,
        "the marketplace's calls to recommendations, live",
        &format!(
            "document.querySelector('{TAP}').dataset.tapState === 'open' && \
             [...document.querySelectorAll('{TAP} tr[data-tap-row][data-direction=\"outbound\"]')]\
               .some((row) => row.dataset.path === '/Recommendations/Recommend')"
        ),
    );
    assert_eq!(
        browser.eval("sessionStorage.getItem('mesh-operator-token')"),
        token,
        "the token is kept for this tab"
    );

    // A call whose path carries markup, through the marketplace sidecar's upstream
    // listener for recommendations: shown as the text it is, and nothing runs.
    let hostile = format!(
        "[...document.querySelectorAll('{TAP} td.path')].some((cell) => cell.textContent === {})",
        js_string(MARKUP)
    );
    until_shown(
        &mut browser,
        &ports,
        "the path with markup, as text",
        &hostile,
    );
    assert_eq!(
        browser.eval("window.tapped === undefined"),
        "true",
        "the markup ran"
    );
    assert_eq!(
        browser.eval(&format!("document.querySelectorAll('{TAP} img').length")),
        "0"
    );

    // A filter keeps the other calls out: after the markup call, only the page's own.
    browser.eval(&format!(
        "(input => {{ input.value = '/Recommendations/'; input.dispatchEvent(new Event('change')); }})\
         (document.querySelector('{TAP} [data-tap-filter=\"path_prefix\"]'))"
    ));
    expect(
        &mut browser,
        "the tap opened again with the filter",
        &format!("document.querySelector('{TAP}').dataset.tapState === 'open'"),
    );
    call_with_markup(&ports);
    let rows = format!("document.querySelectorAll('{TAP} tr[data-tap-row]').length");
    expect(
        &mut browser,
        "three calls after the markup call",
        &format!("{rows} >= 3"),
    );
    assert_eq!(
        browser.eval(&hostile),
        "false",
        "the filter let the markup call through"
    );
    assert_eq!(
        browser.eval(&format!(
            "[...document.querySelectorAll('{TAP} tr[data-tap-row]')].every((row) => row.dataset.path.startsWith('/Recommendations/'))"
        )),
        "true"
    );

    click(&mut browser, "[data-tap-toggle]");
    expect(
        &mut browser,
        "the tap stopped",
        &format!("document.querySelector('{TAP}').dataset.tapState === 'stopped'"),
    );
}

/// Clicks the element `selector` names in the tap panel.
fn click(browser: &mut Browser, selector: &str) {
    let clicked = browser.eval(&format!(
        "document.querySelector('{TAP} {selector}').click()"
    ));
    assert_eq!(clicked, "undefined", "{selector}: {clicked}");
}

/// Sends the call with markup in its path until the page shows `condition`.
fn until_shown(browser: &mut Browser, ports: &Ports, what: &str, condition: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        call_with_markup(ports);
        if browser.wait_for(Duration::from_secs(2), condition).is_ok() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let page = browser.eval("document.body.innerText");
            panic!("the page never showed {what} ({condition}); it shows:\n{page}");
        }
    }
}

/// One HTTP/1.1 GET of [`MARKUP_ENCODED`] through the marketplace sidecar's upstream
/// listener for recommendations (whatever recommendations answers: the call is tapped).
fn call_with_markup(ports: &Ports) {
    let upstream = ports.marketplace() + 1;
    let mut stream = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {MARKUP_ENCODED} HTTP/1.1\r\nHost: recommendations\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
}

/// The demo's operator token, from the private file it writes for the operator.
fn operator_token(launcher: &support::Launcher) -> String {
    let file = launcher
        .temporary_files()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "operator-token"))
        .expect("the demo writes an operator token file");
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

/// `text` as a JavaScript string literal (JSON's).
fn js_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\'' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

/// `mesh-demo traffic` on the marketplace page, so sidecars have figures to show; it
/// stops when dropped.
struct Traffic {
    _child: ChildGuard,
}

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
        Traffic {
            _child: child.into(),
        }
    }
}
