//! Who may do what. Writes (register, heartbeat, deregister) are bound to an identity,
//! a [`Writer`], proven by one of:
//!
//! - a client certificate from the mesh CA (on the TLS listener), whose SPIFFE ID names
//!   the one service it may write;
//! - a service token (`--tokens`), for the services listed with it;
//! - the operator token (`--token`), for any service.
//!
//! A registry with none of them configured (no `--token`, no `--tokens`, no CA) is open:
//! anyone may write, as [`Writer::Anonymous`], and it says so at start and on `/readyz`.
//! Every instance remembers the writer that registered it (its owner), and only that
//! writer renews or replaces it; the operator may also remove it.
//!
//! Join tokens (`--join-token`, `--join-tokens`) are another matter: they get a
//! sidecar's certificate signed, for the services each may claim. Tokens arrive as
//! `Authorization: Bearer` and are compared in constant time, so the comparison does not
//! leak how much of a guess was right.

use std::net::IpAddr;

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::entry::Claim;
use crate::error::ApiError;
use crate::tokens::{Scope, ScopedTokens};

/// What the registry accepts as proof of who writes.
#[derive(Debug, Default)]
pub struct Credentials {
    /// `--token`: the operator's, for any service.
    operator: Option<Vec<u8>>,
    /// `--tokens`: each for the services listed with it.
    tokens: ScopedTokens,
    /// Client certificates from the mesh CA are accepted (there is a CA).
    certificates: bool,
    /// `--allowed-hosts`: names besides IP literals and `localhost` an open registry
    /// takes writes under.
    allowed_hosts: Vec<String>,
}

/// Who is writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// The operator token: any service.
    Operator,
    /// A service token, for its scope.
    Token(Scope),
    /// A client certificate from the mesh CA naming this service (its SPIFFE ID).
    Service { name: String, id: String },
    /// Nobody proved anything, on an open registry.
    Anonymous,
}

/// The identity a client certificate proved on the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID, `spiffe://<trust domain>/service/<name>`.
    pub id: String,
    /// The service it names.
    pub service: String,
}

// === impl Credentials ===

impl Credentials {
    pub fn new(
        operator: Option<&str>,
        tokens: ScopedTokens,
        certificates: bool,
        allowed_hosts: Vec<String>,
    ) -> Self {
        Credentials {
            operator: operator.map(|t| t.as_bytes().to_vec()),
            tokens,
            certificates,
            allowed_hosts,
        }
    }

    /// No credential of any kind is configured: anyone may write.
    pub fn is_open(&self) -> bool {
        self.operator.is_none() && self.tokens.is_empty() && !self.certificates
    }

    /// What writes may carry here, as `/readyz` lists it: `open` when nothing is needed.
    pub fn kinds(&self) -> Vec<&'static str> {
        if self.is_open() {
            return vec!["open"];
        }
        let kinds = [
            (self.certificates, "certificate"),
            (!self.tokens.is_empty(), "service-token"),
            (self.operator.is_some(), "operator-token"),
        ];
        kinds
            .into_iter()
            .filter_map(|(on, kind)| on.then_some(kind))
            .collect()
    }

    /// Who is writing: the bearer token's holder, else the client certificate's service,
    /// else nobody, which only an open registry accepts (and only under a `Host` a
    /// DNS-rebinding page cannot forge, see [`Credentials::check_host`]).
    pub fn writer(&self, headers: &HeaderMap, peer: Option<&Peer>) -> Result<Writer, ApiError> {
        if headers.contains_key(header::AUTHORIZATION) {
            let presented = bearer_token(headers, "the operator token or a service token")?;
            let presented = presented.as_bytes();
            // Both compared whatever the first says, so timing does not tell which matched.
            let operator = self
                .operator
                .as_deref()
                .is_some_and(|token| bool::from(presented.ct_eq(token)));
            let scoped = self.tokens.scope_of(presented);
            return match (operator, scoped) {
                (true, _) => Ok(Writer::Operator),
                (false, Some(scope)) => Ok(Writer::Token(scope.clone())),
                (false, None) => Err(ApiError::Unauthorized(
                    "the bearer token is neither the operator token (--token) nor a service \
                     token (--tokens)"
                        .into(),
                )),
            };
        }
        if let Some(peer) = peer {
            return Ok(Writer::Service {
                name: peer.service.clone(),
                id: peer.id.clone(),
            });
        }
        if self.is_open() {
            self.check_host(headers)?;
            return Ok(Writer::Anonymous);
        }
        Err(ApiError::Unauthorized(self.what_writes_need()))
    }

    /// What a write must carry here, for the error that says it is missing.
    fn what_writes_need(&self) -> String {
        let mut ways = Vec::new();
        if self.certificates {
            ways.push("a client certificate from the mesh CA (on the registry's TLS listener)");
        }
        if !self.tokens.is_empty() {
            ways.push("a service token (--tokens) as Authorization: Bearer");
        }
        if self.operator.is_some() {
            ways.push("the operator token (--token) as Authorization: Bearer");
        }
        format!("writes need {}", ways.join(", or "))
    }

    /// On an open registry, a write is taken only under a `Host` that names this machine
    /// by address (an IP literal), `localhost`, or a name from `--allowed-hosts`: a web
    /// page that rebinds its own DNS name to the registry's address cannot write then,
    /// since the browser sends that name.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let name = host_name(host);
        let allowed = name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name));
        if allowed {
            return Ok(());
        }
        Err(ApiError::Forbidden {
            field: "host".into(),
            message: format!(
                "this registry has no credentials, so it takes writes only under an IP \
                 address, localhost or a name from --allowed-hosts, not Host {host:?} \
                 (a web page could otherwise write through the browser of anyone who \
                 visits it)"
            ),
        })
    }
}

/// The name in a `Host` header value: without the port, and without the brackets of an
/// IPv6 literal.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

// === impl Writer ===

impl Writer {
    /// How instances record this writer as their owner.
    pub fn owner(&self) -> String {
        match self {
            Writer::Operator => "operator".to_owned(),
            Writer::Token(scope) => format!("token:{scope}"),
            Writer::Service { id, .. } => id.clone(),
            Writer::Anonymous => "anonymous".to_owned(),
        }
    }

    /// Refuses a write to `service` this writer may not make.
    pub fn may_write(&self, service: &str) -> Result<(), ApiError> {
        let allowed = match self {
            Writer::Operator | Writer::Anonymous => true,
            Writer::Token(scope) => scope.allows(service),
            Writer::Service { name, .. } => name == service,
        };
        if allowed {
            return Ok(());
        }
        Err(ApiError::Forbidden {
            field: "service".into(),
            message: format!(
                "{} may not write instances of service {service:?}",
                self.describe()
            ),
        })
    }

    /// The claim a heartbeat by this writer makes, recorded as `owner`: its own
    /// instances only.
    pub fn claim<'a>(&self, owner: &'a str, generation: Option<u64>) -> Claim<'a> {
        Claim {
            owner,
            generation,
            overrides: false,
        }
    }

    /// The claim a deregistration by this writer makes: its own instances, or any for
    /// the operator.
    pub fn removal<'a>(&self, owner: &'a str, generation: Option<u64>) -> Claim<'a> {
        Claim {
            overrides: *self == Writer::Operator,
            ..self.claim(owner, generation)
        }
    }

    fn describe(&self) -> String {
        match self {
            Writer::Operator => "the operator token".to_owned(),
            Writer::Token(scope) => format!("a service token for {scope}"),
            Writer::Service { id, .. } => format!("the certificate of {id}"),
            Writer::Anonymous => "an anonymous writer".to_owned(),
        }
    }
}

/// The scope of the join token a signing request carries.
pub fn join_scope<'t>(
    headers: &HeaderMap,
    join_tokens: &'t ScopedTokens,
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

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_whitespace_tolerated() {
        let credentials = Credentials::new(Some("s3cret"), ScopedTokens::default(), false, vec![]);
        let check = |value: &str| credentials.writer(&with(header::AUTHORIZATION, value), None);
        for good in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
            "  Bearer   s3cret  ",
            "Bearer\ts3cret",
        ] {
            assert_eq!(check(good), Ok(Writer::Operator), "{good:?}");
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

    #[test]
    fn writers_are_told_apart_and_held_to_their_services() {
        let tokens = ScopedTokens::parse("web,db web-token\n").unwrap();
        let credentials = Credentials::new(Some("op"), tokens, true, vec![]);
        let bearer = |t: &str| with(header::AUTHORIZATION, &format!("Bearer {t}"));
        let token = credentials.writer(&bearer("web-token"), None).unwrap();
        assert_eq!(token.owner(), "token:db,web");
        assert!(token.may_write("web").is_ok() && token.may_write("db").is_ok());
        assert!(matches!(
            token.may_write("api"),
            Err(ApiError::Forbidden { .. })
        ));

        let peer = Peer {
            id: "spiffe://mesh.local/service/web".into(),
            service: "web".into(),
        };
        let service = credentials.writer(&HeaderMap::new(), Some(&peer)).unwrap();
        assert_eq!(service.owner(), "spiffe://mesh.local/service/web");
        assert!(service.may_write("web").is_ok() && service.may_write("db").is_err());
        assert!(!service.removal("x", None).overrides);
        assert!(!Writer::Operator.claim("x", None).overrides);
        assert!(Writer::Operator.removal("x", None).overrides);

        // Neither a token nor a certificate, on a registry that has credentials.
        let refused = credentials.writer(&with(header::HOST, "127.0.0.1"), None);
        let Err(ApiError::Unauthorized(message)) = refused else {
            panic!("{refused:?}")
        };
        assert!(message.contains("client certificate") && message.contains("--tokens"));
    }

    #[test]
    fn an_open_registry_takes_writes_only_under_names_a_web_page_cannot_rebind() {
        let open = Credentials::new(
            None,
            ScopedTokens::default(),
            false,
            vec!["registry".into()],
        );
        assert!(open.is_open());
        for host in [
            "127.0.0.1:7700",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:7700",
            "localhost:7700",
            "LOCALHOST",
            "registry:7700",
        ] {
            assert_eq!(
                open.writer(&with(header::HOST, host), None),
                Ok(Writer::Anonymous),
                "{host}"
            );
        }
        for host in [
            "attacker.example:7700",
            "localhost.attacker.example",
            "",
            "registry.evil",
        ] {
            let refused = open.writer(&with(header::HOST, host), None);
            assert!(
                matches!(&refused, Err(ApiError::Forbidden { field, .. }) if field == "host"),
                "{host}: {refused:?}"
            );
        }
    }
}
