//! `meshctl inject` and `uninject` over manifests written like users' (`tests/inject/*.yaml`),
//! against golden outputs (`*.golden.yaml`, rewritten with `MESHCTL_BLESS=1`). Each golden
//! output is also injected again (nothing changes) and uninjected (the input comes back).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde::Deserialize;
use serde_norway::Value;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inject")
        .join(name)
}

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Injects `input` with `flags`, compares with its golden output, and checks that injecting
/// that output changes nothing and uninjecting it gives back `input`.
fn golden(input: &str, flags: &[&str]) -> String {
    let path = corpus(input);
    let path = path.to_str().unwrap();
    let mut args = vec!["inject"];
    args.extend(flags);
    args.push(path);
    let out = meshctl(&args, None);
    assert!(out.status.success(), "{out:?}");
    let injected = String::from_utf8(out.stdout).unwrap();
    let golden = corpus(&input.replace(".yaml", ".golden.yaml"));
    if std::env::var_os("MESHCTL_BLESS").is_some() {
        std::fs::write(&golden, &injected).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        injected, expected,
        "{input}: the output differs from {golden:?}"
    );

    let mut again = vec!["inject"];
    again.extend(flags);
    again.push("-");
    let twice = meshctl(&again, Some(&injected));
    assert!(twice.status.success(), "{twice:?}");
    assert_eq!(
        String::from_utf8(twice.stdout).unwrap(),
        injected,
        "{input}: injecting twice is injecting once"
    );
    let back = meshctl(&["uninject", "-"], Some(&injected));
    assert!(back.status.success(), "{back:?}");
    assert_eq!(
        documents(&String::from_utf8(back.stdout).unwrap()),
        documents(&std::fs::read_to_string(corpus(input)).unwrap()),
        "{input}: uninject gives back the input"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_pod_that_asks_gets_a_sidecar_beside_its_containers() {
    let said = golden("web.yaml", &[]);
    assert!(said.contains("Deployment/web injected"), "{said}");
    let injected = documents(&std::fs::read_to_string(corpus("web.golden.yaml")).unwrap());
    let pod = &injected[1]["spec"]["template"];
    let init = pod["spec"]["initContainers"].as_sequence().unwrap();
    assert_eq!(init[0]["name"], "mesh-proxy");
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert_eq!(
        init[1]["name"], "migrate",
        "the user's init container stays"
    );
    let env = init[0]["env"].as_sequence().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        var("MESH_APP"),
        Some("127.0.0.1:8080".into()),
        "the first container's port"
    );
    assert_eq!(var("MESH_SERVICE"), Some("web".into()));
    assert_eq!(
        var("MESH_UPSTREAMS"),
        Some("orders:80=127.0.0.1:9000".into())
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"], "false",
        "the user's own scrape setting stays"
    );
    // "no" in the user's args stays a string for YAML 1.1 readers such as kubectl.
    let text = std::fs::read_to_string(corpus("web.golden.yaml")).unwrap();
    assert!(text.contains("- \"no\"\n"), "{text}");
}

#[test]
fn a_labelled_namespace_meshes_its_pods_unless_they_opt_out() {
    let said = golden("namespace.yaml", &[]);
    assert!(said.contains("Deployment/ledger injected"), "{said}");
    assert!(said.contains("Deployment/batch-export skipped"), "{said}");
    assert!(said.contains("Deployment/reports skipped"), "{said}");
    let injected = documents(&std::fs::read_to_string(corpus("namespace.golden.yaml")).unwrap());
    let ledger = &injected[1]["spec"]["template"]["spec"]["initContainers"][0];
    let protocol = ledger["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MESH_APP_PROTOCOL")
        .map(|e| e["value"].clone());
    assert_eq!(protocol, Some("grpc".into()), "a port named grpc-… is gRPC");

    let all = meshctl(
        &[
            "inject",
            "--all",
            corpus("namespace.yaml").to_str().unwrap(),
        ],
        None,
    );
    let said = String::from_utf8(all.stderr).unwrap();
    assert!(said.contains("Deployment/reports injected"), "{said}");
    assert!(said.contains("Deployment/batch-export skipped"), "{said}");
}

#[test]
fn every_kind_with_a_pod_template_is_meshed() {
    let said = golden("kinds.yaml", &[]);
    for object in [
        "StatefulSet/queue",
        "DaemonSet/node-agent",
        "CronJob/nightly",
        "Pod/debug",
    ] {
        assert!(said.contains(&format!("{object} injected")), "{said}");
    }
}

#[test]
fn container_mode_starts_the_app_after_its_sidecar_and_keeps_probes_old_clusters_accept() {
    golden("grpc.yaml", &["--sidecar", "container"]);
    let injected = documents(&std::fs::read_to_string(corpus("grpc.golden.yaml")).unwrap());
    let spec = &injected[0]["spec"]["template"]["spec"];
    assert!(spec.get("initContainers").is_none());
    let containers = spec["containers"].as_sequence().unwrap();
    assert_eq!(
        containers[0]["name"], "mesh-proxy",
        "first, so it starts first"
    );
    assert!(containers[0].get("restartPolicy").is_none());
    assert_eq!(
        containers[0]["lifecycle"]["postStart"]["exec"]["command"][1],
        "--wait"
    );
    assert_eq!(containers[1]["readinessProbe"]["tcpSocket"]["port"], 50051);
    assert!(containers[1]["readinessProbe"].get("grpc").is_none());
}

#[test]
fn a_pod_that_cannot_be_meshed_stops_the_run_and_prints_nothing() {
    let cases = [
        (
            "hostNetwork: true\n      containers: [{name: a, image: a, ports: [{containerPort: 80}]}]",
            "hostNetwork",
        ),
        (
            "containers: [{name: a, image: a, ports: [{containerPort: 4191}]}]",
            "port 4191",
        ),
        ("containers: [{name: a, image: a}]", "mesh.dev/app-port"),
    ];
    for (spec, reason) in cases {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    \
             mesh.dev/inject: enabled\nspec:\n      {spec}\n"
        );
        let out = meshctl(&["inject", "-"], Some(&manifest));
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(out.stdout.is_empty());
        assert!(
            said.contains("cannot inject Pod/p") && said.contains(reason),
            "{said}"
        );
    }
    for (annotation, value) in [
        ("app-protocol", "udp"),
        ("tls", "maybe"),
        ("app-port", "http"),
        ("service", "Not_A_Name"),
        ("drain-timeout", "soon"),
    ] {
        let manifest = format!(
            "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    mesh.dev/inject: enabled\n    \
             mesh.dev/{annotation}: \"{value}\"\nspec:\n  containers: [{{name: a, image: a, \
             ports: [{{containerPort: 80}}]}}]\n"
        );
        let out = meshctl(&["inject", "-"], Some(&manifest));
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{annotation}: {said}");
        assert!(said.contains(&format!("mesh.dev/{annotation}")), "{said}");
    }
    let out = meshctl(&["inject", "-"], Some("kind: [unclosed"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not YAML"));
}
