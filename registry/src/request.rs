//! Reading and checking what clients send: bodies, content types, query parameters.
//! Every rejection names the field at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use mesh_registry_api::{
    ADMIN_METADATA, Heartbeat, MAX_TTL, MAX_WEIGHT, MIN_TTL, Protocol, Registration, Status,
    validate,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Blocking queries wait this long when `wait` is absent.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Longest `wait` honoured; longer ones are cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
const MAX_TAGS: usize = 64;
const MAX_METADATA: usize = 64;
const MAX_STRING: usize = 512;
const MAX_OUTPUT: usize = 4096;

const REGISTRATION_FIELDS: &[&str] = &[
    "address", "protocol", "tags", "metadata", "weight", "ttl", "status",
];
const HEARTBEAT_FIELDS: &[&str] = &["status", "output", "generation"];

/// Reads a body of at most [`MAX_BODY`] bytes.
pub async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::PayloadTooLarge { limit: MAX_BODY });
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit: MAX_BODY })
        }
        Err(e) => Err(ApiError::invalid(
            "body",
            format!("could not read the body: {e}"),
        )),
    }
}

/// A non-empty body must be declared as JSON.
pub fn require_json(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON sent with Content-Type: application/json, not {:?}",
            content_type
        )))
    }
}

/// The body of a registration, checked field by field: first each field's type, then
/// [`check_registration`].
pub fn registration(body: &[u8]) -> Result<Registration, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "address",
            "a registration needs a body with \"address\"",
        ));
    }
    let map = object(body, REGISTRATION_FIELDS)?;
    let address: String = field(&map, "address")?
        .ok_or_else(|| ApiError::invalid("address", "address is required"))?;

    let mut r = Registration::new(address);
    if let Some(protocol) = field::<Protocol>(&map, "protocol")? {
        r.protocol = protocol;
    }
    if let Some(tags) = field::<Vec<String>>(&map, "tags")? {
        r.tags = tags;
    }
    if let Some(metadata) = field::<BTreeMap<String, String>>(&map, "metadata")? {
        r.metadata = metadata;
    }
    if let Some(weight) = field::<u64>(&map, "weight")? {
        r.weight = u32::try_from(weight).map_err(|_| weight_out_of_range(weight))?;
    }
    if let Some(ttl) = field::<String>(&map, "ttl")? {
        r.ttl = duration("ttl", &ttl)?;
    }
    if let Some(status) = field::<Status>(&map, "status")? {
        r.status = status;
    }
    check_registration(&r)?;
    Ok(r)
}

/// The rules every stored registration obeys, whether it arrives over the API or from a
/// snapshot; the error names the field at fault.
pub fn check_registration(r: &Registration) -> Result<(), ApiError> {
    validate::address(&r.address).map_err(|m| ApiError::invalid("address", m))?;
    if r.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    if r.tags.iter().any(|t| t.is_empty() || t.len() > MAX_STRING) {
        return Err(ApiError::invalid(
            "tags",
            format!("each tag must be 1-{MAX_STRING} bytes"),
        ));
    }
    if r.metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            "metadata",
            format!("at most {MAX_METADATA} keys"),
        ));
    }
    if r.metadata
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > MAX_STRING || v.len() > MAX_STRING)
    {
        return Err(ApiError::invalid(
            "metadata",
            format!("keys must be 1-{MAX_STRING} bytes and values at most {MAX_STRING}"),
        ));
    }
    // The registry dials it to read the sidecar's admin pages.
    if let Some(admin) = r.metadata.get(ADMIN_METADATA) {
        validate::address(admin).map_err(|m| {
            ApiError::invalid(
                "metadata.admin",
                format!("metadata \"admin\" names the sidecar's admin port: {m}"),
            )
        })?;
    }
    if !(1..=MAX_WEIGHT).contains(&r.weight) {
        return Err(weight_out_of_range(r.weight.into()));
    }
    if !(MIN_TTL..=MAX_TTL).contains(&r.ttl) {
        return Err(ApiError::invalid(
            "ttl",
            format!(
                "ttl {:?} is not within 1s-1h",
                humantime::format_duration(r.ttl).to_string()
            ),
        ));
    }
    Ok(())
}

/// A heartbeat's health-check output, as a heartbeat or a snapshot carries it.
pub fn check_output(output: Option<&str>) -> Result<(), ApiError> {
    if output.is_some_and(|o| o.len() > MAX_OUTPUT) {
        return Err(ApiError::invalid(
            "output",
            format!("output is longer than {MAX_OUTPUT} bytes"),
        ));
    }
    Ok(())
}

fn weight_out_of_range(weight: u64) -> ApiError {
    ApiError::invalid(
        "weight",
        format!("weight {weight} is not within 1-{MAX_WEIGHT}"),
    )
}

/// The optional body of a heartbeat.
pub fn heartbeat(body: &[u8]) -> Result<Heartbeat, ApiError> {
    if body.is_empty() {
        return Ok(Heartbeat::default());
    }
    let map = object(body, HEARTBEAT_FIELDS)?;
    let output: Option<String> = field(&map, "output")?;
    check_output(output.as_deref())?;
    Ok(Heartbeat {
        status: field(&map, "status")?,
        output,
        generation: field(&map, "generation")?,
    })
}

const SIGN_FIELDS: &[&str] = &["service", "csr"];

/// The body of a certificate signing request.
pub fn sign_request(body: &[u8]) -> Result<mesh_registry_api::SignRequest, ApiError> {
    let map = object(body, SIGN_FIELDS)?;
    let service: String = field(&map, "service")?
        .ok_or_else(|| ApiError::invalid("service", "service is required"))?;
    validate::service_name(&service).map_err(|m| ApiError::invalid("service", m))?;
    let csr: String =
        field(&map, "csr")?.ok_or_else(|| ApiError::invalid("csr", "csr (PEM) is required"))?;
    Ok(mesh_registry_api::SignRequest { service, csr })
}

/// Query parameters of the read routes. Unknown parameters are ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Block until the index exceeds this.
    pub index: Option<u64>,
    /// How long to block (already capped at [`MAX_WAIT`]).
    pub wait: Duration,
    /// Include instances that are not passing.
    pub all: bool,
    /// The registration a deregistration means (`PUT`'s `generation`).
    pub generation: Option<u64>,
}

pub fn query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        wait: DEFAULT_WAIT,
        ..Query::default()
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key, key)?;
        let value = percent_decode(value, &key)?;
        let value = value.as_str();
        match key.as_str() {
            "index" => {
                q.index = Some(value.parse().map_err(|_| {
                    ApiError::invalid(
                        "index",
                        format!("index {value:?} is not a non-negative integer"),
                    )
                })?)
            }
            "wait" => q.wait = duration("wait", value)?.min(MAX_WAIT),
            "generation" => {
                q.generation = Some(value.parse().map_err(|_| {
                    ApiError::invalid(
                        "generation",
                        format!("generation {value:?} is not a non-negative integer"),
                    )
                })?)
            }
            "all" => {
                q.all = match value {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::invalid(
                            "all",
                            format!("all {value:?} is not true or false"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Decodes a query component as browsers and HTTP libraries encode it: `%XX` escapes and
/// `+` for a space (so `wait=1m%2030s` is `1m 30s`). The result must be UTF-8.
fn percent_decode(text: &str, field: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            field,
            format!("{field} {text:?} is not valid percent-encoded UTF-8"),
        )
    };
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = |c: Option<u8>| (c.ok_or_else(bad)? as char).to_digit(16).ok_or_else(bad);
                let high = hex(bytes.next())?;
                let low = hex(bytes.next())?;
                (high * 16 + low) as u8
            }
            b => b,
        });
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn duration(name: &str, text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text).map_err(|e| {
        ApiError::invalid(
            name,
            format!("{name} {text:?} is not a duration like \"10s\" or \"250ms\": {e}"),
        )
    })
}

/// Parses a JSON object and refuses keys outside `known` (a typo like `"TTL"` would
/// otherwise be silently ignored).
fn object(body: &[u8], known: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            unknown.clone(),
            format!(
                "unknown field {unknown:?}; expected one of {}",
                known.join(", ")
            ),
        ));
    }
    Ok(map)
}

/// One optional field of the right type; `null` counts as absent.
fn field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<T>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| ApiError::invalid(name, format!("{name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidArgument { field, .. } => field,
            other => panic!("not invalid_argument: {other:?}"),
        }
    }

    #[test]
    fn registration_fields_are_checked_one_by_one() {
        let cases: &[(&str, &str)] = &[
            ("{}", "address"),
            (r#"{"address":7}"#, "address"),
            (r#"{"address":"h:99999"}"#, "address"),
            (r#"{"address":"h:1","weight":0}"#, "weight"),
            (r#"{"address":"h:1","weight":1001}"#, "weight"),
            (r#"{"address":"h:1","weight":-1}"#, "weight"),
            (r#"{"address":"h:1","weight":1.5}"#, "weight"),
            (r#"{"address":"h:1","ttl":"500ms"}"#, "ttl"),
            (r#"{"address":"h:1","ttl":"2h"}"#, "ttl"),
            (r#"{"address":"h:1","ttl":10}"#, "ttl"),
            (r#"{"address":"h:1","ttl":"soon"}"#, "ttl"),
            (r#"{"address":"h:1","protocol":"ftp"}"#, "protocol"),
            (r#"{"address":"h:1","status":"ok"}"#, "status"),
            (r#"{"address":"h:1","tags":"a"}"#, "tags"),
            (r#"{"address":"h:1","tags":[""]}"#, "tags"),
            (r#"{"address":"h:1","metadata":{"a":1}}"#, "metadata"),
            (
                r#"{"address":"h:1","metadata":{"admin":"h"}}"#,
                "metadata.admin",
            ),
            (r#"{"address":"h:1","TTL":"10s"}"#, "TTL"),
            ("[1]", "body"),
            ("{", "body"),
        ];
        for (body, want) in cases {
            let got = field_of(registration(body.as_bytes()).unwrap_err());
            assert_eq!(&got, want, "{body}");
        }
        let ok = registration(br#"{"address":"h:1","ttl":"1h","weight":1000,"protocol":"grpc"}"#)
            .unwrap();
        assert_eq!(ok.ttl, MAX_TTL);
        assert_eq!(ok.protocol, Protocol::Grpc);
    }

    #[test]
    fn queries() {
        assert_eq!(query(None).unwrap().wait, DEFAULT_WAIT);
        let q = query(Some("index=42&wait=2s&all=true&x=y")).unwrap();
        assert_eq!(
            (q.index, q.wait, q.all),
            (Some(42), Duration::from_secs(2), true)
        );
        assert_eq!(query(Some("wait=1h")).unwrap().wait, MAX_WAIT);
        assert_eq!(field_of(query(Some("index=-1")).unwrap_err()), "index");
        assert_eq!(field_of(query(Some("wait=forever")).unwrap_err()), "wait");
        assert_eq!(field_of(query(Some("all=maybe")).unwrap_err()), "all");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        for raw in ["wait=1m%2030s", "wait=1m+30s", "w%61it=1m%2030s"] {
            let q = query(Some(raw)).unwrap();
            assert_eq!(q.wait, Duration::from_secs(90), "{raw}");
        }
        assert_eq!(query(Some("index=%34%32")).unwrap().index, Some(42));
        for bad in ["wait=%", "wait=%2", "wait=%zz", "wait=%FF"] {
            assert_eq!(field_of(query(Some(bad)).unwrap_err()), "wait", "{bad}");
        }
    }
}
