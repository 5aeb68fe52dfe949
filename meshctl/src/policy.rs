//! `meshctl policy`: the traffic policy documents of services (docs/traffic.md), written
//! from files and read back through the registry.
//!
//! A policy file is a stream of YAML documents (JSON is YAML too), one per service, shaped
//! like the registry's `GET /v1/policy/{service}` answer, so what `meshctl policy get -o
//! json` prints can be applied again:
//!
//! ```yaml
//! service: recommendations
//! routes:
//!   rules:
//!     - backends: [{subset: version=v1, weight: 90}, {subset: version=v2, weight: 10}]
//! ---
//! service: marketplace
//! intentions: null      # null deletes the document; an absent kind is left alone
//! ```
//!
//! Every document is checked before anything is written (the registry's own rules, from
//! `mesh_registry_api::policy`), so a file with one mistake changes nothing.

use std::io::{Read, Write};

use mesh_registry_api::policy::{
    Action, Document, Match, Mode, PathMatch, PolicyKind, PolicyListing, Routes,
};
use serde::Deserialize;
use serde_json::Value;

use crate::output::{self, Format, Table};
use crate::{Ctl, Error};

/// One change a file asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub service: String,
    pub kind: PolicyKind,
    /// `None`: delete the document.
    pub document: Option<Document>,
}

/// What `apply` did (or, with `--diff`, would do) to one document.
#[derive(Debug, serde::Serialize)]
struct Applied {
    service: String,
    kind: &'static str,
    /// `configured`, `unchanged` or `deleted`.
    action: &'static str,
    /// The service's policy index after it (absent for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
}

/// Reads a policy file's documents as changes, all checked. `name` is how errors name
/// the file.
pub fn parse(name: &str, text: &str) -> Result<Vec<Change>, Error> {
    let wrong = |n: usize, reason: String| Error::PolicyFile {
        file: name.to_owned(),
        reason: format!("document {n}: {reason}"),
    };
    let mut changes = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = Value::deserialize(document).map_err(|e| wrong(n, e.to_string()))?;
        let Value::Object(fields) = value else {
            // An empty document (a trailing `---`) is no change.
            if value.is_null() {
                continue;
            }
            return Err(wrong(n, "must be a mapping with `service`".into()));
        };
        let service = fields
            .get("service")
            .and_then(Value::as_str)
            .ok_or_else(|| wrong(n, "`service` (the service's name) is missing".into()))?;
        mesh_registry_api::validate::service_name(service)
            .map_err(|m| wrong(n, format!("service {service:?}: {m}")))?;
        for key in fields.keys() {
            let known = key == "service" || key == "index" || key.parse::<PolicyKind>().is_ok();
            if !known {
                return Err(wrong(
                    n,
                    format!("unknown key {key:?}: expected service, routes, intentions or limits"),
                ));
            }
        }
        for kind in PolicyKind::ALL {
            let document = match fields.get(kind.as_str()) {
                None => continue,
                Some(Value::Null) => None,
                Some(value) => Some(Document::from_value(kind, value.clone()).map_err(|e| {
                    let at = if e.field.is_empty() {
                        String::new()
                    } else {
                        format!(".{}", e.field)
                    };
                    wrong(n, format!("service {service}, {kind}{at}: {}", e.message))
                })?),
            };
            changes.push(Change {
                service: service.to_owned(),
                kind,
                document,
            });
        }
    }
    if changes.is_empty() {
        return Err(Error::PolicyFile {
            file: name.to_owned(),
            reason: "holds no policy document (routes, intentions or limits)".into(),
        });
    }
    Ok(changes)
}

/// Reads `file` (`-`: standard input).
pub fn read(file: &str) -> Result<String, Error> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    read.map_err(|e| Error::PolicyFile {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(text)
}

/// `meshctl policy apply -f FILE`: writes each document that differs from the one the
/// registry holds (a document equal to it is not written, so followers are not woken
/// for nothing). With `diff`, writes nothing and prints what would change.
pub async fn apply(ctl: &Ctl, file: &str, diff: bool, out: &mut dyn Write) -> Result<(), Error> {
    let changes = parse(file, &read(file)?)?;
    let mut report = Vec::new();
    for change in changes {
        let held = ctl.registry.policy(&change.service).await?;
        let before = held
            .decode(change.kind)
            .ok()
            .flatten()
            .map(|d| d.to_value());
        let after = change.document.as_ref().map(Document::to_value);
        let action = match (&before, &after) {
            (b, a) if b == a => "unchanged",
            (_, None) => "deleted",
            _ => "configured",
        };
        if diff && action != "unchanged" && ctl.format != Format::Json {
            writeln!(out, "--- {} {} (registry)", change.service, change.kind)?;
            writeln!(out, "+++ {} {} ({file})", change.service, change.kind)?;
            for line in line_diff(&pretty(before.as_ref()), &pretty(after.as_ref())) {
                writeln!(out, "{line}")?;
            }
        }
        let index = match (diff, action, change.document) {
            (true, ..) | (false, "unchanged", _) => None,
            (false, _, Some(document)) => {
                ctl.registry.put_policy(&change.service, &document).await?;
                Some(ctl.registry.policy(&change.service).await?.index)
            }
            (false, _, None) => {
                ctl.registry
                    .delete_policy(&change.service, change.kind)
                    .await?;
                Some(ctl.registry.policy(&change.service).await?.index)
            }
        };
        report.push(Applied {
            service: change.service,
            kind: change.kind.as_str(),
            action,
            index,
        });
    }
    if ctl.format == Format::Json {
        return Ok(output::json(out, &report)?);
    }
    for applied in report {
        let verb = match (diff, applied.action) {
            (true, "configured") => "would be configured",
            (true, "deleted") => "would be deleted",
            (_, action) => action,
        };
        writeln!(out, "{} {}: {verb}", applied.service, applied.kind)?;
    }
    Ok(())
}

/// `meshctl policy delete SERVICE KIND`.
pub async fn delete(
    ctl: &Ctl,
    service: &str,
    kind: PolicyKind,
    out: &mut dyn Write,
) -> Result<(), Error> {
    ctl.registry.delete_policy(service, kind).await?;
    if ctl.format == Format::Json {
        let answer =
            serde_json::json!({"service": service, "kind": kind.as_str(), "deleted": true});
        return Ok(output::json(out, &answer)?);
    }
    writeln!(out, "{service} {kind}: deleted")?;
    Ok(())
}

/// `meshctl policy get SERVICE`: every document, as tables. JSON: the registry's answer
/// as it is (which `apply` takes back).
pub async fn get(ctl: &Ctl, service: &str, out: &mut dyn Write) -> Result<(), Error> {
    let listing = ctl.registry.policy(service).await?;
    if ctl.format == Format::Json {
        return Ok(output::json(out, &listing)?);
    }
    print_policy(&listing, out)?;
    Ok(())
}

/// A service's policy as an operator reads it: one table per kind.
pub fn print_policy(listing: &PolicyListing, out: &mut dyn Write) -> std::io::Result<()> {
    let service = &listing.service;
    let mut any = false;
    for kind in PolicyKind::ALL {
        let document = match listing.decode(kind) {
            Ok(Some(document)) => document,
            Ok(None) => continue,
            Err(e) => {
                writeln!(
                    out,
                    "{kind}: not readable by this meshctl ({}: {})",
                    e.field, e.message
                )?;
                continue;
            }
        };
        any = true;
        match document {
            Document::Routes(routes) => print_routes(service, &routes, out)?,
            Document::Intentions(intentions) => {
                let default = action(intentions.default);
                writeln!(out, "intentions of {service} (default {default})")?;
                let mut table = Table::new(&["RULE", "FROM", "ACTION", "MODE", "ONLY"]);
                for rule in &intentions.rules {
                    let mode = match rule.mode {
                        Mode::Enforce => "enforce",
                        Mode::Shadow => "shadow",
                    };
                    let only = [&rule.paths, &rule.methods, &rule.grpc]
                        .into_iter()
                        .flatten()
                        .flatten()
                        .cloned()
                        .collect::<Vec<_>>();
                    let only = if only.is_empty() {
                        "*".to_owned()
                    } else {
                        only.join(" ")
                    };
                    let cells = [&rule.name, &rule.from, action(rule.action), mode, &only];
                    table.row(cells.iter().map(|c| c.to_string()).collect());
                }
                if !table.is_empty() {
                    table.print(out)?;
                }
            }
            Document::Limits(limits) => {
                writeln!(out, "limits of {service}")?;
                let mut table = Table::new(&["BUCKET", "RPS", "BURST"]);
                if let Some(rps) = limits.rps {
                    let burst = limits.burst.map_or("-".to_owned(), |b| b.to_string());
                    table.row(vec!["overall".into(), rps.to_string(), burst]);
                }
                if let Some(bucket) = &limits.per_caller {
                    let burst = bucket.burst.map_or("-".to_owned(), |b| b.to_string());
                    table.row(vec!["per caller".into(), bucket.rps.to_string(), burst]);
                }
                table.print(out)?;
            }
        }
    }
    if !any {
        writeln!(
            out,
            "no policy for {service}: every caller, every instance, no limit"
        )?;
    }
    Ok(())
}

fn print_routes(service: &str, routes: &Routes, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "routes of {service} (the first rule matching a call decides; none: every instance)"
    )?;
    let mut table = Table::new(&["RULE", "MATCHES", "BACKENDS", "TIMEOUT", "RETRIES"]);
    for rule in &routes.rules {
        let matches = if rule.matches.is_empty() {
            "*".to_owned()
        } else {
            rule.matches
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let backends = rule
            .backends
            .iter()
            .map(|b| {
                let subset = if b.subset.is_empty() {
                    "all"
                } else {
                    &b.subset
                };
                format!("{subset} {}%", b.weight)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let timeout = rule.timeout.map_or("-".to_owned(), |t| {
            humantime::format_duration(t).to_string()
        });
        let retries = rule
            .retries
            .as_ref()
            .map_or("-".to_owned(), |r| r.attempts.to_string());
        table.row(vec![rule.name.clone(), matches, backends, timeout, retries]);
    }
    table.print(out)
}

/// One match as a line: `path=/api* GET x-canary=1 grpc=pkg.Svc/*`, its fields AND'ed.
fn describe(m: &Match) -> String {
    let mut parts = Vec::new();
    match &m.path {
        Some(PathMatch::Exact(p)) => parts.push(format!("path={p}")),
        Some(PathMatch::Prefix(p)) => parts.push(format!("path={p}*")),
        None => {}
    }
    parts.extend(m.method.clone());
    parts.extend(m.headers.iter().map(|(k, v)| format!("{k}={v}")));
    if let Some(grpc) = &m.grpc {
        let method = grpc.method.as_deref().unwrap_or("*");
        parts.push(format!("grpc={}/{method}", grpc.service));
    }
    parts.join(" ")
}

fn action(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn pretty(value: Option<&Value>) -> Vec<String> {
    value.map_or_else(Vec::new, |v| {
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// The lines of `before` and `after` as a unified diff's body (`-`, `+`, and ` ` for
/// lines both keep), by their longest common subsequence: documents are small.
pub fn line_diff(before: &[String], after: &[String]) -> Vec<String> {
    let (n, m) = (before.len(), after.len());
    let mut common = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if before[i] == after[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut lines) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && before[i] == after[j] {
            lines.push(format!(" {}", before[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || common[i + 1][j] >= common[i][j + 1]) {
            lines.push(format!("-{}", before[i]));
            i += 1;
        } else {
            lines.push(format!("+{}", after[j]));
            j += 1;
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_holds_several_services_and_null_deletes() {
        let text = "service: web\nroutes:\n  rules:\n    - backends:\n        - {subset: version=v1, weight: 90}\n        - {subset: version=v2, weight: 10}\nlimits: {rps: 5}\n---\nservice: db\nintentions: null\n---\n";
        let changes = parse("p.yaml", text).unwrap();
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| (c.service.as_str(), c.kind, c.document.is_some()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("web", PolicyKind::Routes, true),
                ("web", PolicyKind::Limits, true),
                ("db", PolicyKind::Intentions, false)
            ]
        );
    }

    #[test]
    fn a_mistake_names_the_file_document_and_field() {
        for (text, says) in [
            (
                "service: web\nroutes: {rules: [{backends: [{weight: 90}]}]}",
                "document 1: service web, routes.rules[0].backends",
            ),
            (
                "service: web\n---\nservice: db\nroute: {}",
                "document 2: unknown key \"route\"",
            ),
            ("routes: {}", "`service`"),
            ("service: Web\nlimits: {rps: 1}", "service \"Web\""),
            ("service: web", "no policy document"),
            ("service: [web", "p.yaml"),
        ] {
            let err = parse("p.yaml", text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.starts_with("p.yaml"), "{err}");
        }
    }

    #[test]
    fn the_diff_keeps_common_lines() {
        let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
        let diff = line_diff(&lines("a\nb\nc"), &lines("a\nx\nc"));
        assert_eq!(diff, [" a", "-b", "+x", " c"]);
    }
}
