//! The command line of every process of the demo, worked out before any starts.
//!
//! Each app gets its own sidecar, wired as in a pod: the app only knows `127.0.0.1`, the
//! sidecar registers the app under its inbound address and balances calls to peers.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use http::Uri;

use crate::{
    UpConfig,
    binaries::Binaries,
    config::HOST,
    ports::{PortLayout, sidecar_name},
};

/// What a process is, which decides when it stops and what its exit means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Registry,
    Sidecar,
    /// A recommendations instance: one of several, so losing it is survivable.
    Recommendations,
    Marketplace,
}

/// One process to start.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Prefix of its output lines, e.g. `sidecar/recommendations-2`.
    pub name: String,
    pub role: Role,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Answers 200 once the process is ready; none for an app whose sidecar checks it.
    pub ready_url: Option<Uri>,
}

/// A sidecar and the app behind it, started in that order.
#[derive(Clone, Debug)]
pub struct Pair {
    pub sidecar: ProcessSpec,
    pub app: ProcessSpec,
    /// `/metrics` of the sidecar.
    pub metrics_url: Uri,
}

/// The mesh's CA for this run and the token sidecars join with.
#[derive(Debug)]
pub struct TlsPlan {
    /// `strict` or `permissive`.
    pub mode: String,
    /// Holds `ca.pem` and `ca-key.pem` (made by `mesh-registry gen-ca`): a private (0700)
    /// temporary directory, removed with everything in it when the plan is dropped, so no
    /// CA key outlives the run.
    dir: tempfile::TempDir,
    pub join_token: String,
}

// === impl TlsPlan ===

impl TlsPlan {
    /// Where `ca.pem` and `ca-key.pem` are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes the CA's private key. The registry reads it once, at start, so once it
    /// serves the key can go: even a launcher killed with SIGKILL then leaves none behind.
    pub fn remove_key(&self) -> std::io::Result<()> {
        std::fs::remove_file(self.dir().join("ca-key.pem"))
    }
}

/// Every process, in start order: the registry, the recommendations pairs, then the
/// marketplace pair, so the services a caller needs exist before it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub registry: ProcessSpec,
    pub pairs: Vec<Pair>,
    pub ports: PortLayout,
    /// The marketplace page.
    pub page_url: Uri,
    /// The registry's service list.
    pub services_url: Uri,
    /// The registry's dashboard.
    pub dashboard_url: Uri,
    pub registry_url: String,
}

// === impl Plan ===

impl Plan {
    pub fn new(config: &UpConfig, binaries: &Binaries, tls: Option<&TlsPlan>) -> Self {
        let ports = config.ports();
        let registry_url = format!("http://{HOST}:{}", ports.registry);
        let mut registry_args = args(["--listen", &address(ports.registry)]);
        if let Some(tls) = tls {
            let file = |name: &str| tls.dir().join(name).display().to_string();
            registry_args.extend(args([
                "--ca-cert",
                &file("ca.pem"),
                "--ca-key",
                &file("ca-key.pem"),
                "--join-token",
                &tls.join_token,
            ]));
        }
        let registry = ProcessSpec {
            name: "registry".to_owned(),
            role: Role::Registry,
            program: binaries.registry.clone(),
            args: registry_args,
            env: Vec::new(),
            ready_url: Some(url(ports.registry, "/readyz")),
        };
        let wiring = Wiring {
            binaries,
            ports: &ports,
            registry_url: &registry_url,
            tls,
        };

        let mut pairs = Vec::new();
        for n in 1..=config.instances {
            let name = format!("recommendations-{n}");
            let app_port = ports.recommendations_app(n);
            let app = ProcessSpec {
                name: name.clone(),
                role: Role::Recommendations,
                program: binaries.recommendations.clone(),
                args: args([
                    "--listen",
                    &address(app_port),
                    "--instance-name",
                    &name,
                    "--fail-rate",
                    &config.fail_rate.to_string(),
                ]),
                env: Vec::new(),
                // gRPC only: its sidecar health-checks it and registers it once it answers.
                ready_url: None,
            };
            // With mTLS, recommendations answers the marketplace only.
            let allow: &[&str] = if tls.is_some() {
                &["--allow", "marketplace"]
            } else {
                &[]
            };
            let sidecar = wiring.sidecar(n, "recommendations", app_port, "grpc", &name, allow);
            pairs.push(Pair {
                metrics_url: url(ports.sidecar(n).admin, "/metrics"),
                sidecar,
                app,
            });
        }

        let upstream = format!("recommendations={}", address(ports.recommendations));
        let marketplace = ProcessSpec {
            name: "marketplace".to_owned(),
            role: Role::Marketplace,
            program: binaries.marketplace.clone(),
            args: args(["--listen", &address(ports.marketplace)]),
            // As in the tutorial: it dials `localhost`, here its sidecar's upstream listener.
            env: vec![
                ("RECOMMENDATIONS_HOST".to_owned(), "localhost".to_owned()),
                (
                    "RECOMMENDATIONS_PORT".to_owned(),
                    ports.recommendations.to_string(),
                ),
            ],
            ready_url: Some(url(ports.marketplace, "/healthz")),
        };
        pairs.push(Pair {
            sidecar: wiring.sidecar(
                0,
                "marketplace",
                ports.marketplace,
                "http",
                "marketplace-1",
                &["--upstream", &upstream],
            ),
            app: marketplace,
            metrics_url: url(ports.sidecar(0).admin, "/metrics"),
        });

        Plan {
            registry,
            pairs,
            page_url: url(ports.marketplace, "/"),
            services_url: url(ports.registry, "/v1/services"),
            dashboard_url: url(ports.registry, "/ui/"),
            registry_url,
            ports,
        }
    }

    /// The sidecar of the marketplace, whose metrics count the calls to recommendations
    /// and their retries.
    pub fn marketplace_pair(&self) -> &Pair {
        self.pairs
            .last()
            .expect("the plan always has the marketplace")
    }
}

/// What every sidecar shares: the program, the port layout and the registry.
struct Wiring<'a> {
    binaries: &'a Binaries,
    ports: &'a PortLayout,
    registry_url: &'a str,
    tls: Option<&'a TlsPlan>,
}

// === impl Wiring ===

impl Wiring<'_> {
    /// Sidecar `k` (see [`PortLayout`]) in front of the app on `app_port`.
    fn sidecar(
        &self,
        k: u8,
        service: &str,
        app_port: u16,
        app_protocol: &str,
        instance_id: &str,
        extra: &[&str],
    ) -> ProcessSpec {
        let listeners = self.ports.sidecar(k);
        let inbound = address(listeners.inbound);
        let mut sidecar_args = args([
            "--service",
            service,
            "--app",
            &address(app_port),
            "--app-protocol",
            app_protocol,
            "--registry",
            self.registry_url,
            "--inbound",
            &inbound,
            // Peers dial the address the sidecar registers: here the same loopback address.
            "--advertise",
            &inbound,
            "--outbound",
            &address(listeners.outbound),
            "--admin",
            &address(listeners.admin),
            "--instance-id",
            instance_id,
        ]);
        if let Some(tls) = self.tls {
            sidecar_args.extend(args(["--tls", &tls.mode, "--join-token", &tls.join_token]));
        }
        sidecar_args.extend(extra.iter().map(OsString::from));
        ProcessSpec {
            name: sidecar_name(k),
            role: Role::Sidecar,
            program: self.binaries.proxy.clone(),
            args: sidecar_args,
            env: Vec::new(),
            ready_url: Some(url(listeners.admin, "/ready")),
        }
    }
}

/// With `--tls` on: a CA for this run (in a fresh private temporary directory, made by
/// `mesh-registry gen-ca`) and a random join token.
pub fn tls_plan(config: &UpConfig, binaries: &Binaries) -> Result<Option<TlsPlan>, crate::Error> {
    if config.tls == "off" {
        return Ok(None);
    }
    // 0700: the key file in it is 0600 too, but nobody else should even see it for the
    // moment it exists.
    let dir = tempfile::Builder::new()
        .prefix("mesh-demo-ca-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| crate::Error::Ca(format!("cannot create a temporary directory: {e}")))?;
    let output = std::process::Command::new(&binaries.registry)
        .args(["gen-ca", "--force", "--out"])
        .arg(dir.path())
        .output()
        .map_err(|e| {
            crate::Error::Ca(format!("cannot run {}: {e}", binaries.registry.display()))
        })?;
    if !output.status.success() {
        let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(crate::Error::Ca(why));
    }
    let token: u128 = rand::random();
    Ok(Some(TlsPlan {
        mode: config.tls.clone(),
        dir,
        join_token: format!("{token:032x}"),
    }))
}

fn address(port: u16) -> String {
    format!("{HOST}:{port}")
}

fn url(port: u16, path: &str) -> Uri {
    format!("http://{HOST}:{port}{path}")
        .parse()
        .expect("an IP address, a port and a path make a URI")
}

fn args<const N: usize>(parts: [&str; N]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: UpConfig,
    }

    fn plan(flags: &[&str]) -> Plan {
        let mut argv = vec!["mesh-demo"];
        argv.extend(flags);
        let config = Cli::try_parse_from(argv).unwrap().config;
        let binaries = Binaries {
            registry: "/bin/mesh-registry".into(),
            proxy: "/bin/mesh-proxy".into(),
            recommendations: "/bin/recommendations".into(),
            marketplace: "/bin/marketplace".into(),
        };
        Plan::new(&config, &binaries, None)
    }

    fn joined(spec: &ProcessSpec) -> String {
        spec.args
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn default_plan() {
        let plan = plan(&[]);
        assert_eq!(joined(&plan.registry), "--listen 127.0.0.1:7700");
        assert_eq!(
            plan.registry.ready_url.clone().unwrap(),
            "http://127.0.0.1:7700/readyz"
        );
        let names: Vec<_> = plan
            .pairs
            .iter()
            .flat_map(|p| [p.sidecar.name.as_str(), p.app.name.as_str()])
            .collect();
        assert_eq!(
            names,
            [
                "sidecar/recommendations-1",
                "recommendations-1",
                "sidecar/recommendations-2",
                "recommendations-2",
                "sidecar/recommendations-3",
                "recommendations-3",
                "sidecar/marketplace",
                "marketplace"
            ]
        );

        let second = &plan.pairs[1];
        assert_eq!(
            joined(&second.app),
            "--listen 127.0.0.1:50053 --instance-name recommendations-2 --fail-rate 0"
        );
        assert_eq!(
            joined(&second.sidecar),
            "--service recommendations --app 127.0.0.1:50053 --app-protocol grpc \
             --registry http://127.0.0.1:7700 --inbound 127.0.0.1:4160 \
             --advertise 127.0.0.1:4160 --outbound 127.0.0.1:4161 --admin 127.0.0.1:4162 \
             --instance-id recommendations-2"
        );
        assert_eq!(
            second.sidecar.ready_url.clone().unwrap(),
            "http://127.0.0.1:4162/ready"
        );
        assert_eq!(second.app.ready_url, None);
        assert_eq!(second.metrics_url, "http://127.0.0.1:4162/metrics");

        let marketplace = plan.marketplace_pair();
        assert_eq!(
            joined(&marketplace.sidecar),
            "--service marketplace --app 127.0.0.1:5000 --app-protocol http \
             --registry http://127.0.0.1:7700 --inbound 127.0.0.1:4140 \
             --advertise 127.0.0.1:4140 --outbound 127.0.0.1:4141 --admin 127.0.0.1:4142 \
             --instance-id marketplace-1 --upstream recommendations=127.0.0.1:50051"
        );
        assert_eq!(joined(&marketplace.app), "--listen 127.0.0.1:5000");
        assert_eq!(
            marketplace.app.env,
            [
                ("RECOMMENDATIONS_HOST".to_owned(), "localhost".to_owned()),
                ("RECOMMENDATIONS_PORT".to_owned(), "50051".to_owned())
            ]
        );
        assert_eq!(
            marketplace.app.ready_url.clone().unwrap(),
            "http://127.0.0.1:5000/healthz"
        );
        assert_eq!(plan.page_url, "http://127.0.0.1:5000/");
        assert_eq!(plan.services_url, "http://127.0.0.1:7700/v1/services");
    }

    /// A stand-in for `mesh-registry gen-ca --force --out DIR` that writes both files.
    fn fake_gen_ca(dir: &std::path::Path) -> Binaries {
        use std::os::unix::fs::PermissionsExt;
        let registry = dir.join("mesh-registry");
        std::fs::write(
            &registry,
            "#!/bin/sh\nmkdir -p \"$4\"\necho cert > \"$4/ca.pem\"\necho key > \"$4/ca-key.pem\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o755)).unwrap();
        Binaries {
            registry,
            proxy: "/bin/mesh-proxy".into(),
            recommendations: "/bin/recommendations".into(),
            marketplace: "/bin/marketplace".into(),
        }
    }

    #[test]
    fn the_ca_key_lives_in_a_private_directory_gone_with_the_plan() {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().unwrap();
        let binaries = fake_gen_ca(bin.path());
        let config = Cli::try_parse_from(["mesh-demo"]).unwrap().config;
        let tls = tls_plan(&config, &binaries)
            .unwrap()
            .expect("mTLS is the default");
        let dir = tls.dir().to_owned();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        assert!(dir.join("ca-key.pem").is_file());

        // The registry reads the key once, at start; after that it can go.
        tls.remove_key().unwrap();
        assert!(!dir.join("ca-key.pem").exists());
        assert!(dir.join("ca.pem").is_file());
        drop(tls);
        assert!(!dir.exists(), "{} outlived the run", dir.display());
    }

    #[test]
    fn flags_move_every_port() {
        let plan = plan(&[
            "--registry-port",
            "17700",
            "--marketplace-port",
            "15000",
            "--recommendations-port",
            "20000",
            "--app-port",
            "20001",
            "--base-port",
            "30000",
            "--instances",
            "2",
            "--fail-rate",
            "0.25",
        ]);
        assert_eq!(plan.pairs.len(), 3);
        assert_eq!(plan.registry_url, "http://127.0.0.1:17700");
        let second = &plan.pairs[1];
        assert!(joined(&second.app).starts_with("--listen 127.0.0.1:20002 "));
        assert!(joined(&second.app).ends_with("--fail-rate 0.25"));
        assert!(joined(&second.sidecar).contains("--inbound 127.0.0.1:30020 "));
        let marketplace = plan.marketplace_pair();
        assert!(joined(&marketplace.sidecar).contains("--admin 127.0.0.1:30002 "));
        assert!(joined(&marketplace.sidecar).ends_with("recommendations=127.0.0.1:20000"));
        assert_eq!(marketplace.app.env[1].1, "20000");
    }
}
