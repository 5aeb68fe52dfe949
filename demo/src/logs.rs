//! Where the sidecars' access logs go: one file per sidecar, one JSON line per call, so a
//! person can follow the calls with `tail -f` while the banner's other windows show totals.
//!
//! `--log-dir` names a directory that outlives the run; without it the run makes a private
//! temporary one and removes it with everything in it when the demo stops, as it does its
//! credentials: nothing of a run is left behind unless asked for.

use std::path::{Path, PathBuf};

use crate::{Error, UpConfig};

/// The directory holding the run's access logs.
#[derive(Debug)]
pub enum LogDir {
    /// `--log-dir`: created if missing, kept after the run.
    Kept(PathBuf),
    /// Made for this run and removed when dropped, after every sidecar has stopped.
    Temporary(tempfile::TempDir),
}

// === impl LogDir ===

impl LogDir {
    /// `--log-dir`, created if missing, or a fresh temporary directory.
    pub fn create(config: &UpConfig) -> Result<LogDir, Error> {
        match &config.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::LogDir {
                    dir: dir.clone(),
                    source,
                })?;
                Ok(LogDir::Kept(dir.clone()))
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("mesh-demo-logs-")
                    .tempdir()
                    .map_err(|source| Error::LogDir {
                        dir: std::env::temp_dir(),
                        source,
                    })?;
                Ok(LogDir::Temporary(dir))
            }
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            LogDir::Kept(dir) => dir,
            LogDir::Temporary(dir) => dir.path(),
        }
    }

    /// Whether the directory stays once the demo has stopped.
    pub fn kept(&self) -> bool {
        matches!(self, LogDir::Kept(_))
    }
}

/// The access log of the sidecar named `sidecar` (`sidecar/recommendations-2`) in `dir`:
/// `sidecar-recommendations-2.access.log`.
pub fn access_log(dir: &Path, sidecar: &str) -> PathBuf {
    dir.join(format!("{}.access.log", sidecar.replace('/', "-")))
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

    #[test]
    fn a_sidecars_log_is_named_after_it() {
        assert_eq!(
            access_log(Path::new("/logs"), "sidecar/recommendations-2"),
            Path::new("/logs/sidecar-recommendations-2.access.log")
        );
    }

    #[test]
    fn a_temporary_directory_goes_with_the_run_a_named_one_stays() {
        let config = Cli::try_parse_from(["mesh-demo"]).unwrap().config;
        let logs = LogDir::create(&config).unwrap();
        assert!(!logs.kept());
        let dir = logs.path().to_owned();
        std::fs::write(access_log(&dir, "sidecar/marketplace"), "{}\n").unwrap();
        drop(logs);
        assert!(!dir.exists(), "{} outlived the run", dir.display());

        let parent = tempfile::tempdir().unwrap();
        let named = parent.path().join("a/b");
        let argv = ["mesh-demo", "--log-dir", named.to_str().unwrap()];
        let config = Cli::try_parse_from(argv).unwrap().config;
        let logs = LogDir::create(&config).unwrap();
        assert!(logs.kept());
        assert_eq!(logs.path(), named);
        drop(logs);
        assert!(named.is_dir());
    }
}
