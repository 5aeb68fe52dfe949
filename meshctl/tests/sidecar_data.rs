//! What meshctl reads from sidecars: `endpoints` (their `/debug/endpoints`) and `top`
//! (their `/metrics`). Sidecars are dialled directly (`--direct`) until the registry
//! relays their admin pages; one test goes without, and passes either way.

mod common;

use clap::Parser;
use common::{PATIENCE, Registry, Shape, Sidecar, call, eventually, meshctl, run};
use http::StatusCode;
use mesh_proxy::inbound::AppProtocol;
use meshctl::Ctl;
use meshctl::cli::Cli;

/// `web`, and `front` whose app has called `web` `n` times through its sidecar.
async fn mesh(n: usize) -> (Registry, Sidecar, Sidecar) {
    let registry = Registry::start().await;
    let web = Sidecar::start(&registry, "web").await;
    let front = Sidecar::start(&registry, "front").await;
    for _ in 0..n {
        assert_eq!(call(front.outbound, "web", "/").await, StatusCode::OK);
    }
    (registry, web, front)
}

#[tokio::test]
async fn endpoints_as_the_sidecars_that_call_the_service_see_them() {
    let (registry, web, front) = mesh(5).await;
    let url = registry.url();

    let table = run(&url, &["endpoints", "web", "--direct"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let heading = format!("{} sees web (from registry):", front.name());
    assert_eq!(
        table.stdout.lines().next(),
        Some(heading.as_str()),
        "{}",
        table.stdout
    );
    let row = table.row(&web.inbound.to_string());
    assert_eq!(
        row[1..6],
        [&web.id, "ready", "100.0%", "of", "5"],
        "{row:?}"
    );
    assert!(table.stdout.contains("listed as passing by the registry"));

    let json = run(&url, &["endpoints", "web", "--direct", "-o", "json"])
        .await
        .json();
    let views = json.as_array().unwrap();
    assert_eq!(views.len(), 1, "only front calls web: {json}");
    assert_eq!(views[0]["sidecar"], front.name());
    assert_eq!(views[0]["source"], "registry");
    let endpoint = &views[0]["endpoints"][0];
    assert_eq!(endpoint["address"], web.inbound.to_string());
    assert_eq!(endpoint["state"], "ready");
    assert_eq!(endpoint["tries"], 5);
    assert_eq!(endpoint["success_rate"], 1.0);
}

#[tokio::test]
async fn endpoints_of_a_tcp_service_show_its_open_connections() {
    let registry = Registry::start().await;
    let tcp = Shape {
        protocol: Some(AppProtocol::Tcp),
        ..Shape::default()
    };
    let db = Sidecar::start_shaped(&registry, "db", tcp).await;
    let client = Shape {
        upstream: Some("db"),
        ..Shape::default()
    };
    let front = Sidecar::start_shaped(&registry, "front", client).await;
    // Two connections held open through front's upstream listener for db.
    let upstream = front.upstream.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(upstream).await.unwrap());
    }
    let url = registry.url();
    let endpoint = async || {
        let json = run(&url, &["endpoints", "db", "--direct", "-o", "json"]).await;
        json.json()[0]["endpoints"][0].clone()
    };
    // The sidecar counts a connection once it has reached the endpoint.
    eventually(PATIENCE, "two open connections to db", async || {
        endpoint().await["open_connections"] == 2
    })
    .await;
    let endpoint = endpoint().await;
    assert_eq!(endpoint["address"], db.inbound.to_string(), "{endpoint}");
    assert_eq!(endpoint["open_connections"], 2, "{endpoint}");
    assert_eq!(endpoint["in_flight"], 2, "{endpoint}");

    let table = run(&url, &["endpoints", "db", "--direct"]).await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    let heading = format!("{} sees db (tcp, from registry):", front.name());
    assert_eq!(lines[0], heading, "{}", table.stdout);
    let open = lines[1].find("OPEN").expect("an OPEN column");
    let cell = lines[2][open..].split_whitespace().next();
    assert_eq!(cell, Some("2"), "{}", table.stdout);
    drop(held);
}

#[tokio::test]
async fn endpoints_via_one_named_sidecar() {
    let (registry, web, front) = mesh(1).await;
    let url = registry.url();
    let heading = format!("{} sees web (from registry):", front.name());
    for via in [front.name(), front.id.clone()] {
        let asked = run(&url, &["endpoints", "web", "--direct", "--via", &via]).await;
        assert_eq!(asked.code, Some(0), "{}", asked.stderr);
        assert!(
            asked.stdout.starts_with(&heading),
            "{via}: {}",
            asked.stdout
        );
    }
    let web_itself = run(
        &url,
        &["endpoints", "web", "--direct", "--via", &web.name()],
    )
    .await;
    assert_eq!(
        web_itself.stdout.trim(),
        format!(
            "{} does not follow web; it follows no service now",
            web.name()
        )
    );
    let unknown = run(&url, &["endpoints", "web", "--via", "nobody"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("--via nobody"),
        "{}",
        unknown.stderr
    );
    let nobody = run(&url, &["endpoints", "api", "--direct"]).await;
    assert!(
        nobody
            .stdout
            .starts_with("no registered sidecar follows api")
    );
}

#[tokio::test]
async fn without_direct_sidecar_data_still_arrives() {
    // Through the registry's relay, or, from a registry without one, by dialling the
    // sidecar after the registry said so: the output is the same.
    let (registry, web, front) = mesh(1).await;
    let json = run(&registry.url(), &["endpoints", "web", "-o", "json"]).await;
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    let views = json.json();
    assert_eq!(views[0]["sidecar"], front.name());
    assert_eq!(views[0]["endpoints"][0]["address"], web.inbound.to_string());
}

#[tokio::test]
async fn top_once_shows_the_requests_sent_through_a_sidecar() {
    let (registry, _web, front) = mesh(0).await;
    let url = registry.url();
    for args in [
        &[
            "top",
            "--once",
            "--interval",
            "1s",
            "--direct",
            "-o",
            "json",
        ][..],
        &["top", "web", "--once", "--interval", "1s", "--direct"],
    ] {
        let mut top = meshctl(&url, args).spawn().unwrap();
        // Calls for as long as top samples, so some fall in its interval whenever it
        // takes its first sample.
        let mut sent = 0;
        while top.try_wait().unwrap().is_none() {
            assert_eq!(call(front.outbound, "web", "/").await, StatusCode::OK);
            sent += 1;
        }
        let out = common::finish(top).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        if args.contains(&"json") {
            let frame = out.json();
            let web = &frame["services"][0];
            assert_eq!(web["service"], "web", "{frame}");
            let requests = web["requests"].as_f64().unwrap();
            assert!(
                requests > 0.0 && requests <= sent as f64,
                "{requests} of {sent}"
            );
            assert_eq!(web["success_rate"], 1.0);
            assert!(web["p50_seconds"].as_f64().unwrap() > 0.0);
            assert_eq!(frame["sidecars"], 2);
        } else {
            let row = out.row("web");
            assert!(row[1].parse::<f64>().unwrap() > 0.0, "{}", out.stdout);
            assert_eq!(row[2], "100.0%", "{}", out.stdout);
        }
    }
}

#[tokio::test]
async fn top_counts_exactly_the_calls_of_its_interval() {
    let (registry, _web, front) = mesh(3).await;
    let cli = Cli::parse_from(["meshctl", "--registry", &registry.url(), "--direct", "top"]);
    let ctl = Ctl::new(&cli.global).unwrap();

    let before = meshctl::top::scrape(&ctl).await.unwrap();
    for _ in 0..25 {
        assert_eq!(call(front.outbound, "web", "/").await, StatusCode::OK);
    }
    // Idempotent and answered 503: tried three times in all, so two retries.
    let failed = call(front.outbound, "web", "/status/503").await;
    assert_eq!(failed, StatusCode::SERVICE_UNAVAILABLE);
    let after = meshctl::top::scrape(&ctl).await.unwrap();

    let frame = meshctl::top::frame(&before, &after, None);
    assert_eq!(frame.sidecars, 2);
    assert!(frame.missed.is_empty());
    let web = &frame.services[0];
    assert_eq!(web.service, "web");
    assert_eq!(
        web.requests, 26.0,
        "the 3 calls before the interval are not in it"
    );
    assert_eq!(web.success_rate, Some(25.0 / 26.0));
    let retries = web.retries_per_second * frame.interval_seconds;
    assert!((retries - 2.0).abs() < 1e-9, "{retries}");
    assert!(web.p50_seconds.unwrap() <= web.p99_seconds.unwrap());
    assert!(
        meshctl::top::frame(&before, &after, Some("api"))
            .services
            .is_empty()
    );
}
