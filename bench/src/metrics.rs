//! Reading the nodes' Prometheus (OpenMetrics) text.

/// The sum of every sample of the series `name` (exactly that name, any labels).
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).map(|(_, v)| v).sum()
}

/// `(labels, value)` of each sample of the series `name`.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (series_name == name).then(|| (labels, value.parse().unwrap_or(0.0)))
        })
}

/// The upper bound (seconds) of the bucket that holds quantile `q` of histogram `family`
/// (cumulative `<family>_bucket{le="…"}` samples, as Prometheus' `histogram_quantile`
/// without interpolation). `None` when the histogram is empty.
pub fn histogram_quantile(text: &str, family: &str, q: f64) -> Option<f64> {
    let bucket = format!("{family}_bucket");
    let mut buckets: Vec<(f64, f64)> = samples(text, &bucket)
        .filter_map(|(labels, count)| {
            let le = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le="))?;
            let le = le.trim_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(bound, _)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP tribe_bytes_sent Bytes written to peers.\n\
        # TYPE tribe_bytes_sent counter\n\
        tribe_bytes_sent_total 1500\n\
        tribe_frames_rejected_total{reason=\"bad_tag\"} 2\n\
        tribe_frames_rejected_total{reason=\"too_large\"} 3\n\
        tribe_lag_seconds_bucket{le=\"0.001\"} 50\n\
        tribe_lag_seconds_bucket{le=\"0.002\"} 99\n\
        tribe_lag_seconds_bucket{le=\"+Inf\"} 100\n\
        # EOF\n";

    #[test]
    fn series_are_summed_over_labels() {
        assert_eq!(sum(TEXT, "tribe_bytes_sent_total"), 1500.0);
        assert_eq!(sum(TEXT, "tribe_frames_rejected_total"), 5.0);
        assert_eq!(sum(TEXT, "tribe_bytes_sent"), 0.0);
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        assert_eq!(
            histogram_quantile(TEXT, "tribe_lag_seconds", 0.5),
            Some(0.001)
        );
        assert_eq!(
            histogram_quantile(TEXT, "tribe_lag_seconds", 0.99),
            Some(0.002)
        );
        assert_eq!(
            histogram_quantile(TEXT, "tribe_lag_seconds", 1.0),
            Some(f64::INFINITY)
        );
        assert_eq!(histogram_quantile(TEXT, "nothing", 0.5), None);
    }
}
