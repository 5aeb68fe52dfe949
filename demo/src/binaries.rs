//! The four programs the demo runs: built by cargo when the launcher itself was started by
//! `cargo run`, then found next to the launcher's executable (or in `--bin-dir`).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use crate::Error;

/// Packages to build, each making a binary of the same name.
pub const PACKAGES: [&str; 4] = [
    "mesh-registry",
    "mesh-proxy",
    "recommendations",
    "marketplace",
];

/// Built with them, though the demo does not run it: the operators' CLI, which the
/// launcher suggests once the mesh is up.
const TOOLS: [&str; 1] = ["meshctl"];

/// This package, built with them: the same packages selected as by `cargo run -p
/// mesh-demo` (which depends on them all), so cargo resolves the same features and finds
/// every dependency already built.
const LAUNCHER: &str = "mesh-demo";

/// Where each program is.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub registry: PathBuf,
    pub proxy: PathBuf,
    pub recommendations: PathBuf,
    pub marketplace: PathBuf,
}

// === impl Binaries ===

impl Binaries {
    /// The four programs in `dir`, or an error listing those missing.
    pub fn locate(dir: &Path) -> Result<Self, Error> {
        let path = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        let missing: Vec<String> = PACKAGES
            .iter()
            .filter(|name| !path(name).is_file())
            .map(|name| (*name).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingBinaries {
                dir: dir.to_owned(),
                missing,
            });
        }
        Ok(Self {
            registry: path("mesh-registry"),
            proxy: path("mesh-proxy"),
            recommendations: path("recommendations"),
            marketplace: path("marketplace"),
        })
    }
}

/// The directory of the running executable: `target/<profile>` under cargo.
pub fn own_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(Error::OwnLocation)?;
    exe.parent()
        .map(Path::to_owned)
        .ok_or_else(|| Error::OwnLocation(std::io::Error::other("the executable has no directory")))
}

/// The cargo command that builds the four programs into `exe_dir`, the launcher's own
/// directory `<target-dir>/<profile-dir>`: same target directory and profile, so they land
/// next to it. `manifest` makes it work from any working directory.
pub fn build_command(cargo: OsString, exe_dir: &Path, manifest: Option<&Path>) -> Vec<OsString> {
    let mut command = vec![cargo, "build".into()];
    // cargo names the dev profile's directory `debug`; other profiles keep their name.
    match exe_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => command.push("--release".into()),
        Some(profile) => command.extend(["--profile".into(), profile.into()]),
        None => {}
    }
    if let Some(target_dir) = exe_dir.parent() {
        command.extend(["--target-dir".into(), target_dir.into()]);
    }
    if let Some(manifest) = manifest {
        command.extend(["--manifest-path".into(), manifest.into()]);
    }
    for package in std::iter::once(LAUNCHER).chain(PACKAGES).chain(TOOLS) {
        command.extend(["-p".into(), package.into()]);
    }
    command
}

/// Whether `name` is one of the variables cargo sets for the program it runs (the
/// "environment variables Cargo sets for crates": `CARGO`, `CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_*`, …), as opposed to one the user set.
///
/// They must not reach the inner `cargo build`: cargo compares the variables build scripts
/// watch with its own environment, and ring's build script watches `CARGO_MANIFEST_DIR`.
/// Seeing the launcher's value there, cargo would rerun it and rebuild ring and everything
/// above it, the launcher included (replacing the very executable that is running), then
/// rebuild them all again at the next `cargo run`, which does not set it.
pub fn set_by_cargo_run(name: &str) -> bool {
    const EXACT: [&str; 7] = [
        "CARGO",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Runs `command` (from [`build_command`]) with cargo's output going straight to the
/// terminal, so its progress shows, in the environment the user started `cargo run` with
/// (see [`set_by_cargo_run`]).
pub async fn build(command: &[OsString]) -> Result<(), Error> {
    let shown = command
        .iter()
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!("building the mesh's programs (--bin-dir skips this): {shown}");
    let (program, args) = command.split_first().expect("a command has a program");
    let mut cargo = tokio::process::Command::new(program);
    cargo.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cargo.env_remove(name);
        }
    }
    let status = cargo
        // Ctrl-C during the build must not leave cargo running on its own.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|source| Error::BuildSpawn {
            command: shown.clone(),
            source,
        })?;
    if !status.success() {
        return Err(Error::Build {
            command: shown,
            status: status.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &[OsString]) -> Vec<&str> {
        command.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn builds_with_the_launchers_profile_and_target_dir() {
        let release = build_command("cargo".into(), Path::new("/w/target/release"), None);
        assert_eq!(
            args(&release),
            [
                "cargo",
                "build",
                "--release",
                "--target-dir",
                "/w/target",
                "-p",
                "mesh-demo",
                "-p",
                "mesh-registry",
                "-p",
                "mesh-proxy",
                "-p",
                "recommendations",
                "-p",
                "marketplace",
                "-p",
                "meshctl"
            ]
        );
        let debug = build_command("cargo".into(), Path::new("/w/target/debug"), None);
        assert_eq!(
            args(&debug)[..4],
            ["cargo", "build", "--target-dir", "/w/target"]
        );
        let custom = build_command(
            "cargo".into(),
            Path::new("/w/target/profiling"),
            Some(Path::new("/w/demo/Cargo.toml")),
        );
        let custom = args(&custom);
        assert_eq!(custom[2..4], ["--profile", "profiling"]);
        assert_eq!(custom[6..8], ["--manifest-path", "/w/demo/Cargo.toml"]);
    }

    #[test]
    fn what_cargo_run_sets_is_told_from_what_the_user_set() {
        // What `cargo run` added to a program's environment, as seen on cargo 1.95.
        for name in [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_PKG_RUST_VERSION",
            "CARGO_CRATE_NAME",
        ] {
            assert!(set_by_cargo_run(name), "{name} is kept");
        }
        // What the user may set to steer the build: it must reach the inner cargo.
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_BUILD_JOBS",
            "CARGO_PROFILE_RELEASE_LTO",
            "CARGO_TERM_COLOR",
            "RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(name), "{name} is removed");
        }
    }

    #[test]
    fn missing_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh-registry"), "").unwrap();
        std::fs::write(dir.path().join("marketplace"), "").unwrap();
        let error = Binaries::locate(dir.path()).unwrap_err().to_string();
        assert!(error.contains("mesh-proxy, recommendations"), "{error}");
        assert!(error.contains("--bin-dir"), "{error}");
        std::fs::write(dir.path().join("mesh-proxy"), "").unwrap();
        std::fs::write(dir.path().join("recommendations"), "").unwrap();
        let found = Binaries::locate(dir.path()).unwrap();
        assert_eq!(found.proxy, dir.path().join("mesh-proxy"));
    }
}
