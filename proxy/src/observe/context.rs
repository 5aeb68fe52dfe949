//! W3C trace context (`traceparent`): read from a request, and the context this hop
//! creates written back for the next one.
//!
//! `version-trace_id-parent_id-flags`, e.g.
//! `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. A header that does not
//! parse, or whose ids are all zeros, counts as absent (the W3C rule): the hop starts a
//! new trace.

use http::HeaderValue;

pub const TRACEPARENT: &str = "traceparent";

/// The "sampled" bit of the flags.
const SAMPLED: u8 = 0x01;

/// This hop's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// This hop's span.
    pub span_id: [u8; 8],
    /// The caller's span, when the request carried one.
    pub parent: Option<[u8; 8]>,
    /// This hop records a span (and tells the next hop to).
    pub sampled: bool,
}

/// What an incoming `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

// === impl Parent ===

impl Parent {
    pub fn parse(value: &HeaderValue) -> Option<Parent> {
        let s = value.to_str().ok()?;
        let b = s.as_bytes();
        // Version 00 is exactly 55 bytes; a later version may append fields after a '-'.
        if b.len() < 55 || (b.len() > 55 && (b[55] != b'-' || &s[..2] == "00")) {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' || &s[..2] == "ff" {
            return None;
        }
        let _version: [u8; 1] = hex(&s[0..2])?;
        let trace_id: [u8; 16] = hex(&s[3..35])?;
        let span_id: [u8; 8] = hex(&s[36..52])?;
        let [flags]: [u8; 1] = hex(&s[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Parent {
            trace_id,
            span_id,
            sampled: flags & SAMPLED != 0,
        })
    }
}

// === impl Trace ===

impl Trace {
    /// A child of `parent`, or the root of a new trace (`sampled` decides a root's fate).
    pub fn child_of(parent: Option<Parent>, root_sampled: impl FnOnce(&[u8; 16]) -> bool) -> Trace {
        let span_id = nonzero(rand::random::<u64>()).to_be_bytes();
        match parent {
            Some(p) => Trace {
                trace_id: p.trace_id,
                span_id,
                parent: Some(p.span_id),
                sampled: p.sampled,
            },
            None => {
                let trace_id = nonzero128(rand::random::<u128>()).to_be_bytes();
                let sampled = root_sampled(&trace_id);
                Trace {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled,
                }
            }
        }
    }

    /// The `traceparent` that makes this hop's span the next hop's parent. Written byte
    /// by byte: it is made for every request while tracing is on.
    pub fn header(&self) -> HeaderValue {
        let mut value = [b'-'; 55];
        value[..2].copy_from_slice(b"00");
        hex_into(&mut value[3..35], &self.trace_id);
        hex_into(&mut value[36..52], &self.span_id);
        hex_into(
            &mut value[53..55],
            &[if self.sampled { SAMPLED } else { 0 }],
        );
        HeaderValue::from_bytes(&value).expect("hex digits make a header value")
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        to_hex(&self.span_id)
    }
}

/// Whether a new trace is sampled at `ratio`, decided by its id alone (as OpenTelemetry's
/// `TraceIdRatioBased` does): every hop that decides on one trace decides alike.
pub fn ratio_sampled(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    (low as f64) < ratio * (u64::MAX as f64)
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_into(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are UTF-8")
}

/// Lower-case hex of `bytes` into `out`, two digits per byte.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Lower-case hex only, as the W3C format requires.
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn nonzero(n: u64) -> u64 {
    n.max(1)
}

fn nonzero128(n: u128) -> u128 {
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<Parent> {
        Parent::parse(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn reads_the_w3c_example_and_writes_a_child_in_the_same_trace() {
        let parent = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(parent.sampled);
        let child = Trace::child_of(Some(parent), |_| false);
        assert_eq!(child.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(child.parent, Some(parent.span_id));
        assert_ne!(child.span_id, parent.span_id);
        let written = child.header();
        let again = Parent::parse(&written).unwrap();
        assert_eq!(
            (again.trace_id, again.span_id),
            (child.trace_id, child.span_id)
        );
        assert!(again.sampled);
    }

    #[test]
    fn malformed_or_zero_contexts_count_as_absent() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra").is_some());
    }

    #[test]
    fn a_root_follows_the_ratio_and_a_child_its_parent() {
        assert!(Trace::child_of(None, |_| true).sampled);
        assert!(!Trace::child_of(None, |_| false).sampled);
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!Trace::child_of(unsampled, |_| true).sampled);
        let sampled = (0..10_000)
            .filter(|_| ratio_sampled(0.25, &rand::random::<u128>().to_be_bytes()))
            .count();
        assert!(
            (2_000..3_000).contains(&sampled),
            "{sampled} of 10000 at 0.25"
        );
        assert!(!ratio_sampled(0.0, &[0xff; 16]));
    }
}
