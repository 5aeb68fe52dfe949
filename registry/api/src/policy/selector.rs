//! Subsets of a service's instances, chosen by their registration metadata.

use std::collections::BTreeMap;
use std::fmt;

/// `key=value` pairs that must all hold in an instance's metadata (`"version=v2,zone=a"`);
/// the empty selector holds for every instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// Sorted by key, one value per key: equal selectors compare equal however written.
    pairs: BTreeMap<String, String>,
}

// === impl Selector ===

impl Selector {
    /// Every instance.
    pub fn all() -> Self {
        Selector::default()
    }

    pub fn is_all(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether an instance with `metadata` is in the subset.
    pub fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.pairs
            .iter()
            .all(|(k, v)| metadata.get(k).is_some_and(|m| m == v))
    }
}

impl std::str::FromStr for Selector {
    type Err = String;

    /// `""` is every instance; otherwise comma-separated `key=value` pairs. Keys are
    /// non-empty; a value may be empty (metadata values may be); spaces are part of
    /// keys and values, as they are in metadata, so none is trimmed.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut pairs = BTreeMap::new();
        if s.is_empty() {
            return Ok(Selector { pairs });
        }
        for pair in s.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!(
                    "subset {s:?}: {pair:?} is not key=value (write e.g. \"version=v2\")"
                ));
            };
            if key.is_empty() {
                return Err(format!("subset {s:?}: {pair:?} has no key before '='"));
            }
            if value.contains('=') {
                return Err(format!("subset {s:?}: {pair:?} has more than one '='"));
            }
            if let Some(before) = pairs.insert(key.to_owned(), value.to_owned())
                && before != value
            {
                return Err(format!(
                    "subset {s:?} asks for {key}={before} and {key}={value}: no instance has both"
                ));
            }
        }
        Ok(Selector { pairs })
    }
}

impl fmt::Display for Selector {
    /// The canonical spelling: pairs sorted by key, `""` for every instance.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_pair_must_hold() {
        let s: Selector = "version=v2,zone=a".parse().unwrap();
        assert!(s.matches(&meta(&[("version", "v2"), ("zone", "a"), ("x", "y")])));
        assert!(!s.matches(&meta(&[("version", "v2")])));
        assert!(!s.matches(&meta(&[("version", "v1"), ("zone", "a")])));
    }

    #[test]
    fn the_empty_selector_is_every_instance() {
        let s: Selector = "".parse().unwrap();
        assert!(s.is_all());
        assert!(s.matches(&BTreeMap::new()));
        assert_eq!(s.to_string(), "");
    }

    #[test]
    fn spelling_does_not_matter_for_equality() {
        let a: Selector = "zone=a,version=v2".parse().unwrap();
        let b: Selector = "version=v2,zone=a,zone=a".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "version=v2,zone=a");
    }

    #[test]
    fn empty_values_are_allowed_and_must_be_empty() {
        let s: Selector = "canary=".parse().unwrap();
        assert!(s.matches(&meta(&[("canary", "")])));
        assert!(!s.matches(&meta(&[("canary", "1")])));
        assert!(!s.matches(&meta(&[])));
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in [
            "version", "=v2", "a=1,", ",a=1", "a=1=2", "a=1,a=2", "a=1,,b=2",
        ] {
            let err = bad.parse::<Selector>().unwrap_err();
            assert!(err.contains("subset"), "{bad}: {err}");
        }
    }
}
