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

/// The order in which round `rep` of `reps` measures `n` configurations:
/// the configurations in turn, starting further along each round, so that
/// no configuration is always measured first or last. (Within a round the
/// machine drifts: a fixed order charges the drift to the configurations
/// measured last.)
pub fn round_order(n: usize, rep: usize, reps: usize) -> impl Iterator<Item = usize> {
    let shift = match n {
        0 => 0,
        _ => rep.saturating_mul(n.div_ceil(reps.max(1))) % n,
    };
    (0..n).map(move |k| (k + shift) % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_measures_every_configuration_once_starting_elsewhere() {
        let (n, reps) = (9, 5);
        let orders: Vec<Vec<usize>> = (0..reps)
            .map(|rep| round_order(n, rep, reps).collect())
            .collect();
        for order in &orders {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        }
        let firsts: Vec<usize> = orders.iter().map(|o| o[0]).collect();
        assert_eq!(firsts, [0, 2, 4, 6, 8]);
        // The filter's place (4) is last in no round and first in one.
        let places: Vec<usize> = orders
            .iter()
            .map(|o| o.iter().position(|&i| i == 4).unwrap_or(n))
            .collect();
        assert_eq!(places, [4, 2, 0, 7, 5]);
        assert_eq!(round_order(0, 3, 5).count(), 0);
        assert_eq!(round_order(3, 1, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(round_order(3, 1, 0).collect::<Vec<_>>(), [0, 1, 2]);
    }

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
