//! `meshctl tap SERVICE [--via SIDECAR] [filters]`: the calls sidecars see, live, one
//! line each, from their `/tap`.
//!
//! What is tapped is kept simple and predictable:
//!
//! - without `--via`, every instance of SERVICE that registered its sidecar (its inbound
//!   side: the calls SERVICE serves), merged; the instance list is read again every few
//!   seconds, so instances that join are tapped and those that leave are let go;
//! - with `--via SIDECAR`, that one sidecar, filtered to the calls of SERVICE: its
//!   inbound calls when it is SERVICE's own, its app's outbound calls to SERVICE
//!   (`--direction outbound` needs it, since SERVICE's own sidecars do not call SERVICE).
//!
//! Taps go through the registry's relay, which needs the operator token (`--token`) on a
//! registry with credentials, or straight to the admin addresses with `--direct`. It runs
//! until interrupted (Ctrl-C ends the process: there is nothing to clean up). A tap that
//! ends (the registry ends relayed taps after 10 minutes; a sidecar restarts) is opened
//! again after a short backoff; stderr says which sidecars are tapped and why one is not.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use mesh_registry_api::call::{CallEvent, TapFilter};
use mesh_registry_api::{ADMIN_METADATA, AdminPath, Backoff, Client, ClientError, ErrorDetail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cli::TapArgs;
use crate::output::{self, Format};
use crate::reach::SidecarError;
use crate::sidecars::{self, Sidecar};
use crate::{Ctl, Error};

/// How often the instances of SERVICE are listed again (without `--via`).
const REFRESH: Duration = Duration::from_secs(5);
/// Deadline of a tap's head: the registry gives the sidecar 2 s.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between attempts to open a tap: from a second (also after a tap that ended
/// cleanly) up to ten.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// The longest line taken from a tap; a sidecar's lines are well under a KiB.
const MAX_LINE: usize = 1024 * 1024;
/// The most of a refusal read, to say why.
const MAX_REFUSAL: usize = 64 * 1024;

/// What a tap task reports to the printer.
enum Report {
    Line {
        sidecar: String,
        line: String,
    },
    Note(String),
    /// Nothing will open this tap: the command fails.
    Fatal(Error),
}

/// How tap streams are opened: the registry's relay, or the admin addresses.
#[derive(Clone)]
struct Opener {
    registry: Client,
    token: Option<String>,
    direct: bool,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
}

/// Why a tap is not open.
enum Failure {
    /// Worth trying again (unreachable, busy, ended).
    Transient(String),
    /// The instance is no longer registered.
    Gone(String),
    /// Trying again cannot help (credentials, a refused filter).
    Fatal(Error),
    /// The registry has no tap relay: dial the admin address instead.
    NoRelay,
}

pub async fn run(ctl: &Ctl, args: &TapArgs, out: &mut dyn Write) -> Result<(), Error> {
    let opener = Opener {
        registry: ctl.registry.clone(),
        token: ctl.token.clone(),
        direct: ctl.admins.is_direct(),
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
    };
    let filter = filter(args);
    let (reports, mut incoming) = mpsc::channel::<Report>(1024);
    let mut tasks = JoinSet::new();
    // Sidecar (`service/id`) → the task tapping it.
    let mut tapping: BTreeMap<String, tokio::task::AbortHandle> = BTreeMap::new();
    let what = match &args.via {
        Some(_) => format!("calls of {}", args.service),
        None => format!("calls {} serves", args.service),
    };

    // With --via, the one sidecar named, found once; without, SERVICE's instances,
    // listed again every REFRESH.
    let via = match &args.via {
        Some(via) => Some(sidecars::find(&ctl.registry, via).await?),
        None => None,
    };
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said_none = false;
    loop {
        tokio::select! {
            _ = refresh.tick(), if via.is_none() || tapping.is_empty() => {
                let wanted = match &via {
                    Some(sidecar) => vec![sidecar.clone()],
                    None => match instances(&ctl.registry, &args.service).await {
                        Ok(wanted) => wanted,
                        // A registry restart is no reason to stop the taps that are open.
                        Err(e) if !tapping.is_empty() => {
                            output::note(&format!("note: {}", crate::explain(&e)));
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    },
                };
                if wanted.is_empty() && !said_none {
                    output::note(&format!(
                        "no instance of {} has registered a sidecar yet; waiting for one",
                        args.service
                    ));
                }
                said_none = wanted.is_empty();
                let names: Vec<String> = wanted.iter().map(Sidecar::to_string).collect();
                tapping.retain(|name, task| {
                    let keep = names.contains(name);
                    if !keep {
                        task.abort();
                        output::note(&format!("{name} has left; no longer tapped"));
                    }
                    keep
                });
                let mut started = Vec::new();
                for sidecar in wanted {
                    let name = sidecar.to_string();
                    if tapping.contains_key(&name) {
                        continue;
                    }
                    let task = follow(opener.clone(), sidecar, filter.clone(), reports.clone());
                    tapping.insert(name.clone(), tasks.spawn(task));
                    started.push(name);
                }
                if !started.is_empty() {
                    output::note(&format!(
                        "tapping {} ({what}; Ctrl-C to stop)",
                        started.join(", ")
                    ));
                }
            }
            report = incoming.recv() => match report.expect("the printer holds a sender") {
                Report::Line { sidecar, line } => print(ctl.format, &sidecar, &line, out)?,
                Report::Note(note) => output::note(&note),
                Report::Fatal(e) => return Err(e),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                // A task ends when its instance is gone.
                if let Some(via) = &args.via {
                    return Err(Error::Via {
                        via: via.clone(),
                        reason: "it is no longer registered".to_owned(),
                    });
                }
                tapping.retain(|_, task| !task.is_finished());
            }
        }
    }
}

/// The filter the flags describe, with SERVICE as its service: SERVICE's own inbound
/// calls without `--via`.
fn filter(args: &TapArgs) -> TapFilter {
    let direction = match (&args.via, &args.direction) {
        (None, _) => Some("inbound".to_owned()),
        (Some(_), direction) => direction.clone(),
    };
    let filter = TapFilter {
        service: Some(args.service.clone()),
        direction,
        path_prefix: args.path_prefix.clone(),
        method: args.method.clone(),
        status: args.status.clone(),
        max_rps: args.max_rps,
    };
    // Each flag was checked on its own: this only normalises (`get` → `GET`).
    TapFilter::parse(&filter.to_query()).unwrap_or(filter)
}

/// The registered sidecars of `service`'s instances, in any status.
async fn instances(registry: &Client, service: &str) -> Result<Vec<Sidecar>, ClientError> {
    let listing = registry.service_all(service).await?;
    let mut sidecars: Vec<Sidecar> = listing
        .instances
        .into_iter()
        .filter_map(|instance| {
            let admin = instance.metadata.get(ADMIN_METADATA)?.clone();
            Some(Sidecar {
                service: listing.service.clone(),
                id: instance.id,
                admin,
                status: instance.status,
            })
        })
        .collect();
    sidecars.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(sidecars)
}

/// Keeps one sidecar's tap open, sending its lines on, until its instance is gone or
/// nothing can open it.
async fn follow(
    mut opener: Opener,
    sidecar: Sidecar,
    filter: TapFilter,
    reports: mpsc::Sender<Report>,
) {
    let name = sidecar.to_string();
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut opened_before = false;
    loop {
        let why = match opener.open(&sidecar, &filter).await {
            Ok(body) => {
                backoff.reset();
                if opened_before {
                    let _ = reports
                        .send(Report::Note(format!("{name}: tap open again")))
                        .await;
                }
                opened_before = true;
                match relay(body, &name, &reports).await {
                    Ok(why) => why,
                    // The printer is gone: so is the command.
                    Err(()) => return,
                }
            }
            Err(Failure::NoRelay) => {
                let note = format!(
                    "note: the registry at {} cannot relay taps (an older release); dialling \
                     sidecars' admin addresses directly",
                    opener.registry.base_url()
                );
                let _ = reports.send(Report::Note(note)).await;
                opener.direct = true;
                continue;
            }
            Err(Failure::Fatal(e)) => {
                let _ = reports.send(Report::Fatal(e)).await;
                return;
            }
            Err(Failure::Gone(why)) => {
                let _ = reports.send(Report::Note(format!("{name}: {why}"))).await;
                return;
            }
            Err(Failure::Transient(why)) => why,
        };
        let delay = backoff.next_delay_at_least_base();
        let note = format!(
            "{name}: {why}; opening its tap again in {}",
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        if reports.send(Report::Note(note)).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Sends the tap's lines on as they come; returns why it ended (`Err` when nobody reads
/// them any more). An unfinished last line is dropped: it never ended.
async fn relay(
    mut body: Incoming,
    sidecar: &str,
    reports: &mpsc::Sender<Report>,
) -> Result<String, ()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let data = match body.frame().await {
            None => return Ok("its tap ended".to_owned()),
            Some(Err(e)) => return Ok(format!("its tap broke off ({e})")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if line.is_empty() {
                continue;
            }
            let report = Report::Line {
                sidecar: sidecar.to_owned(),
                line,
            };
            reports.send(report).await.map_err(drop)?;
        }
        if pending.len() > MAX_LINE {
            return Ok(format!("its tap sent a line longer than {MAX_LINE} bytes"));
        }
    }
}

// === impl Opener ===

impl Opener {
    /// Opens `sidecar`'s tap: the stream of its lines.
    async fn open(&self, sidecar: &Sidecar, filter: &TapFilter) -> Result<Incoming, Failure> {
        let (url, bearer) = if self.direct {
            let query = filter.to_query();
            let separator = if query.is_empty() { "" } else { "?" };
            let url = format!(
                "http://{}{}{separator}{query}",
                sidecar.admin,
                AdminPath::Tap
            );
            (url, None)
        } else {
            let url = self
                .registry
                .tap_url(&sidecar.service, &sidecar.id, filter)
                .map_err(|e| Failure::Fatal(e.into()))?;
            (url, self.token.as_deref())
        };
        let mut request = Request::get(&url);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| Failure::Fatal(invalid_url(&url, &e.to_string())))?;
        let response = tokio::time::timeout(HEAD_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| Failure::Transient(format!("no answer within {HEAD_TIMEOUT:?}")))?
            .map_err(|e| {
                let whom = if self.direct {
                    "its admin port"
                } else {
                    "the registry"
                };
                Failure::Transient(format!("{whom} is unreachable ({})", root_cause(&e)))
            })?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response.into_body());
        }
        let body = tokio::time::timeout(
            HEAD_TIMEOUT,
            Limited::new(response.into_body(), MAX_REFUSAL).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|body| body.to_bytes())
        .unwrap_or_default();
        if self.direct {
            return Err(self.sidecar_refusal(sidecar, status, &body));
        }
        Err(registry_refusal(sidecar, &url, status, &body))
    }

    /// A sidecar's own refusal (`--direct`): 400 names the parameter it refused.
    fn sidecar_refusal(&self, sidecar: &Sidecar, status: StatusCode, body: &[u8]) -> Failure {
        let said = String::from_utf8_lossy(body);
        let said = said.lines().next().unwrap_or_default().trim();
        let source = SidecarError::Unreachable {
            admin: sidecar.admin.clone(),
            reason: format!("it answered {status} to {}: {said}", AdminPath::Tap),
        };
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                Failure::Transient(format!("it has as many taps open as it allows ({said})"))
            }
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => Failure::Fatal(Error::Sidecar {
                sidecar: sidecar.to_string(),
                source,
            }),
            _ => Failure::Transient(source.to_string()),
        }
    }
}

/// The registry's refusal, as what failed and whether trying again may help.
fn registry_refusal(sidecar: &Sidecar, url: &str, status: StatusCode, body: &[u8]) -> Failure {
    let Some(refused) = ClientError::from_relay(url, status.as_u16(), body) else {
        return Failure::Transient(format!("the registry answered {status}"));
    };
    if refused.is_no_route() {
        return Failure::NoRelay;
    }
    let message = match &refused {
        ClientError::Api { detail, .. } => detail.message.clone(),
        other => other.to_string(),
    };
    let fatal = |code: &str, message: String| {
        Failure::Fatal(Error::Registry(ClientError::Api {
            status: status.as_u16(),
            detail: ErrorDetail {
                code: code.to_owned(),
                message,
                field: None,
            },
        }))
    };
    match refused.code().unwrap_or_default() {
        "unauthorized" => fatal(
            "unauthorized",
            format!("the registry needs the operator token to tap (--token): {message}"),
        ),
        "forbidden" => fatal(
            "forbidden",
            format!("the registry lets only the operator token tap (--token): {message}"),
        ),
        "not_found" => Failure::Gone("it is no longer registered".to_owned()),
        "no_admin" => Failure::Gone(format!("{sidecar} registers no admin address any more")),
        "invalid_argument" => Failure::Fatal(Error::Registry(refused)),
        _ => Failure::Transient(message),
    }
}

fn invalid_url(url: &str, reason: &str) -> Error {
    Error::Registry(ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    })
}

/// The innermost cause of a client error: "connection refused" rather than "client
/// error (Connect)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// One tapped call: the JSON object as the sidecar wrote it with `-o json`, one line of
/// text for people otherwise. A line that is not a call is noted, not printed.
fn print(format: Format, sidecar: &str, line: &str, out: &mut dyn Write) -> Result<(), Error> {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => {
            let shown: String = line.chars().take(80).collect();
            output::note(&format!(
                "note: {sidecar} sent a line that is not a call: {shown}"
            ));
            return Ok(());
        }
    };
    if format == Format::Json {
        output::json_line(out, &value)?;
    } else {
        let Ok(event) = serde_json::from_value::<CallEvent>(value) else {
            let shown: String = line.chars().take(80).collect();
            output::note(&format!(
                "note: {sidecar} sent a call meshctl cannot read: {shown}"
            ));
            return Ok(());
        };
        writeln!(out, "{}", human(sidecar, &event))?;
    }
    out.flush()?;
    Ok(())
}

/// A call on one line: time, sidecar, direction, service, method and path, status,
/// duration, then tries, endpoint, mesh error and trace id where there are any. Every
/// field is escaped, so none can break the line.
pub fn human(sidecar: &str, e: &CallEvent) -> String {
    let time = e
        .time
        .split_once('T')
        .map_or(e.time.as_str(), |(_, time)| time.trim_end_matches('Z'));
    let time: String = time.chars().take(12).collect();
    let mut status = match (e.status, e.grpc_status) {
        (Some(status), Some(grpc)) => format!("{status} grpc={grpc}"),
        (Some(status), None) => status.to_string(),
        (None, _) => "-".to_owned(),
    };
    if e.failed {
        status.push_str(" broken");
    }
    let request = match (&e.method, &e.path) {
        (Some(method), Some(path)) => format!("{method} {path}"),
        (None, Some(path)) => path.clone(),
        _ => e.kind.clone(),
    };
    let mut line = format!(
        "{time}  {sidecar}  {:<8}  {}  {request}  {status}  {:.1}ms",
        e.direction, e.service, e.duration_ms
    );
    if e.tries > 1 || (e.direction == "outbound" && e.tries > 0) {
        line.push_str(&format!("  tries={}", e.tries));
    }
    let extra = [
        ("endpoint", &e.endpoint),
        ("mesh-error", &e.mesh_error),
        ("trace", &e.trace_id),
    ];
    for (name, value) in extra {
        if let Some(value) = value {
            line.push_str(&format!("  {name}={value}"));
        }
    }
    output::escape(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_reads_on_one_line_with_what_it_has() {
        let inbound = CallEvent {
            time: "2026-12-08T10:00:01.123456Z".into(),
            direction: "inbound".into(),
            kind: "request".into(),
            service: "web".into(),
            method: Some("GET".into()),
            path: Some("/orders/7\n\x1b[2J".into()),
            status: Some(200),
            duration_ms: 3.25,
            ..CallEvent::default()
        };
        assert_eq!(
            human("web/web-1", &inbound),
            r"10:00:01.123  web/web-1  inbound   web  GET /orders/7\n\x1b[2J  200  3.2ms"
        );
        let outbound = CallEvent {
            direction: "outbound".into(),
            service: "recs".into(),
            status: Some(503),
            grpc_status: Some(14),
            tries: 3,
            endpoint: Some("10.0.0.7:4143".into()),
            mesh_error: Some("no-endpoints".into()),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            ..inbound
        };
        let line = human("web/web-1", &outbound);
        assert!(
            line.ends_with(
                "503 grpc=14  3.2ms  tries=3  endpoint=10.0.0.7:4143  mesh-error=no-endpoints  \
                 trace=4bf92f3577b34da6a3ce929d0e0e4736"
            ),
            "{line}"
        );
    }

    #[test]
    fn without_via_the_filter_is_the_services_inbound_calls() {
        let args = |via: Option<&str>, direction: Option<&str>| TapArgs {
            service: "web".into(),
            direction: direction.map(str::to_owned),
            path_prefix: Some("/api".into()),
            method: Some("get".into()),
            status: None,
            max_rps: Some(5),
            via: via.map(str::to_owned),
        };
        assert_eq!(
            filter(&args(None, None)).to_query(),
            "service=web&direction=inbound&path_prefix=/api&method=GET&max_rps=5"
        );
        assert_eq!(
            filter(&args(Some("caller-1"), Some("outbound"))).to_query(),
            "service=web&direction=outbound&path_prefix=/api&method=GET&max_rps=5"
        );
        assert_eq!(
            filter(&args(Some("caller-1"), None)).to_query(),
            "service=web&path_prefix=/api&method=GET&max_rps=5"
        );
    }
}
