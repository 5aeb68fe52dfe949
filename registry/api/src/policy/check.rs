//! Checks shared by the kinds: rule names, HTTP methods, paths, gRPC names.

use std::collections::BTreeMap;

use super::PolicyError;

/// A rule's name, or the one it is given (`rule-<n>`, 1-based), checked:
/// `[a-z0-9-]{1,63}` and unique in its document.
pub(super) fn name_rule(
    name: &mut String,
    i: usize,
    seen: &mut BTreeMap<String, usize>,
) -> Result<(), PolicyError> {
    let field = format!("rules[{i}].name");
    if name.is_empty() {
        *name = format!("rule-{}", i + 1);
    } else if name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(PolicyError::new(
            field,
            format!("rule name {name:?} must be 1-63 lowercase letters, digits or '-'"),
        ));
    }
    if let Some(first) = seen.insert(name.clone(), i) {
        return Err(PolicyError::new(
            field,
            format!(
                "rule name {name:?} is already the name of rules[{first}]; names must be unique"
            ),
        ));
    }
    Ok(())
}

/// An HTTP method as rules name it: a token in upper case (`GET`, `PURGE`).
pub(super) fn check_method(method: &str, field: &str) -> Result<(), PolicyError> {
    if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(PolicyError::new(
            field,
            format!("{method:?} is not an HTTP method"),
        ));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(PolicyError::new(
            field,
            format!(
                "method {method:?} must be upper case ({:?})",
                method.to_ascii_uppercase()
            ),
        ));
    }
    Ok(())
}

/// A path or path prefix: must start with `/`.
pub(super) fn check_path(path: &str, field: &str) -> Result<(), PolicyError> {
    if !path.starts_with('/') {
        return Err(PolicyError::new(
            field,
            format!("path {path:?} must start with '/'"),
        ));
    }
    if http::uri::PathAndQuery::try_from(path).is_err() || path.contains('?') {
        return Err(PolicyError::new(
            field,
            format!("path {path:?} is not a valid URL path"),
        ));
    }
    Ok(())
}

/// A gRPC service (`pkg.Service`) or method name: no slash, no space.
pub(super) fn check_grpc_name(name: &str, field: &str, what: &str) -> Result<(), PolicyError> {
    if name.is_empty()
        || name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(PolicyError::new(
            field,
            format!("gRPC {what} {name:?} must be a non-empty name without '/' or spaces"),
        ));
    }
    Ok(())
}
