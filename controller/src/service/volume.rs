//! Each proxy's report volume, capped relative to its own history: a
//! report (one worker's second) with more than [`FACTOR`] times what that
//! proxy's reports usually carry (and above [`FLOOR`]) is not counted, so
//! one proxy cannot swamp the windows with a sudden flood of made-up
//! requests (a stolen sync token, a bug). Its usual volume is the mean of
//! the reports it was allowed, an exponentially weighted average; a capped
//! report moves it up by at most the cap, so a real surge is admitted
//! within a few reports while a one-off flood is not.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// A report above this many times the proxy's usual volume is capped.
pub(crate) const FACTOR: f64 = 4.0;
/// Reports of at most this many requests are never capped: a quiet proxy
/// whose traffic bursts (a batch job, a test) is counted whole; the cap is
/// for floods, not for ordinary bursts of a worker's second.
pub(crate) const FLOOR: u64 = 10_000;
/// Reports a proxy sends before its history counts.
const WARMUP: u32 = 5;
/// Weight of each report in the proxy's usual volume.
const ALPHA: f64 = 0.2;
/// Proxies remembered (least recently heard from forgotten).
const PROXIES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Usual {
    mean: f64,
    reports: u32,
}

/// What became of a report.
#[derive(Debug, PartialEq)]
pub(crate) enum Admitted {
    Yes,
    /// Over the cap: not counted.
    Capped {
        requests: u64,
        cap: u64,
    },
}

/// Whether a report of `requests` is admitted against `usual`, and the
/// usual volume after it.
fn admit(usual: Option<Usual>, requests: u64) -> (Admitted, Usual) {
    let Some(u) = usual.filter(|u| u.reports >= WARMUP) else {
        let u = usual.unwrap_or(Usual {
            mean: requests as f64,
            reports: 0,
        });
        let mean = if u.reports == 0 {
            requests as f64
        } else {
            u.mean + ALPHA * (requests as f64 - u.mean)
        };
        return (
            Admitted::Yes,
            Usual {
                mean,
                reports: u.reports + 1,
            },
        );
    };
    let cap = ((u.mean * FACTOR).ceil() as u64).max(FLOOR);
    let (admitted, counted) = if requests > cap {
        (Admitted::Capped { requests, cap }, cap)
    } else {
        (Admitted::Yes, requests)
    };
    let next = Usual {
        mean: u.mean + ALPHA * (counted as f64 - u.mean),
        reports: u.reports.saturating_add(1),
    };
    (admitted, next)
}

/// The usual volume of every proxy.
#[derive(Debug)]
pub(crate) struct Volumes(Mutex<LruCache<String, Usual>>);

impl Default for Volumes {
    fn default() -> Self {
        Volumes(Mutex::new(LruCache::new(
            NonZeroUsize::new(PROXIES).unwrap_or(NonZeroUsize::MIN),
        )))
    }
}

impl Volumes {
    /// Whether `proxy`'s report of `requests` is counted.
    pub(crate) fn admit(&self, proxy: &str, requests: u64) -> Admitted {
        let Ok(mut proxies) = self.0.lock() else {
            return Admitted::Yes;
        };
        let (admitted, next) = admit(proxies.get(proxy).copied(), requests);
        proxies.put(proxy.to_string(), next);
        admitted
    }

    pub(crate) fn forget(&self) {
        if let Ok(mut p) = self.0.lock() {
            p.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(reports: &[u64]) -> Vec<bool> {
        let mut usual = None;
        reports
            .iter()
            .map(|&r| {
                let (a, next) = admit(usual, r);
                usual = Some(next);
                a == Admitted::Yes
            })
            .collect()
    }

    #[test]
    fn a_sudden_flood_is_capped_and_a_real_surge_admitted_soon() {
        // Warm-up at 5 000 a report, then ten times as much at once.
        let mut reports = vec![5_000; 10];
        reports.push(50_000);
        assert_eq!(run(&reports).last(), Some(&false));
        // Up to four times the usual passes.
        let mut steady = vec![5_000; 10];
        steady.push(20_000);
        assert_eq!(run(&steady).last(), Some(&true));
        // A flood far above the usual stays capped for a while; a real
        // surge (a sustained ×10) is admitted within a handful of reports.
        let mut surge = vec![5_000; 10];
        surge.extend([50_000; 12]);
        let admitted = run(&surge);
        let first = admitted.iter().skip(10).position(|a| *a);
        assert!(
            matches!(first, Some(n) if (2..=8).contains(&n)),
            "{admitted:?}"
        );
        // A one-off made-up report of 2^40 requests: capped.
        let mut huge = vec![200; 10];
        huge.push(1 << 40);
        // A burst from a quiet proxy, up to the floor: counted whole.
        let mut burst = vec![5; 10];
        burst.push(800);
        assert_eq!(run(&burst).last(), Some(&true));
        assert_eq!(run(&huge).last(), Some(&false));
        // Small reports are never capped, however quiet the proxy was.
        let mut quiet = vec![1; 10];
        quiet.push(FLOOR);
        assert_eq!(run(&quiet).last(), Some(&true));
        // During the warm-up nothing is capped.
        assert!(run(&[10, 10_000, 3]).iter().all(|a| *a));
    }
}
