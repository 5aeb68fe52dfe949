//! `meshctl check`: the mesh's health in the style of `linkerd check`, one line per
//! check: `✔` ok, `‼` warning (worth a look, exit status unchanged), `✗` failure (exit
//! status 1). Every line that is not ok is followed by a hint saying what to do.
//!
//! [`registry`] checks the registry (ready, clock, CA); [`sidecars`] checks every
//! registered sidecar (ready, certificate) and that releases agree. When the registry
//! cannot be reached, nothing else can be, and the checks stop there.

mod registry;
mod sidecars;

use std::io::Write;

use serde::Serialize;

use crate::output::{self, Format};
use crate::{Ctl, Error, Outcome};

/// How a check came out.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Failure,
}

impl Status {
    pub fn symbol(self) -> char {
        match self {
            Status::Ok => '✔',
            Status::Warning => '‼',
            Status::Failure => '✗',
        }
    }
}

/// One check's result. JSON: `{"name", "status", "detail", "hint"}`, `hint` null when ok.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about it; always given when the check is not ok.
    pub hint: Option<String>,
}

// === impl Check ===

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, name.into(), detail.into(), None)
    }

    pub fn warning(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(
            Status::Warning,
            name.into(),
            detail.into(),
            Some(hint.into()),
        )
    }

    pub fn failure(
        name: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(
            Status::Failure,
            name.into(),
            detail.into(),
            Some(hint.into()),
        )
    }

    fn new(status: Status, name: String, detail: String, hint: Option<String>) -> Self {
        Check {
            name,
            status,
            detail,
            hint,
        }
    }
}

/// Runs every check, prints them, and fails if any failed.
pub async fn run(ctl: &Ctl, out: &mut dyn Write) -> Result<Outcome, Error> {
    let checks = checks(ctl).await;
    if ctl.format == Format::Json {
        output::json(out, &checks)?;
    } else {
        print(&checks, out)?;
    }
    let failed = checks.iter().any(|c| c.status == Status::Failure);
    Ok(if failed {
        Outcome::Failure
    } else {
        Outcome::Success
    })
}

/// Every check, in order: the registry's, then the sidecars'.
pub async fn checks(ctl: &Ctl) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(facts) = registry::check(ctl, &mut checks).await {
        sidecars::check(ctl, &facts, &mut checks).await;
    }
    checks
}

/// One line per check and one per hint: what a sidecar said is escaped whole, line
/// breaks too, so it cannot pass for a line of its own.
fn print(checks: &[Check], out: &mut dyn Write) -> std::io::Result<()> {
    for check in checks {
        let (name, detail) = (output::escape(&check.name), output::escape(&check.detail));
        writeln!(out, "{} {name}: {detail}", check.status.symbol())?;
        if let Some(hint) = &check.hint {
            writeln!(out, "    hint: {}", output::escape(hint))?;
        }
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    let (warnings, failures) = (count(Status::Warning), count(Status::Failure));
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    writeln!(
        out,
        "\n{} {}: {} ok, {}, {failures} failed",
        worst.symbol(),
        plural(checks.len(), "check"),
        count(Status::Ok),
        plural(warnings, "warning"),
    )
}
