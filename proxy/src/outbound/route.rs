//! How a listener names the destination of its requests.

use http::{Request, header};

/// How a listener names the destination of its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every request goes to this service (an `--upstream NAME=ADDR` listener).
    Fixed { service: String, port: Option<u16> },
    /// The host part of `Host` / `:authority` is the service name; a port part only
    /// matters for names resolved through DNS.
    ByHost,
}

// === impl Route ===

impl Route {
    /// The destination service (lowercased) and the port the caller named, if any.
    pub fn destination<B>(&self, request: &Request<B>) -> Option<(String, Option<u16>)> {
        match self {
            Route::Fixed { service, port } => Some((service.clone(), *port)),
            Route::ByHost => {
                let from_host;
                let authority = match request.uri().authority() {
                    Some(authority) => authority,
                    None => {
                        let host = request.headers().get(header::HOST)?;
                        from_host = http::uri::Authority::try_from(host.as_bytes()).ok()?;
                        &from_host
                    }
                };
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                (!host.is_empty()).then(|| (host.to_ascii_lowercase(), authority.port_u16()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_host_names_the_service_and_its_port_is_kept_for_dns() {
        let r = Route::ByHost;
        assert_eq!(
            r.destination(&req("/", Some("recommendations"))),
            Some(("recommendations".into(), None))
        );
        assert_eq!(
            r.destination(&req("/", Some("Web:8080"))),
            Some(("web".into(), Some(8080)))
        );
        assert_eq!(
            r.destination(&req("http://api.example.com/x", None)),
            Some(("api.example.com".into(), None))
        );
        assert_eq!(r.destination(&req("/", None)), None);
        let fixed = Route::Fixed {
            service: "recommendations".into(),
            port: None,
        };
        assert_eq!(
            fixed.destination(&req("/", Some("localhost:50051"))),
            Some(("recommendations".into(), None))
        );
    }
}
