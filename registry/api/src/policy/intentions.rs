//! `intentions`: which callers a serving sidecar lets through.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::check::{check_grpc_name, check_method, check_path};
use super::{PolicyError, at, version_1};
use crate::validate;

/// Most rules in one document.
pub const MAX_INTENTIONS: usize = 256;

/// An `intentions` document: the first rule that matches a call decides; none, `default`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Intentions {
    #[serde(default = "version_1")]
    pub version: u32,
    #[serde(default)]
    pub default: Action,
    #[serde(default)]
    pub rules: Vec<Intention>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Intention {
    /// `rule-<n>` (1-based) when absent.
    #[serde(default)]
    pub name: String,
    /// `*` (any caller, authenticated or not), a service name, or a `spiffe://` ID.
    pub from: String,
    pub action: Action,
    #[serde(default)]
    pub mode: Mode,
    /// Path prefixes; absent = every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Upper-case HTTP methods; absent = every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// `Service/Method` or `Service/*`; absent = every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// Whether a rule's denials refuse the call or are only recorded (a dry run).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

// === impl Intentions ===

impl Intentions {
    /// Checks the document against the contract and names its rules.
    pub fn validate(mut self) -> Result<Self, PolicyError> {
        if self.rules.len() > MAX_INTENTIONS {
            return Err(PolicyError::new(
                "rules",
                format!(
                    "{} rules; at most {MAX_INTENTIONS} are allowed",
                    self.rules.len()
                ),
            ));
        }
        let mut names = BTreeMap::new();
        for (i, rule) in self.rules.iter_mut().enumerate() {
            super::check::name_rule(&mut rule.name, i, &mut names)?;
            rule.check(&at("", "rules", i))?;
        }
        // What each rule applies to, for finding two that say opposite things about it.
        let mut scopes: BTreeMap<Scope, &Intention> = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let first = *scopes.entry(rule.scope()).or_insert(rule);
            if first.action != rule.action {
                return Err(PolicyError::new(
                    at("", "rules", i),
                    format!(
                        "rule {:?} {}s what rule {:?} {}s (same from, paths, methods and grpc): \
                         only the first would ever apply; remove one",
                        rule.name,
                        rule.action.as_str(),
                        first.name,
                        first.action.as_str()
                    ),
                ));
            }
        }
        Ok(self)
    }
}

/// A rule's (from, paths, methods, grpc), lists as sets.
type Scope = (
    String,
    Option<BTreeSet<String>>,
    Option<BTreeSet<String>>,
    Option<BTreeSet<String>>,
);

// === impl Intention ===

impl Intention {
    fn scope(&self) -> Scope {
        let set = |l: &Option<Vec<String>>| l.as_ref().map(|l| l.iter().cloned().collect());
        (
            self.from.clone(),
            set(&self.paths),
            set(&self.methods),
            set(&self.grpc),
        )
    }

    fn check(&self, field: &str) -> Result<(), PolicyError> {
        check_from(&self.from, &format!("{field}.from"))?;
        if self.mode == Mode::Shadow && self.action == Action::Allow {
            return Err(PolicyError::new(
                format!("{field}.mode"),
                "a shadow rule must deny: shadow mode records the calls a deny rule would refuse",
            ));
        }
        let lists = [
            ("paths", &self.paths),
            ("methods", &self.methods),
            ("grpc", &self.grpc),
        ];
        for (name, list) in lists {
            let Some(list) = list else { continue };
            if list.is_empty() {
                return Err(PolicyError::new(
                    format!("{field}.{name}"),
                    format!(
                        "{name} is empty, so the rule would match nothing; leave it out to match every call"
                    ),
                ));
            }
            for (k, item) in list.iter().enumerate() {
                let at = format!("{field}.{name}[{k}]");
                match name {
                    "paths" => check_path(item, &at)?,
                    "methods" => check_method(item, &at)?,
                    _ => check_grpc(item, &at)?,
                }
            }
        }
        Ok(())
    }
}

/// `*`, a service name, or a full `spiffe://` ID.
fn check_from(from: &str, field: &str) -> Result<(), PolicyError> {
    if from == "*" {
        return Ok(());
    }
    if let Some(rest) = from.strip_prefix("spiffe://") {
        let ok = rest
            .split_once('/')
            .is_some_and(|(domain, path)| !domain.is_empty() && !path.is_empty())
            && !from
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
        return if ok {
            Ok(())
        } else {
            Err(PolicyError::new(
                field,
                format!("{from:?} is not a SPIFFE ID (spiffe://<trust domain>/<path>)"),
            ))
        };
    }
    validate::service_name(from).map_err(|m| {
        PolicyError::new(
            field,
            format!("from must be \"*\", a service name or a spiffe:// ID: {m}"),
        )
    })
}

/// `Service/Method` or `Service/*`.
fn check_grpc(call: &str, field: &str) -> Result<(), PolicyError> {
    let Some((service, method)) = call.split_once('/') else {
        return Err(PolicyError::new(
            field,
            format!("{call:?} must be Service/Method or Service/* (e.g. \"pkg.Svc/Write\")"),
        ));
    };
    check_grpc_name(service, field, "service")?;
    if method != "*" {
        check_grpc_name(method, field, "method")?;
    }
    Ok(())
}

/// An `intentions` body, a serde error reported at the rule it is in.
pub(super) fn decode(value: Value) -> Result<Intentions, PolicyError> {
    super::decode::<Intentions>(value.clone(), "").map_err(|whole| {
        let rules = value.get("rules").and_then(Value::as_array);
        rules
            .into_iter()
            .flatten()
            .enumerate()
            .find_map(|(i, rule)| {
                super::decode::<Intention>(rule.clone(), &at("", "rules", i)).err()
            })
            .unwrap_or(whole)
    })
}

#[cfg(test)]
#[path = "intentions_tests.rs"]
mod tests;
