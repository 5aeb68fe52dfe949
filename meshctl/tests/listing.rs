//! The registry's catalog through meshctl: `services`, `instances`, `register`,
//! `deregister`, as tables and as JSON.

mod common;

use common::{Registry, Sidecar, run};

#[tokio::test]
async fn services_and_instances_as_tables_and_json() {
    let registry = Registry::start().await;
    let url = registry.url();
    let web = Sidecar::start(&registry, "web").await;
    let _front = Sidecar::start(&registry, "front").await;

    let services = run(&url, &["services"]).await;
    assert_eq!(services.code, Some(0), "{}", services.stderr);
    assert_eq!(services.row("SERVICE"), ["SERVICE", "INSTANCES", "PASSING"]);
    assert_eq!(services.row("web"), ["web", "1", "1"]);
    assert_eq!(services.row("front"), ["front", "1", "1"]);
    let json = run(&url, &["services", "-o", "json"]).await.json();
    let names: Vec<&str> = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["front", "web"]);

    let instances = run(&url, &["instances", "web"]).await;
    assert_eq!(instances.code, Some(0), "{}", instances.stderr);
    let row = instances.row(&web.id);
    assert_eq!(
        row[1..5],
        [&web.inbound.to_string(), "http", "passing", "1"]
    );
    // The heartbeat's age is two cells: "1.2s ago".
    assert!(row[5].ends_with('s'), "{row:?}");
    assert_eq!(row[6], "ago", "{row:?}");
    assert_eq!(row[7], "-", "no tags: {row:?}");
    assert!(
        row[8].contains(&format!("admin={}", web.admin)),
        "the sidecar's admin address: {row:?}"
    );
    let json = run(&url, &["--output", "json", "instances", "web"])
        .await
        .json();
    assert_eq!(json["service"], "web");
    assert_eq!(json["instances"][0]["id"], web.id.as_str());
    assert_eq!(
        json["instances"][0]["metadata"]["admin"],
        web.admin.to_string()
    );

    let unknown = run(&url, &["instances", "nope"]).await;
    assert_eq!(unknown.code, Some(0));
    assert_eq!(unknown.stdout.trim(), "no instances of nope");
}

#[tokio::test]
async fn register_and_deregister_round_trip_with_a_token() {
    let config = mesh_registry::Config {
        token: Some("s3cret".into()),
        ..mesh_registry::Config::default()
    };
    let registry = Registry::start_with(config).await;
    let url = registry.url();
    let register = "register ext ext-1 --address 10.0.0.7:8080 --protocol grpc --weight 7 \
                    --ttl 1h --tag v2 --tag canary --meta zone=eu-1";
    let register: Vec<&str> = register.split_whitespace().collect();

    let refused = run(&url, &register).await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("unauthorized"),
        "{}",
        refused.stderr
    );
    let services = registry.client.services().await.unwrap().services;
    assert!(services.is_empty(), "{services:?}");

    let with_token = [&register[..], &["--token", "s3cret"]].concat();
    let registered = run(&url, &with_token).await;
    assert_eq!(registered.code, Some(0), "{}", registered.stderr);
    let row = registered.row("ext-1");
    assert_eq!(row[1..5], ["10.0.0.7:8080", "grpc", "passing", "7"]);
    let lease = &registered.stderr;
    assert!(lease.contains("1h lease"), "{lease}");

    let listed = run(&url, &["instances", "ext", "-o", "json"]).await.json();
    let instance = &listed["instances"][0];
    assert_eq!(instance["id"], "ext-1");
    assert_eq!(instance["tags"], serde_json::json!(["v2", "canary"]));
    assert_eq!(instance["metadata"]["zone"], "eu-1");
    assert_eq!(instance["weight"], 7);

    // The token may come from the environment, as it would in a script.
    let mut deregister = common::meshctl(&url, &["deregister", "ext", "ext-1", "-o", "json"]);
    deregister.env("MESH_REGISTRY_TOKEN", "s3cret");
    let deregistered = common::finish(deregister.spawn().unwrap()).await;
    assert_eq!(deregistered.code, Some(0), "{}", deregistered.stderr);
    assert_eq!(deregistered.json()["deregistered"], true);
    let services = registry.client.services().await.unwrap();
    assert!(services.services.is_empty(), "{services:?}");
}

#[tokio::test]
async fn the_registry_comes_from_the_environment_too() {
    let registry = Registry::start().await;
    let _web = Sidecar::start(&registry, "web").await;
    let mut services = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"));
    services
        .env_clear()
        .env("MESH_REGISTRY", registry.url())
        .env("MESHCTL_OUTPUT", "json")
        .arg("services")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = common::finish(services.spawn().unwrap()).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.json()["services"][0]["name"], "web");
}

#[tokio::test]
async fn a_registry_that_is_down_is_an_error_naming_it() {
    let registry = Registry::start().await;
    let url = registry.url();
    registry.stop().await.unwrap();
    let out = run(&url, &["services"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.starts_with("error: registry at "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&url), "{}", out.stderr);
    let wrong = run("http://127.0.0.1:7700/v1", &["services"]).await;
    assert_eq!(wrong.code, Some(1));
    assert!(wrong.stderr.contains("--registry"), "{}", wrong.stderr);
}
