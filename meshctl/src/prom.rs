//! Reading the Prometheus text format sidecars serve on `/metrics`: just the samples
//! (`name{label="value",…} number`), which is all `top` and `check` need.

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample in `text`; comments, blank lines and lines that do not parse are skipped
/// (a newer sidecar may add what this reader does not know).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(sample)
        .collect()
}

/// The value of the one sample named `name` (a metric without labels), if present.
pub fn value(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value)
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let (labels, rest) = if line[name_end..].starts_with('{') {
        labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value: number(value)?,
    })
}

/// The labels after `{`, and what follows the closing `}`.
fn labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let (value, after) = quoted(after)?;
        labels.push((key.trim().to_owned(), value));
        rest = after;
    }
}

/// A label value up to its closing quote, unescaped, and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// A sample value or an `le` bound: a float, `+Inf`, `-Inf` or `NaN`.
pub fn number(text: &str) -> Option<f64> {
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP x y\n# TYPE x counter\n\
            mesh_requests_total{direction=\"outbound\",service=\"web\"} 26\n\
            mesh_registry_connected 1\n\
            mesh_response_latency_seconds_bucket{service=\"web\",le=\"+Inf\"} 3 1700000000\n\
            odd{a=\"q\\\"uote\\\\d\"} NaN\n\
            broken{a=\"x} 1\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0].label("service"), Some("web"));
        assert_eq!(samples[0].value, 26.0);
        assert_eq!(value(&samples, "mesh_registry_connected"), Some(1.0));
        assert_eq!(number(samples[2].label("le").unwrap()), Some(f64::INFINITY));
        assert_eq!(samples[2].value, 3.0);
        assert_eq!(samples[3].label("a"), Some("q\"uote\\d"));
        assert!(samples[3].value.is_nan());
    }
}
