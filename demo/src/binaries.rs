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

/// Runs `command` (from [`build_command`]) with cargo's output going straight to the
/// terminal, so its progress shows.
pub async fn build(command: &[OsString]) -> Result<(), Error> {
    let shown = command
        .iter()
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!("building the mesh's programs (--bin-dir skips this): {shown}");
    let (program, args) = command.split_first().expect("a command has a program");
    let status = tokio::process::Command::new(program)
        .args(args)
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
