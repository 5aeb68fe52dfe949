//! What every group of flags shares: the error naming a flag whose value cannot be used,
//! and the defaults of a group, taken from its own flag declarations so they are written
//! once.

use clap::{Args, FromArgMatches};

/// A flag whose value cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct Invalid {
    /// The flag to change, as the user typed it (`--weight`).
    pub flag: &'static str,
    pub problem: String,
}

/// A group of flags at its defaults: what a command line without them gives, environment
/// variables left out.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every flag has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults are valid values")
}

// === impl Invalid ===

impl Invalid {
    pub fn new(flag: &'static str, problem: impl Into<String>) -> Self {
        Invalid {
            flag,
            problem: problem.into(),
        }
    }
}
