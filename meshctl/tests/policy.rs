//! `meshctl policy`: documents applied from a file (YAML, several per file), checked
//! before anything is written, shown back as tables and as JSON that applies again.

mod common;

use common::{Registry, run};

const CANARY: &str = "\
# recommendations v2 gets a tenth of the calls
service: recommendations
routes:
  rules:
    - name: canary
      backends:
        - {subset: version=v1, weight: 90}
        - {subset: version=v2, weight: 10}
---
service: marketplace
intentions:
  default: allow
  rules:
    - {name: no-batch, from: batch, action: deny, mode: shadow}
limits: {rps: 100, per_caller: {rps: 10, burst: 20}}
";

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn apply_writes_every_document_then_only_what_changed() {
    let registry = Registry::start().await;
    let url = registry.url();
    let dir = tempfile::tempdir().unwrap();
    let canary = file(&dir, "canary.yaml", CANARY);

    // A dry run writes nothing and shows the change.
    let diff = run(&url, &["policy", "apply", "-f", &canary, "--diff"]).await;
    assert_eq!(diff.code, Some(0), "{}", diff.stderr);
    assert!(
        diff.stdout.contains("+++ recommendations routes"),
        "{}",
        diff.stdout
    );
    assert!(
        diff.stdout.contains("+          \"weight\": 10"),
        "{}",
        diff.stdout
    );
    assert!(
        diff.stdout
            .contains("recommendations routes: would be configured")
    );
    let held = registry.client.policy("recommendations").await.unwrap();
    assert!(held.routes.is_none(), "a dry run wrote {held:?}");

    let applied = run(&url, &["policy", "apply", "-f", &canary]).await;
    assert_eq!(applied.code, Some(0), "{}", applied.stderr);
    for line in [
        "recommendations routes: configured",
        "marketplace intentions: configured",
        "marketplace limits: configured",
    ] {
        assert!(applied.stdout.contains(line), "{}", applied.stdout);
    }
    let held = registry.client.policy("recommendations").await.unwrap();
    assert_eq!(
        held.routes.unwrap()["rules"][0]["backends"][1]["weight"],
        10
    );

    // The same file again changes nothing, and moves no index.
    let index = registry.client.policy("marketplace").await.unwrap().index;
    let again = run(&url, &["-o", "json", "policy", "apply", "-f", &canary]).await;
    let actions: Vec<_> = again
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].clone())
        .collect();
    assert!(actions.iter().all(|a| a == "unchanged"), "{actions:?}");
    assert_eq!(
        registry.client.policy("marketplace").await.unwrap().index,
        index
    );

    // Shown as tables; as JSON it applies again, unchanged.
    let shown = run(&url, &["policy", "get", "marketplace"]).await;
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert_eq!(
        shown.row("no-batch"),
        ["no-batch", "batch", "deny", "shadow", "*"]
    );
    assert_eq!(shown.row("per"), ["per", "caller", "10", "20"]);
    let routes = run(&url, &["policy", "get", "recommendations"]).await;
    assert!(
        routes.stdout.contains("version=v1 90%, version=v2 10%"),
        "{}",
        routes.stdout
    );
    let json = run(&url, &["-o", "json", "policy", "get", "marketplace"]).await;
    let round_trip = file(&dir, "back.json", &json.stdout);
    let back = run(&url, &["policy", "apply", "-f", &round_trip]).await;
    assert!(
        back.stdout.contains("marketplace limits: unchanged"),
        "{} {}",
        back.stdout,
        back.stderr
    );

    // null deletes; so does `policy delete`.
    let drop = file(&dir, "drop.yaml", "service: marketplace\nlimits: null\n");
    let dropped = run(&url, &["policy", "apply", "-f", &drop]).await;
    assert!(
        dropped.stdout.contains("marketplace limits: deleted"),
        "{}",
        dropped.stdout
    );
    let deleted = run(&url, &["policy", "delete", "marketplace", "intentions"]).await;
    assert_eq!(deleted.code, Some(0), "{}", deleted.stderr);
    let none = run(&url, &["policy", "get", "marketplace"]).await;
    assert!(
        none.stdout.contains("no policy for marketplace"),
        "{}",
        none.stdout
    );
}

#[tokio::test]
async fn a_file_with_one_mistake_changes_nothing_and_says_where() {
    let registry = Registry::start().await;
    let url = registry.url();
    let dir = tempfile::tempdir().unwrap();
    let bad = CANARY.replace("weight: 10}", "weight: 20}");
    let bad = file(&dir, "bad.yaml", &bad);
    let refused = run(&url, &["policy", "apply", "-f", &bad]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("document 1: service recommendations, routes.rules[0].backends"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("110"), "{}", refused.stderr);
    // The second document was valid, and was not written either.
    let held = registry.client.policy("marketplace").await.unwrap();
    assert!(held.limits.is_none() && held.intentions.is_none());
}
