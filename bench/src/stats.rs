//! Order statistics of benchmark samples (pure).

/// The nearest-rank `q`-quantile (0 < q ≤ 1) of `values`; `None` when empty.
/// Nearest rank never interpolates, so a p99 of few samples is their maximum:
/// conservative for latency goals.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// The median (the lower middle for an even count, by nearest rank).
pub fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// Rounds to `digits` decimals, for a readable JSON.
pub fn round(value: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (value * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median(&v), Some(5.0));
        assert_eq!(quantile(&v, 0.95), Some(10.0));
        assert_eq!(quantile(&v, 0.9), Some(9.0));
        assert_eq!(quantile(&v, 0.01), Some(1.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 4.0]), Some(4.0));
    }

    #[test]
    fn rounding() {
        assert_eq!(round(1.23456, 2), 1.23);
        assert_eq!(round(-0.005, 1), -0.0);
    }
}
