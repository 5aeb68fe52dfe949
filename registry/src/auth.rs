//! Who may do what: the registry token that writes carry (`--token`), and the join tokens
//! that get a sidecar's certificate signed for the services each may claim
//! (`--join-token`, `--join-tokens`).
//!
//! Both arrive as `Authorization: Bearer` tokens and are compared in constant time, so
//! the comparison does not leak how much of a guess was right.

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::join::{JoinTokens, Scope};

/// Checks the bearer token of a write against the registry token; without one (no
/// `--token`), writes are open.
pub fn authorize_write(headers: &HeaderMap, token: Option<&[u8]>) -> Result<(), ApiError> {
    match token {
        Some(token) => check_bearer(headers, Some(token), "the registry token"),
        None => Ok(()),
    }
}

/// The scope of the join token a signing request carries.
pub fn join_scope<'t>(
    headers: &HeaderMap,
    join_tokens: &'t JoinTokens,
) -> Result<&'t Scope, ApiError> {
    let what = "a mesh join token";
    let presented = bearer_token(headers, what)?;
    join_tokens
        .scope_of(presented.as_bytes())
        .ok_or_else(|| ApiError::Unauthorized(format!("the bearer token is not {what}")))
}

/// Refuses a certificate for a service outside the join token's scope. A separate step
/// from [`join_scope`] because the service is named in the body, read in between.
pub fn check_claim(scope: &Scope, service: &str) -> Result<(), ApiError> {
    if scope.allows(service) {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        field: "service".into(),
        message: format!(
            "this join token may not claim service {service:?}: it is scoped to other \
             services (--join-tokens)"
        ),
    })
}

/// Checks a bearer token in constant time, so the comparison does not leak how much of a
/// guess was right. No expected token means nobody passes.
fn check_bearer(
    headers: &HeaderMap,
    expected: Option<&[u8]>,
    what: &'static str,
) -> Result<(), ApiError> {
    let presented = bearer_token(headers, what)?;
    match expected {
        Some(token) if bool::from(presented.as_bytes().ct_eq(token)) => Ok(()),
        _ => Err(ApiError::Unauthorized(format!(
            "the bearer token is not {what}"
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 makes authentication schemes case-insensitive) and
/// whitespace around the parts is ignored.
fn bearer_token<'h>(headers: &'h HeaderMap, what: &str) -> Result<&'h str, ApiError> {
    let missing = || {
        ApiError::Unauthorized(format!(
            "this request needs an Authorization: Bearer header with {what}"
        ))
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = value.trim().split_once([' ', '\t']).ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_whitespace_tolerated() {
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            check_bearer(&headers, Some(b"s3cret"), "the registry token")
        };
        for good in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
            "  Bearer   s3cret  ",
            "Bearer\ts3cret",
        ] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
        for bad in [
            "Bearer s3cres",
            "Bearer s3cret2",
            "Bearers3cret",
            "Basic s3cret",
            "Bearer",
            "Bearer ",
            "s3cret",
            "Bearer s3 cret",
        ] {
            assert!(
                matches!(check(bad), Err(ApiError::Unauthorized(_))),
                "{bad:?}"
            );
        }
    }
}
