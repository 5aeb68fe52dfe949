//! Reading the Prometheus text every binary of the mesh serves on `/metrics`.

/// The value of one exact series (`name{labels}` as the text spells it, or a bare name)
/// in a Prometheus text body.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// [`metric`], 0 where the series is absent: a labelled counter is only written once it
/// has counted.
pub fn metric_or_zero(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

/// The sum of every series of metric `name` whose labels include `label`
/// (`service="web"`), in a Prometheus text body; 0 without any.
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .map(|(_, value)| value.trim().parse::<f64>().unwrap())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE up gauge\nup 1\nup_total 7\n\
        hits{route=\"a\",code=\"200\"} 2\nhits{route=\"b\",code=\"200\"} 3\n\
        hits{route=\"a\",code=\"500\"} 4\n";

    #[test]
    fn a_series_is_matched_whole_and_a_sum_by_one_label() {
        assert_eq!(metric(TEXT, "up"), Some(1.0));
        assert_eq!(metric(TEXT, r#"hits{route="b",code="200"}"#), Some(3.0));
        assert_eq!(metric(TEXT, "down"), None);
        assert_eq!(metric_or_zero(TEXT, "down"), 0.0);
        assert_eq!(metric_sum(TEXT, "hits", r#"route="a""#), 6.0);
        assert_eq!(metric_sum(TEXT, "hits", r#"code="200""#), 5.0);
        assert_eq!(metric_sum(TEXT, "misses", r#"code="200""#), 0.0);
    }
}
