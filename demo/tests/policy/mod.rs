//! A service's traffic policy on the dashboard, in headless Chromium, against a registry
//! in-process: written with `PUT /v1/policy/…` while the page is open, it shows beside the
//! service's instances without a reload (routes in order with their matches and backends,
//! intentions with a shadow rule marked, limits), every string in it as text (a header
//! value and subsets carrying markup), and a backend whose subset selects no passing
//! instance flagged, until an instance joins it. A policy written while its service is
//! off screen shows once it is scrolled to. Removed, the policy gives way to "no policy"
//! again.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_registry_api::Status;
use mesh_registry_api::policy::{Document, PolicyKind};

use crate::browser::Browser;
use crate::large_mesh::{InProcessRegistry, expect, registration, scroll_to};

/// A page driven by blocking queries: a change shows within a second or two; the bound is
/// for a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

const HEADER_MARKUP: &str = "<img src=x onerror=window.pwned=1>";
const SUBSET_MARKUP: &str = "<script>alert(1)</script>";
/// Services after `shop`, so that the last of them is far below it.
const FILLERS: usize = 30;

#[test]
#[ignore = "needs Chromium (apt-get install chromium); .ci/run runs it"]
fn the_dashboard_shows_each_services_policy_live_and_as_text() {
    let _alone = crate::one_browser_at_a_time();
    let registry = InProcessRegistry::start();
    for (id, version, status) in [
        ("shop-1", "v1", Status::Passing),
        ("shop-2", "v1", Status::Passing),
        ("shop-3", "v2", Status::Critical),
    ] {
        registry.register("shop", id, &instance(version, status));
    }
    registry.register("plain", "plain-1", &registration("127.0.0.1:1", None));
    for n in 0..FILLERS {
        let service = format!("zz-{n:02}");
        registry.register(
            &service,
            &format!("{service}-a"),
            &registration("127.0.0.1:1", None),
        );
    }
    let last = format!("zz-{:02}", FILLERS - 1);

    let mut browser = Browser::launch(1200, 900);
    browser.navigate(&format!("http://{}/ui/", registry.address));
    expect(
        &mut browser,
        SETTLE,
        "\"no policy\" for both services",
        r#"document.querySelector('[data-policy="shop"] [data-policy-none]')?.textContent === 'no policy' &&
           document.querySelector('[data-policy="plain"] [data-policy-none]')?.textContent === 'no policy'"#,
    );

    put(
        &registry,
        PolicyKind::Routes,
        &format!(
            r#"{{"rules": [
                {{"name": "testers",
                  "matches": [{{"path": {{"prefix": "/api"}}, "method": "GET",
                                "headers": {{"x-canary": "{HEADER_MARKUP}"}}}},
                              {{"grpc": {{"service": "shop.Shop", "method": "Buy"}}}}],
                  "backends": [{{"subset": "version=v2", "weight": 100}}],
                  "timeout": "2s", "retries": {{"attempts": 1, "on": ["reset"]}}}},
                {{"name": "canary",
                  "backends": [{{"subset": "version=v1", "weight": 90}},
                               {{"subset": "version={SUBSET_MARKUP}", "weight": 10}}]}}
            ]}}"#
        ),
    );
    put(
        &registry,
        PolicyKind::Intentions,
        r#"{"default": "deny", "rules": [
            {"name": "ops", "from": "spiffe://mesh.local/<script>x</script>", "action": "allow",
             "paths": ["/admin"], "methods": ["POST"]},
            {"name": "watch", "from": "*", "action": "deny", "mode": "shadow",
             "grpc": ["shop.Shop/*"]}
        ]}"#,
    );
    put(
        &registry,
        PolicyKind::Limits,
        r#"{"rps": 100, "per_caller": {"rps": 20, "burst": 5}}"#,
    );
    scroll_to(&mut browser, "shop");

    let shop = r#"document.querySelector('[data-policy="shop"]')"#;
    expect(
        &mut browser,
        SETTLE,
        "the routes' rules in their order, without a reload",
        &format!(
            "Array.from({shop}?.querySelectorAll('[data-rule]') ?? []).map((r) => r.dataset.rule).join() === 'testers,canary'"
        ),
    );
    let testers = format!("{shop}.querySelector('[data-rule=\"testers\"]')");
    let canary = format!("{shop}.querySelector('[data-rule=\"canary\"]')");
    expect(
        &mut browser,
        SETTLE,
        "each match of a rule, the header value with its markup as text",
        &format!(
            "Array.from({testers}.querySelectorAll('[data-match]')).map((m) => m.textContent).join(' | ') === \
             'path prefix /api · method GET · header x-canary = {HEADER_MARKUP} | gRPC shop.Shop/Buy' && \
             {canary}.querySelector('[data-match]')?.textContent === 'every call'"
        ),
    );
    expect(
        &mut browser,
        SETTLE,
        "a rule's timeout and retries",
        &format!(
            "{testers}.querySelector('[data-timeout]')?.textContent === 'timeout 2s' && \
             {testers}.querySelector('[data-retries]')?.textContent === '1 retry on reset' && \
             {canary}.querySelector('[data-timeout]')?.textContent === \"the sidecar's timeout\""
        ),
    );
    expect(
        &mut browser,
        SETTLE,
        "each backend's weight and the instances its subset selects",
        &format!(
            "(b => b?.dataset.weight === '90' && b.dataset.selected === '2' && b.dataset.passing === '2' && \
                   !b.hasAttribute('data-no-endpoints') && b.querySelector('meter')?.value === 90)\
             ({canary}.querySelector('[data-backend=\"version=v1\"]'))"
        ),
    );
    expect(
        &mut browser,
        SETTLE,
        "a subset of no passing instance flagged: one of a critical instance, one of none",
        &format!(
            "(b => b?.dataset.selected === '1' && b.dataset.passing === '0' && b.hasAttribute('data-no-endpoints') && \
                   b.textContent.includes('no-endpoints'))({testers}.querySelector('[data-backend=\"version=v2\"]')) && \
             Array.from({canary}.querySelectorAll('[data-no-endpoints]')).map((b) => b.dataset.selected + ' ' + b.dataset.backend).join() === \
             '0 version={SUBSET_MARKUP}'"
        ),
    );
    expect(
        &mut browser,
        SETTLE,
        "the intentions: the default, each rule, the shadow one marked",
        &format!(
            "{shop}.querySelector('[data-intentions-default]')?.textContent === 'deny' && \
             (r => r?.dataset.action === 'allow' && r.dataset.mode === 'enforce' && \
                   r.textContent.includes('spiffe://mesh.local/<script>x</script>') && \
                   r.textContent.includes('paths /admin') && r.textContent.includes('methods POST'))\
             ({shop}.querySelector('[data-intention=\"ops\"]')) && \
             (r => r?.dataset.action === 'deny' && r.dataset.mode === 'shadow' && \
                   r.querySelector('.badge.shadow')?.textContent === 'shadow' && r.textContent.includes('gRPC shop.Shop/*'))\
             ({shop}.querySelector('[data-intention=\"watch\"]'))"
        ),
    );
    expect(
        &mut browser,
        SETTLE,
        "the limits, overall and per caller",
        &format!(
            "{shop}.querySelector('[data-limit=\"overall\"]')?.textContent === '100 rps, burst 100' && \
             {shop}.querySelector('[data-limit=\"per-caller\"]')?.textContent === '20 rps, burst 5'"
        ),
    );
    expect(
        &mut browser,
        SETTLE,
        "markup in the policy shown as text, never as elements",
        "document.querySelector('#instances img, #instances script') === null && window.pwned === undefined && \
         document.querySelector('[data-policy=\"plain\"] [data-policy-none]') !== null",
    );

    // A passing instance joins v2: the flag goes, from the listing alone.
    registry.register("shop", "shop-4", &instance("v2", Status::Passing));
    expect(
        &mut browser,
        SETTLE,
        "v2 no longer flagged once a passing instance is in it",
        &format!(
            "(b => b?.dataset.selected === '2' && b.dataset.passing === '1' && !b.hasAttribute('data-no-endpoints'))\
             ({testers}.querySelector('[data-backend=\"version=v2\"]'))"
        ),
    );

    // The last service's policy read while on screen, then written while it is not: the
    // page holds it stale and reads it again once the service is back on screen.
    scroll_to(&mut browser, &last);
    let last_policy = format!("document.querySelector('[data-policy=\"{last}\"]')");
    expect(
        &mut browser,
        SETTLE,
        "\"no policy\" for the last service",
        &format!("{last_policy}?.querySelector('[data-policy-none]') != null"),
    );
    scroll_to(&mut browser, "shop");
    put_for(
        &registry,
        &last,
        PolicyKind::Limits,
        r#"{"per_caller": {"rps": 7}}"#,
    );
    // Once the page shows this later write, it has seen the catalog move past the one
    // above while the last service was off screen.
    put(&registry, PolicyKind::Limits, r#"{"rps": 50}"#);
    expect(
        &mut browser,
        SETTLE,
        "shop's new limits",
        &format!(
            "{shop}.querySelector('[data-limit=\"overall\"]')?.textContent === '50 rps, burst 50'"
        ),
    );
    scroll_to(&mut browser, &last);
    expect(
        &mut browser,
        SETTLE,
        "the last service's limits, once scrolled to",
        &format!(
            "{last_policy}?.querySelector('[data-limit=\"per-caller\"]')?.textContent === '7 rps, burst 7'"
        ),
    );
    scroll_to(&mut browser, "shop");

    for kind in [
        PolicyKind::Routes,
        PolicyKind::Intentions,
        PolicyKind::Limits,
    ] {
        registry
            .runtime
            .block_on(registry.client.delete_policy("shop", kind))
            .unwrap();
    }
    expect(
        &mut browser,
        SETTLE,
        "\"no policy\" again once every document is removed",
        &format!(
            "{shop}?.querySelector('[data-policy-none]')?.textContent === 'no policy' && \
             {shop}.querySelector('[data-rule], [data-intention], [data-limit]') === null"
        ),
    );
}

/// A `shop` instance of `version`, reporting `status`.
fn instance(version: &str, status: Status) -> mesh_registry_api::Registration {
    let mut registration = registration("127.0.0.1:1", None);
    registration.metadata = BTreeMap::from([("version".to_owned(), version.to_owned())]);
    registration.status = status;
    registration
}

fn put(registry: &InProcessRegistry, kind: PolicyKind, body: &str) {
    put_for(registry, "shop", kind, body);
}

fn put_for(registry: &InProcessRegistry, service: &str, kind: PolicyKind, body: &str) {
    let document = Document::parse(kind, body.as_bytes()).unwrap();
    registry
        .runtime
        .block_on(registry.client.put_policy(service, &document))
        .unwrap();
}
