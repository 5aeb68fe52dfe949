//! Tokens scoped to services: the secrets sidecars present to get a certificate signed
//! (join tokens), or to write their instances on a registry without a CA (service
//! tokens), each with the services it may act for.
//!
//! The shared `--join-token` may claim any service. `--join-tokens FILE` adds join tokens
//! scoped to named services, and `--tokens FILE` service tokens, in one format, one per
//! line:
//!
//! ```text
//! # services            token
//! recommendations       s3cr3t-1
//! marketplace,web       s3cr3t-2
//! *                     s3cr3t-3
//! ```
//!
//! Each line is two fields separated by spaces or tabs: a comma-separated list of service
//! names without spaces (or `*` for any service), then the token, which has no whitespace
//! in it. Blank lines and lines whose first non-blank character is `#` are ignored; a `#`
//! later in a line is part of the token. A token appears once, across the file and
//! `--join-token`.

use std::collections::BTreeSet;
use std::path::Path;

use mesh_registry_api::validate;
use subtle::ConstantTimeEq;

/// Which services a token may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Any,
    Services(BTreeSet<String>),
}

// === impl Scope ===

impl Scope {
    pub fn allows(&self, service: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Services(services) => services.contains(service),
        }
    }
}

impl std::fmt::Display for Scope {
    /// As in the file: `*`, or the services separated by commas.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Any => f.write_str("*"),
            Scope::Services(services) => {
                let names: Vec<&str> = services.iter().map(String::as_str).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// Every token of one kind the registry accepts, with its scope.
#[derive(Debug, Clone, Default)]
pub struct ScopedTokens {
    tokens: Vec<(Vec<u8>, Scope)>,
}

// === impl ScopedTokens ===

impl ScopedTokens {
    /// The tokens of `--join-tokens` (if given) and the shared `--join-token` (if given).
    /// Errors name the flag, and the line for a file.
    pub fn from_flags(file: Option<&Path>, shared: Option<&str>) -> Result<Self, String> {
        let mut tokens = match file {
            Some(path) => Self::load(path, "--join-tokens")?,
            None => ScopedTokens::default(),
        };
        if let Some(shared) = shared {
            if tokens.scope_of(shared.as_bytes()).is_some() {
                return Err(
                    "--join-token is also a token in --join-tokens: give each secret once".into(),
                );
            }
            tokens.tokens.push((shared.as_bytes().to_vec(), Scope::Any));
        }
        if tokens.tokens.is_empty() {
            return Err("--join-tokens holds no token, and there is no --join-token".into());
        }
        Ok(tokens)
    }

    /// Reads a tokens file given as `flag` (which error messages name).
    pub fn load(path: &Path, flag: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{flag} {}: {e}", path.display()))
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Parses the file format described at the top of this module.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = ScopedTokens::default();
        let mut lines_of: Vec<usize> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [services, token] = fields[..] else {
                return Err(format!(
                    "line {n}: expected two fields, `SERVICES TOKEN` (services separated by \
                     commas without spaces, or *), found {}",
                    fields.len()
                ));
            };
            let scope = if services == "*" {
                Scope::Any
            } else {
                let mut names = BTreeSet::new();
                for name in services.split(',') {
                    validate::service_name(name).map_err(|m| format!("line {n}: {m}"))?;
                    names.insert(name.to_owned());
                }
                Scope::Services(names)
            };
            if let Some(i) = tokens.index_of(token.as_bytes()) {
                return Err(format!(
                    "line {n}: the same token is already on line {}",
                    lines_of[i]
                ));
            }
            tokens.tokens.push((token.as_bytes().to_vec(), scope));
            lines_of.push(n);
        }
        Ok(tokens)
    }

    /// The scope of the token `presented`, if it is one of ours.
    pub fn scope_of(&self, presented: &[u8]) -> Option<&Scope> {
        self.index_of(presented).map(|i| &self.tokens[i].1)
    }

    /// Compares `presented` with every token, each in constant time and without stopping
    /// at a match, so the timing tells neither how much of a guess was right nor which
    /// token it matched.
    fn index_of(&self, presented: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, (token, _)) in self.tokens.iter().enumerate() {
            let equal = bool::from(token.as_slice().ct_eq(presented));
            found = if equal { Some(i) } else { found };
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(names: &[&str]) -> Scope {
        Scope::Services(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn lines_name_services_then_the_token() {
        let tokens = ScopedTokens::parse(
            "# services token\n\
             recommendations s3cr3t-1\n\
             \n\
             \tmarketplace,web \t s3cr3t-2  \n\
             * s3cr3t#3\n",
        )
        .unwrap();
        assert_eq!(
            tokens.scope_of(b"s3cr3t-1"),
            Some(&services(&["recommendations"]))
        );
        let two = tokens.scope_of(b"s3cr3t-2").unwrap();
        assert!(two.allows("web") && two.allows("marketplace") && !two.allows("db"));
        assert_eq!(tokens.scope_of(b"s3cr3t#3"), Some(&Scope::Any));
        assert_eq!(tokens.scope_of(b"s3cr3t-"), None);
        assert_eq!(tokens.scope_of(b""), None);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, wanted) in [
            ("web\n", "line 1: expected two fields"),
            ("web a b\n", "line 1: expected two fields"),
            ("\n# c\nWeb t\n", "line 3: service name \"Web\""),
            ("web,,db t\n", "line 1: service name \"\""),
            ("web,* t\n", "line 1: service name \"*\""),
            (
                "web t\ndb u\napi t\n",
                "line 3: the same token is already on line 1",
            ),
        ] {
            let err = ScopedTokens::parse(text).unwrap_err();
            assert!(err.starts_with(wanted), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_shared_token_claims_any_service_and_must_not_repeat_a_scoped_one() {
        let tokens = ScopedTokens::from_flags(None, Some("shared")).unwrap();
        assert_eq!(tokens.scope_of(b"shared"), Some(&Scope::Any));
        assert!(ScopedTokens::from_flags(None, None).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "web shared\n").unwrap();
        let err = ScopedTokens::from_flags(Some(&file), Some("shared")).unwrap_err();
        assert!(err.contains("--join-token"), "{err}");
        std::fs::write(&file, "# none yet\n").unwrap();
        let err = ScopedTokens::from_flags(Some(&file), None).unwrap_err();
        assert!(err.contains("no token"), "{err}");
        let err = ScopedTokens::from_flags(Some(&dir.path().join("missing")), None).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}
