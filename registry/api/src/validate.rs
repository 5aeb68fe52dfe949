//! Name and address rules of the contract, checked the same way by the server and by
//! clients (which refuse to send what the server would reject).

use std::net::Ipv6Addr;

/// Longest instance id.
pub const MAX_INSTANCE_ID: usize = 128;

/// A service name: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`, a DNS label.
pub fn service_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && alnum(&bytes[0])
        && alnum(&bytes[bytes.len() - 1]);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name {name:?} must be 1-63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// An instance id: `[A-Za-z0-9._-]{1,128}`, not dots alone. An id is a path segment
/// (`/v1/services/{service}/instances/{id}`), and `.` or `..` there are rewritten by URL
/// resolvers (browsers, `fetch`, proxies) into another path.
pub fn instance_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.bytes().all(|b| b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "instance id {id:?} must be 1-{MAX_INSTANCE_ID} characters from A-Z a-z 0-9 . _ -, \
             and not dots alone"
        ))
    }
}

/// A dialable `host:port`: a DNS name, an IPv4 address or a bracketed IPv6 address, and a
/// port from 1 to 65535.
pub fn address(addr: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("address {addr:?} {why}"));
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return bad("must be [ipv6]:port");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("has an invalid IPv6 address");
        }
        (None, port)
    } else {
        let Some((host, port)) = addr.rsplit_once(':') else {
            return bad("must be host:port");
        };
        if host.contains(':') {
            return bad("must put an IPv6 address in brackets: [ipv6]:port");
        }
        (Some(host), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return bad("must end in a port from 1 to 65535"),
    }
    if let Some(host) = host
        && !is_hostname(host)
    {
        return bad("has an invalid host: use a DNS name or an IP address");
    }
    Ok(())
}

/// RFC 1123 host names (which also covers dotted IPv4 addresses).
fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for good in ["a", "recommendations", "web-1", "0", &"a".repeat(63)] {
            assert!(service_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "ü", &"a".repeat(64)] {
            assert!(service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids() {
        for good in [
            "a",
            "pod-7f9c.default_1",
            &"x".repeat(128),
            ".a",
            "a..",
            "-",
        ] {
            assert!(instance_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129), ".", "..", "..."] {
            assert!(instance_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for good in [
            "127.0.0.1:4143",
            "recommendations-1:4143",
            "a.b.svc.cluster.local:1",
            "[::1]:65535",
        ] {
            assert!(address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:65536",
            "host:+80",
            "host:http",
            "::1:80",
            "[::1]80",
            "[zz]:80",
            "bad_host:80",
            "-a:80",
            "a..b:80",
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
    }
}
