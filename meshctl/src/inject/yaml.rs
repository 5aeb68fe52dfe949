//! YAML that every Kubernetes tool reads back as it was meant.
//!
//! kubectl and the API server read YAML 1.1, where `yes`, `no`, `on`, `off`, `y`, `n` and
//! `1:20` are not strings; the YAML library writes YAML 1.2 and leaves those bare. This
//! writer leaves bare only strings that read as strings in both, and writes every other
//! string double-quoted (JSON's quoting is valid YAML).

use serde_norway::Value;

/// One document, block style, sequences indented under their key.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Mapping(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Sequence(s) if !s.is_empty() => sequence(&mut out, s, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn mapping(out: &mut String, map: &serde_norway::Mapping, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&inline(key));
        out.push(':');
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                mapping(out, m, indent + 2);
            }
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                sequence(out, s, indent + 2);
            }
            Value::Tagged(t) => {
                out.push(' ');
                out.push_str(&inline(&t.value));
                out.push('\n');
            }
            scalar => {
                out.push(' ');
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
}

fn sequence(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        let mut nested = String::new();
        match item {
            Value::Mapping(m) if !m.is_empty() => mapping(&mut nested, m, indent + 2),
            Value::Sequence(s) if !s.is_empty() => sequence(&mut nested, s, indent + 2),
            scalar => {
                nested = format!("{}{}\n", " ".repeat(indent + 2), inline(scalar));
            }
        }
        // The item's first line starts after the dash.
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        out.push_str(&nested[indent + 2..]);
    }
}

/// A scalar, or an empty collection, on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if bare(s) => s.clone(),
        Value::String(s) => serde_json::to_string(s).expect("strings serialize"),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => inline(&t.value),
    }
}

/// Whether `s` reads back as this string, in YAML 1.1 and 1.2 alike, when written bare.
fn bare(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Not a digit, sign or dot first: nothing that might read as a number.
    let first_ok = first.is_ascii_alphabetic() || matches!(first, '/' | '_' | '$');
    let rest_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:=,@$()+- ".contains(c));
    first_ok
        && rest_ok
        && !WORDS.contains(&s)
        && !s.contains(": ")
        && !s.ends_with(':')
        && !s.ends_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_yaml_1_1_reads_otherwise_are_quoted() {
        let text = "args: [\"--appendonly\", \"yes\", \"no\", \"on\", \"1:20\", \"8080\", \
                    \"\", \"a: b\", \"#x\", \"line\\nbreak\"]\nok: [web, /metrics, $(POD_IP):4143, version=v1]\n";
        let value: Value = serde_norway::from_str(text).unwrap();
        let written = to_string(&value);
        assert!(written.contains("- \"yes\"\n"), "{written}");
        assert!(written.contains("- \"no\"\n"), "{written}");
        assert!(written.contains("- \"on\"\n"), "{written}");
        assert!(written.contains("- \"1:20\"\n"), "{written}");
        assert!(written.contains("- \"8080\"\n"), "{written}");
        assert!(written.contains("- web\n"), "{written}");
        assert!(written.contains("- $(POD_IP):4143\n"), "{written}");
        let read: Value = serde_norway::from_str(&written).unwrap();
        assert_eq!(read, value, "{written}");
    }

    #[test]
    fn nested_collections_keep_their_shape() {
        let text = "a:\n  b: [{c: 1, d: [x, y]}, [1, 2], {}]\n  e: {}\n  f: []\n  g: null\n";
        let value: Value = serde_norway::from_str(text).unwrap();
        let written = to_string(&value);
        let read: Value = serde_norway::from_str(&written).unwrap();
        assert_eq!(read, value, "{written}");
    }
}
