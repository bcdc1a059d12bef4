//! Anytime-valid tests for Bernoulli rates, for decisions checked every
//! second on data that keeps arriving.
//!
//! Robbins' beta-binomial mixture: for successes `x` in `n` trials,
//! `M_n(p0) = B(1 + x, 1 + n - x) / (p0^x (1 - p0)^(n - x))` is a
//! nonnegative martingale with `M_0 = 1` when the true rate is `p0`, so by
//! Ville's inequality it exceeds `1/α` at *any* time with probability at most
//! `α`: a test that may be looked at after every request. Inverting it gives
//! confidence sequences. Counting evidence only when the estimate lies on the
//! tested side gives one-sided tests of `p ≤ p0` (the event is increasing in
//! the outcomes, so its probability is largest at `p = p0`).
//! (Robbins 1970; Howard, Ramdas, McAuliffe, Sekhon, Annals of Statistics 2021.)

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// `ln M_n(p0)` for `x` of `n` (two-sided evidence against rate `p0`).
pub fn log_mixture(x: u64, n: u64, p0: f64) -> f64 {
    let x = x.min(n);
    let (s, f) = (x as f64, (n - x) as f64);
    let p0 = p0.clamp(1e-12, 1.0 - 1e-12);
    ln_beta(1.0 + s, 1.0 + f) - s * p0.ln() - f * (1.0 - p0).ln()
}

/// Log evidence that the rate is above `p0` (0 when the estimate is not).
pub fn log_evidence_above(x: u64, n: u64, p0: f64) -> f64 {
    if n == 0 || (x.min(n) as f64) <= p0 * n as f64 {
        0.0
    } else {
        log_mixture(x, n, p0).max(0.0)
    }
}

/// Log evidence that the rate is below `p0` (0 when the estimate is not).
pub fn log_evidence_below(x: u64, n: u64, p0: f64) -> f64 {
    if n == 0 || (x.min(n) as f64) >= p0 * n as f64 {
        0.0
    } else {
        log_mixture(x, n, p0).max(0.0)
    }
}

/// The largest rate not rejected above the estimate at level `alpha`: a
/// one-sided upper confidence sequence.
pub fn upper_bound(x: u64, n: u64, alpha: f64) -> f64 {
    let x = x.min(n);
    if n == 0 || x == n {
        return 1.0;
    }
    let (threshold, mut lo, mut hi) = ((1.0 / alpha).ln(), x as f64 / n as f64, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if log_mixture(x, n, mid) < threshold {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The smallest rate not rejected below the estimate at level `alpha`.
pub fn lower_bound(x: u64, n: u64, alpha: f64) -> f64 {
    let x = x.min(n);
    if n == 0 || x == 0 {
        return 0.0;
    }
    1.0 - upper_bound(n - x, n, alpha)
}

/// A test's outcome, for the verdict's reasons.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    /// The e-value's logarithm; the test passes at `ln(1/α)`.
    pub log_e: f64,
    pub alpha: f64,
}

impl Evidence {
    pub fn passed(&self) -> bool {
        self.log_e >= (1.0 / self.alpha).ln()
    }

    /// The smallest level at which this evidence would reject (`1/e`, at most 1).
    pub fn p_value(&self) -> f64 {
        (-self.log_e).exp().min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn known_values() {
        // 0 of 100: -100 ln(1 - u) = ln(20 · 101) at α = 0.05.
        let u = upper_bound(0, 100, 0.05);
        let want = 1.0 - (-(20.0f64 * 101.0).ln() / 100.0).exp();
        assert!((u - want).abs() < 1e-9, "{u} vs {want}");
        // B(1, 1) / (1/2 · 1/2)… one success, one failure at p0 = 1/2: ln(1/6) - ln(1/4).
        assert!((log_mixture(1, 2, 0.5) - (4.0f64 / 6.0).ln()).abs() < 1e-12);
        // Symmetry and order.
        assert!((lower_bound(30, 100, 0.01) - (1.0 - upper_bound(70, 100, 0.01))).abs() < 1e-12);
        let (l, u) = (lower_bound(30, 100, 0.01), upper_bound(30, 100, 0.01));
        assert!(l < 0.3 && 0.3 < u && l > 0.1 && u < 0.5, "{l} {u}");
        // More data, tighter bounds.
        assert!(upper_bound(300, 1000, 0.01) < u);
        assert_eq!(
            (upper_bound(5, 5, 0.01), lower_bound(0, 5, 0.01)),
            (1.0, 0.0)
        );
        assert_eq!(upper_bound(0, 0, 0.01), 1.0);
    }

    #[test]
    fn one_sided_evidence_counts_only_its_side() {
        assert_eq!(log_evidence_above(1, 100, 0.05), 0.0);
        assert!(log_evidence_above(30, 100, 0.05) > (100.0f64).ln());
        assert_eq!(log_evidence_below(30, 100, 0.05), 0.0);
        assert!(log_evidence_below(0, 1000, 0.05) > (100.0f64).ln());
        let e = Evidence {
            log_e: (1000.0f64).ln(),
            alpha: 0.01,
        };
        assert!(e.passed() && (e.p_value() - 0.001).abs() < 1e-12);
    }

    /// Checked after every observation, the confidence sequence still misses
    /// the true rate at most α of the time (here over 400 sequences of 2000).
    #[test]
    fn coverage_holds_when_looking_after_every_observation() {
        let alpha = 0.05;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for p in [0.01, 0.1, 0.5] {
            let mut missed = 0;
            for _ in 0..400 {
                let mut x = 0;
                for n in 1..=2000u64 {
                    x += u64::from(rng.random_bool(p));
                    if n % 10 == 0
                        && (upper_bound(x, n, alpha / 2.0) < p
                            || lower_bound(x, n, alpha / 2.0) > p)
                    {
                        missed += 1;
                        break;
                    }
                }
            }
            // α = 5 % of 400 is 20; the bound is conservative in practice.
            assert!(
                missed <= 28,
                "p = {p}: {missed} of 400 sequences left the bounds"
            );
        }
    }

    proptest! {
        #[test]
        fn finite_and_ordered(x in 0u64..2_000_000, n in 0u64..2_000_000, p0 in 0.0f64..=1.0, alpha in 0.0001f64..0.5) {
            let m = log_mixture(x, n, p0);
            prop_assert!(m.is_finite());
            let (l, u) = (lower_bound(x, n, alpha), upper_bound(x, n, alpha));
            prop_assert!((0.0..=1.0).contains(&l) && (0.0..=1.0).contains(&u) && l <= u);
            prop_assert!(log_evidence_above(x, n, p0) >= 0.0 && log_evidence_below(x, n, p0) >= 0.0);
        }
    }
}
