//! The command line of every process of the demo, worked out before any starts.
//!
//! Each app gets its own sidecar, wired as in a pod: the app only knows `127.0.0.1`, the
//! sidecar registers the app under its inbound address and balances calls to peers. Every
//! sidecar writes an access log into the run's log directory and, with `--trace-collector`,
//! sends its spans there.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use http::Uri;

use crate::{
    UpConfig,
    binaries::Binaries,
    logs::{self, LogDir},
    ports::{HOST, PortLayout, sidecar_name},
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
    /// `/tap` of the sidecar: its calls as they complete.
    pub tap_url: Uri,
    /// The sidecar's access log.
    pub access_log: PathBuf,
}

/// What binds each sidecar's registry writes to its own service, made for this run:
/// with `--tls` on, the mesh's CA (sidecars get certificates with the join token and
/// write with them on the registry's TLS listener); with it off, one service token per
/// service. Nothing the demo runs has open writes.
#[derive(Debug)]
pub struct Secrets {
    /// A private (0700) temporary directory, removed with everything in it when the plan
    /// is dropped: `ca.pem` and `ca-key.pem` (made by `mesh-registry gen-ca`), or
    /// `tokens` (the registry's `--tokens` file). No secret outlives the run.
    dir: tempfile::TempDir,
    pub kind: SecretKind,
    /// The registry's operator token (`--token`, given in its environment), in the file
    /// `operator-token` for the operator's `meshctl` writes (traffic policy).
    operator_token: String,
}

/// The kind of credentials a run's sidecars write with.
#[derive(Debug)]
pub enum SecretKind {
    /// mTLS: `strict` or `permissive`, and the token sidecars join with.
    Ca { mode: String, join_token: String },
    /// The token of each service, as in the `tokens` file.
    Tokens(Vec<(String, String)>),
}

// === impl Secrets ===

impl Secrets {
    /// The directory of `ca.pem` and `ca-key.pem`, or of `tokens`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes the CA's private key, if there is one. The registry reads it once, at
    /// start, so once it serves the key can go: even a launcher killed with SIGKILL then
    /// leaves none behind.
    pub fn remove_key(&self) -> std::io::Result<()> {
        match self.kind {
            SecretKind::Ca { .. } => std::fs::remove_file(self.dir().join("ca-key.pem")),
            SecretKind::Tokens(_) => Ok(()),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir().join(name).display().to_string()
    }

    /// The registry's flags for these credentials.
    fn registry_args(&self, tls_port: Option<u16>) -> Vec<OsString> {
        match &self.kind {
            SecretKind::Ca { join_token, .. } => {
                let mut flags = args([
                    "--ca-cert",
                    &self.file("ca.pem"),
                    "--ca-key",
                    &self.file("ca-key.pem"),
                    "--join-token",
                    join_token,
                ]);
                if let Some(port) = tls_port {
                    flags.extend(args(["--tls-listen", &address(port)]));
                }
                flags
            }
            SecretKind::Tokens(_) => args(["--tokens", &self.file("tokens")]),
        }
    }

    /// A sidecar's flags for these credentials: where it writes and what it proves.
    fn sidecar_args(&self, service: &str, plain: &str, tls_port: Option<u16>) -> Vec<OsString> {
        match &self.kind {
            SecretKind::Ca { mode, join_token } => {
                let registry = match tls_port {
                    Some(port) => format!("https://{}", address(port)),
                    None => plain.to_owned(),
                };
                let mut flags = args(["--registry", &registry]);
                if tls_port.is_some() {
                    flags.extend(args(["--registry-ca", &self.file("ca.pem")]));
                }
                flags.extend(args(["--tls", mode, "--join-token", join_token]));
                flags
            }
            SecretKind::Tokens(tokens) => {
                let token = tokens
                    .iter()
                    .find(|(name, _)| name == service)
                    .map(|(_, token)| token.as_str())
                    .unwrap_or_default();
                args(["--registry", plain, "--registry-token", token])
            }
        }
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
    /// The file holding the registry's operator token, when the run made one.
    pub operator_token_file: Option<std::path::PathBuf>,
    /// Where the access logs are, and whether they stay after the run.
    pub log_dir: PathBuf,
    pub logs_kept: bool,
    /// The collector every sidecar sends spans to and the share of traces recorded.
    pub tracing: Option<(String, f64)>,
}

// === impl Plan ===

impl Plan {
    /// The plan; `secrets` are what sidecars write to the registry with (without them,
    /// for tests of the plan only, writes would be open); `logs` is where their access
    /// logs go.
    pub fn new(
        config: &UpConfig,
        binaries: &Binaries,
        secrets: Option<&Secrets>,
        logs: &LogDir,
    ) -> Self {
        let ports = config.ports();
        let registry_url = format!("http://{HOST}:{}", ports.registry);
        let mut registry_args = args(["--listen", &address(ports.registry)]);
        if let Some(secrets) = secrets {
            registry_args.extend(secrets.registry_args(ports.registry_tls));
        }
        let mtls = secrets.is_some_and(|s| matches!(s.kind, SecretKind::Ca { .. }));
        let registry = ProcessSpec {
            name: "registry".to_owned(),
            role: Role::Registry,
            program: binaries.registry.clone(),
            args: registry_args,
            // In its environment, not its arguments, which every local user can read.
            env: secrets
                .map(|s| vec![("REGISTRY_TOKEN".to_owned(), s.operator_token.clone())])
                .unwrap_or_default(),
            ready_url: Some(url(ports.registry, "/readyz")),
        };
        let mut observe = Vec::new();
        if let Some((collector, ratio)) = config.tracing() {
            observe = args([
                "--trace-collector",
                collector,
                "--trace-sample-ratio",
                &ratio.to_string(),
            ]);
        }
        let wiring = Wiring {
            binaries,
            ports: &ports,
            registry_url: &registry_url,
            secrets,
            log_dir: logs.path(),
            observe: &observe,
        };

        let mut pairs = Vec::new();
        for n in 1..=config.instances {
            let name = format!("recommendations-{n}");
            let v2 = config.is_v2(n);
            let app_port = ports.recommendations_app(n);
            let mut app = ProcessSpec {
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
            if v2 {
                app.args.extend(args(["--latency", &config.v2_latency]));
            }
            // Its version, for routes that split calls between versions.
            let version = if v2 { "version=v2" } else { "version=v1" };
            let mut extra = vec!["--metadata", version];
            // With mTLS, recommendations answers the marketplace only.
            if mtls {
                extra.extend(["--allow", "marketplace"]);
            }
            let sidecar = wiring.sidecar(n, "recommendations", app_port, "grpc", &name, &extra);
            pairs.push(wiring.pair(n, sidecar, app));
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
        let sidecar = wiring.sidecar(
            0,
            "marketplace",
            ports.marketplace,
            "http",
            "marketplace-1",
            &["--upstream", &upstream],
        );
        pairs.push(wiring.pair(0, sidecar, marketplace));

        Plan {
            registry,
            pairs,
            page_url: url(ports.marketplace, "/"),
            services_url: url(ports.registry, "/v1/services"),
            dashboard_url: url(ports.registry, "/ui/"),
            registry_url,
            ports,
            operator_token_file: secrets.map(|s| s.dir().join(OPERATOR_TOKEN_FILE)),
            log_dir: logs.path().to_owned(),
            logs_kept: logs.kept(),
            tracing: config
                .tracing()
                .map(|(collector, ratio)| (collector.to_owned(), ratio)),
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

/// What every sidecar shares: the program, the port layout, the registry, where access
/// logs go and the tracing flags.
struct Wiring<'a> {
    binaries: &'a Binaries,
    ports: &'a PortLayout,
    registry_url: &'a str,
    secrets: Option<&'a Secrets>,
    log_dir: &'a Path,
    observe: &'a [OsString],
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
        ]);
        match self.secrets {
            Some(secrets) => sidecar_args.extend(secrets.sidecar_args(
                service,
                self.registry_url,
                self.ports.registry_tls,
            )),
            None => sidecar_args.extend(args(["--registry", self.registry_url])),
        }
        sidecar_args.extend(args([
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
        ]));
        let access_log = logs::access_log(self.log_dir, &sidecar_name(k));
        sidecar_args.extend(["--access-log".into(), access_log.into_os_string()]);
        sidecar_args.extend(self.observe.iter().cloned());
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

    /// Sidecar `k` and its app, with the sidecar's admin pages and access log.
    fn pair(&self, k: u8, sidecar: ProcessSpec, app: ProcessSpec) -> Pair {
        let admin = self.ports.sidecar(k).admin;
        Pair {
            access_log: logs::access_log(self.log_dir, &sidecar.name),
            sidecar,
            app,
            metrics_url: url(admin, "/metrics"),
            tap_url: url(admin, "/tap"),
        }
    }
}

/// The run's [`Secrets`], in a fresh private temporary directory: with `--tls` on, a CA
/// (made by `mesh-registry gen-ca`) and a random join token; with it off, a random token
/// for each service, in the registry's `--tokens` file.
pub fn secrets(config: &UpConfig, binaries: &Binaries) -> Result<Secrets, crate::Error> {
    // 0700: the files in it are private too, but nobody else should even see them for
    // the moment they exist.
    let dir = tempfile::Builder::new()
        .prefix("mesh-demo-secrets-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| crate::Error::Ca(format!("cannot create a temporary directory: {e}")))?;
    if config.tls == "off" {
        let tokens: Vec<(String, String)> = ["recommendations", "marketplace"]
            .iter()
            .map(|service| (service.to_string(), random_token()))
            .collect();
        let file: String = tokens
            .iter()
            .map(|(service, token)| format!("{service} {token}\n"))
            .collect();
        write_private(&dir.path().join("tokens"), &file)
            .map_err(|e| crate::Error::Ca(format!("cannot write the tokens file: {e}")))?;
        let operator_token = operator_token(dir.path())?;
        return Ok(Secrets {
            dir,
            kind: SecretKind::Tokens(tokens),
            operator_token,
        });
    }
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
    let operator_token = operator_token(dir.path())?;
    Ok(Secrets {
        dir,
        kind: SecretKind::Ca {
            mode: config.tls.clone(),
            join_token: random_token(),
        },
        operator_token,
    })
}

/// A random operator token, written to `dir/operator-token`.
fn operator_token(dir: &Path) -> Result<String, crate::Error> {
    let token = random_token();
    write_private(&dir.join(OPERATOR_TOKEN_FILE), &token)
        .map_err(|e| crate::Error::Ca(format!("cannot write the operator token: {e}")))?;
    Ok(token)
}

/// Where the run's operator token is, in the secrets' directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";

fn random_token() -> String {
    let token: u128 = rand::random();
    format!("{token:032x}")
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
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
        Plan::new(&config, &binaries, None, &logs())
    }

    /// A log directory that is only named, never created.
    fn logs() -> LogDir {
        LogDir::Kept("/logs".into())
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
            "--listen 127.0.0.1:5053 --instance-name recommendations-2 --fail-rate 0"
        );
        assert_eq!(
            joined(&second.sidecar),
            "--service recommendations --app 127.0.0.1:5053 --app-protocol grpc \
             --registry http://127.0.0.1:7700 --inbound 127.0.0.1:4160 \
             --advertise 127.0.0.1:4160 --outbound 127.0.0.1:4161 --admin 127.0.0.1:4162 \
             --instance-id recommendations-2 \
             --access-log /logs/sidecar-recommendations-2.access.log --metadata version=v1"
        );
        assert_eq!(
            second.sidecar.ready_url.clone().unwrap(),
            "http://127.0.0.1:4162/ready"
        );
        assert_eq!(second.app.ready_url, None);
        assert_eq!(second.metrics_url, "http://127.0.0.1:4162/metrics");
        assert_eq!(second.tap_url, "http://127.0.0.1:4162/tap");
        assert_eq!(
            second.access_log,
            Path::new("/logs/sidecar-recommendations-2.access.log")
        );

        let marketplace = plan.marketplace_pair();
        assert_eq!(
            joined(&marketplace.sidecar),
            "--service marketplace --app 127.0.0.1:5000 --app-protocol http \
             --registry http://127.0.0.1:7700 --inbound 127.0.0.1:4140 \
             --advertise 127.0.0.1:4140 --outbound 127.0.0.1:4141 --admin 127.0.0.1:4142 \
             --instance-id marketplace-1 --access-log /logs/sidecar-marketplace.access.log \
             --upstream recommendations=127.0.0.1:5051"
        );
        assert_eq!(joined(&marketplace.app), "--listen 127.0.0.1:5000");
        assert_eq!(
            marketplace.app.env,
            [
                ("RECOMMENDATIONS_HOST".to_owned(), "localhost".to_owned()),
                ("RECOMMENDATIONS_PORT".to_owned(), "5051".to_owned())
            ]
        );
        assert_eq!(
            marketplace.app.ready_url.clone().unwrap(),
            "http://127.0.0.1:5000/healthz"
        );
        assert_eq!(plan.page_url, "http://127.0.0.1:5000/");
        assert_eq!(plan.services_url, "http://127.0.0.1:7700/v1/services");
        assert_eq!(plan.log_dir, Path::new("/logs"));
        assert_eq!(plan.tracing, None);
    }

    #[test]
    fn every_sidecar_sends_its_spans_to_the_collector() {
        let collector = "http://127.0.0.1:4318/v1/traces";
        let plan = plan(&["--trace-collector", collector]);
        assert_eq!(plan.tracing, Some((collector.to_owned(), 1.0)));
        let tracing = format!(
            " --access-log /logs/{{}}.access.log --trace-collector {collector} \
             --trace-sample-ratio 1 --"
        );
        for pair in &plan.pairs {
            let sidecar = joined(&pair.sidecar);
            let file = pair.sidecar.name.replace('/', "-");
            assert!(sidecar.contains(&tracing.replace("{}", &file)), "{sidecar}");
        }
        let plan = self::plan(&[
            "--trace-collector",
            collector,
            "--trace-sample-ratio",
            "0.25",
        ]);
        assert!(joined(&plan.pairs[0].sidecar).contains(" --trace-sample-ratio 0.25 "));
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
        let tls = secrets(&config, &binaries).unwrap();
        assert!(
            matches!(tls.kind, SecretKind::Ca { .. }),
            "mTLS is the default"
        );
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

    /// Nothing the demo runs has open registry writes: with mTLS each sidecar writes
    /// with its certificate on the TLS listener, without it with its own service's token.
    #[test]
    fn every_sidecar_writes_with_credentials_of_its_own_service() {
        let bin = tempfile::tempdir().unwrap();
        let binaries = fake_gen_ca(bin.path());
        let config = Cli::try_parse_from(["mesh-demo"]).unwrap().config;
        let ca = secrets(&config, &binaries).unwrap();
        let plan = Plan::new(&config, &binaries, Some(&ca), &logs());
        let registry = joined(&plan.registry);
        assert!(
            registry.contains("--tls-listen 127.0.0.1:7743"),
            "{registry}"
        );
        // The operator's token: in the registry's environment and a private file, never
        // on a command line.
        let file = plan.operator_token_file.clone().unwrap();
        let token = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            plan.registry.env,
            [("REGISTRY_TOKEN".to_owned(), token.clone())]
        );
        assert!(!registry.contains(&token));
        let mode = std::os::unix::fs::PermissionsExt::mode(&file.metadata().unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        for pair in &plan.pairs {
            let sidecar = joined(&pair.sidecar);
            assert!(
                sidecar.contains("--registry https://127.0.0.1:7743 --registry-ca "),
                "{sidecar}"
            );
            assert!(sidecar.contains(" --tls strict --join-token "), "{sidecar}");
        }

        let config = Cli::try_parse_from(["mesh-demo", "--tls", "off"])
            .unwrap()
            .config;
        let tokens = secrets(&config, &binaries).unwrap();
        let SecretKind::Tokens(by_service) = &tokens.kind else {
            panic!("{:?}", tokens.kind)
        };
        let file = std::fs::read_to_string(tokens.dir().join("tokens")).unwrap();
        let plan = Plan::new(&config, &binaries, Some(&tokens), &logs());
        assert!(joined(&plan.registry).contains("--tokens "));
        assert!(!joined(&plan.registry).contains("--tls-listen"));
        for pair in &plan.pairs {
            let sidecar = joined(&pair.sidecar);
            let service = sidecar.split(' ').nth(1).unwrap();
            let (_, token) = by_service.iter().find(|(s, _)| s == service).unwrap();
            assert!(file.contains(&format!("{service} {token}\n")), "{file}");
            assert!(
                sidecar.contains(&format!(
                    "--registry http://127.0.0.1:7700 --registry-token {token}"
                )),
                "{sidecar}"
            );
        }
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

    #[test]
    fn the_last_instances_run_as_version_2_with_their_latency() {
        let plan = plan(&["--instances", "3", "--v2", "1", "--v2-latency", "200ms"]);
        let versions: Vec<(bool, bool)> = plan.pairs[..3]
            .iter()
            .map(|p| {
                let sidecar = joined(&p.sidecar);
                (
                    sidecar.contains("--metadata version=v2"),
                    joined(&p.app).ends_with("--latency 200ms"),
                )
            })
            .collect();
        assert_eq!(versions, [(false, false), (false, false), (true, true)]);
        let argv = ["mesh-demo", "--instances", "2", "--v2", "3"];
        let config = Cli::try_parse_from(argv).unwrap().config;
        assert!(config.check().unwrap_err().contains("--v2 3"));
    }
}
