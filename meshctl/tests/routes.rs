//! `meshctl routes SERVICE`: the routes each calling sidecar applies, at which policy
//! index, and how its calls actually split between the subsets.

mod common;

use common::{PATIENCE, Registry, Shape, Sidecar, call, eventually, run};
use http::StatusCode;
use mesh_registry_api::policy::{Document, PolicyKind};

fn canary(v1: u32, v2: u32) -> Document {
    let body = format!(
        r#"{{"rules":[{{"name":"canary","backends":[
            {{"subset":"version=v1","weight":{v1}}},{{"subset":"version=v2","weight":{v2}}}]}}]}}"#
    );
    Document::parse(PolicyKind::Routes, body.as_bytes()).unwrap()
}

async fn version(registry: &Registry, v: &str) -> Sidecar {
    let shape = Shape {
        metadata: vec![("version".to_owned(), v.to_owned())],
        ..Shape::default()
    };
    Sidecar::start_shaped(registry, "recs", shape).await
}

/// meshctl routes' JSON rows for the sidecar `web`: (subset, weight, tries, share).
async fn seen_by(url: &str, web: &Sidecar) -> (serde_json::Value, Vec<(String, u64, u64, f64)>) {
    let json = run(url, &["-o", "json", "routes", "recs"]).await.json();
    let view = json
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["sidecar"] == web.name().as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{} does not follow recs: {json}", web.name()));
    let splits = view["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let share = s["share"].as_f64().unwrap_or(0.0);
            let subset = s["subset"].as_str().unwrap().to_owned();
            (
                subset,
                s["weight"].as_u64().unwrap(),
                s["tries"].as_u64().unwrap(),
                share,
            )
        })
        .collect();
    (view, splits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_shows_the_routes_it_applies_and_the_split_its_calls_took() {
    let registry = Registry::start().await;
    let url = registry.url();
    let _v1 = version(&registry, "v1").await;
    let _v2 = version(&registry, "v2").await;
    let web = Sidecar::start(&registry, "web").await;
    registry
        .client
        .put_policy("recs", &canary(90, 10))
        .await
        .unwrap();

    for _ in 0..300 {
        assert_eq!(call(web.outbound, "recs", "/").await, StatusCode::OK);
    }
    let (view, splits) = seen_by(&url, &web).await;
    assert_eq!(view["state"], "current", "{view}");
    assert_eq!(view["index"], view["registry_index"]);
    let [(v1, 90, v1_tries, v1_share), (v2, 10, v2_tries, v2_share)] = &splits[..] else {
        panic!("{splits:?}")
    };
    assert_eq!((v1.as_str(), v2.as_str()), ("version=v1", "version=v2"));
    // Tries older than 10 s leave the count (a loaded machine may take that long).
    assert!(
        v1_tries + v2_tries > 0 && v1_tries + v2_tries <= 300,
        "{splits:?}"
    );
    // 300 draws at 10 %: well within 3 to 20 % but for one run in many thousands.
    assert!((0.03..0.20).contains(v2_share), "{splits:?}");
    assert!((v1_share + v2_share - 1.0).abs() < 1e-9);

    // The table says the same to an operator.
    let table = run(&url, &["routes", "recs"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let row = table.row(&web.name());
    assert_eq!(
        row[1..6],
        [
            view["index"].to_string(),
            "current".into(),
            "canary".into(),
            "version=v1".into(),
            "90%".into()
        ]
    );

    // The whole split moves to v2: the caller shows the new index, then only v2 tries.
    registry
        .client
        .put_policy("recs", &canary(0, 100))
        .await
        .unwrap();
    let moved = registry.client.policy("recs").await.unwrap().index;
    eventually(PATIENCE, "web applies the new routes", async || {
        seen_by(&url, &web).await.0["index"] == moved
    })
    .await;
    let before = seen_by(&url, &web).await.1;
    for _ in 0..50 {
        assert_eq!(call(web.outbound, "recs", "/").await, StatusCode::OK);
    }
    let after = seen_by(&url, &web).await.1;
    // Counts only fall as tries age out of the 10 s window: v1's must not have grown.
    assert!(
        after[0].2 <= before[0].2,
        "v1 got new calls: {before:?} → {after:?}"
    );
    assert!(after[1].2 >= 50, "{before:?} → {after:?}");
}
