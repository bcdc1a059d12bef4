//! The policy on arbitrary numbers: any policy the API would accept (parsed
//! from the fuzz input's JSON, or the default) and any statistics, including
//! counts at the limits, NaN and infinite latencies, and shares outside 0..1.
//! With or without the same window read without one proxy (any numbers:
//! the rule that one proxy cannot decide alone). `evaluate` never panics,
//! always gives at least one reason, and only recommends a rollback with a
//! CRITICAL verdict.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use coalmine_decide::observe::{Observations, Others};
use coalmine_decide::policy::Policy;
use coalmine_decide::rules::evaluate;
use coalmine_decide::verdict::{Recommendation, VerdictKind};
use coalmine_decide::window::{Loudest, RoleWindowStats, error_rate};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Role {
    requests: u64,
    errors: u64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Role {
    /// As the windows build them: errors never exceed requests.
    fn stats(&self) -> RoleWindowStats {
        let errors = self.errors.min(self.requests);
        RoleWindowStats {
            requests: self.requests,
            errors,
            error_rate: error_rate(errors, self.requests),
            p50_ms: self.p50_ms,
            p95_ms: self.p95_ms,
            p99_ms: self.p99_ms,
            ..RoleWindowStats::default()
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    baseline: Role,
    canary: Role,
    canary_slow: u64,
    step_canary_requests: u64,
    step_requests: u64,
    configured_share: f64,
    others: Option<Without>,
}

/// The window without the proxy that reported the most canary requests.
#[derive(Debug, Arbitrary)]
struct Without {
    proxy: String,
    requests: u64,
    total: u64,
    proxies: usize,
    baseline: Role,
    canary: Role,
    canary_slow: u64,
}

impl Without {
    fn others(&self) -> Box<Others> {
        Box::new(Others {
            without: Loudest {
                proxy: self.proxy.clone(),
                requests: self.requests,
                total: self.total,
                proxies: self.proxies,
            },
            obs: Observations {
                canary_slow: self.canary_slow,
                ..Observations::of(self.baseline.stats(), self.canary.stats())
            },
        })
    }
}

fuzz_target!(|data: &[u8]| {
    // The first line is a policy as JSON; the rest drives the numbers.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(0);
    let (head, rest) = data.split_at(split);
    let policy = serde_json::from_slice::<Policy>(head)
        .ok()
        .filter(|p| p.validate().is_ok())
        .unwrap_or_default();
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(rest)) else {
        return;
    };
    let obs = Observations {
        baseline: input.baseline.stats(),
        canary: input.canary.stats(),
        canary_slow: input.canary_slow,
        step_canary_requests: input.step_canary_requests,
        step_requests: input.step_requests,
        configured_share: input.configured_share,
        watched: None,
        others: input.others.as_ref().map(Without::others),
    };
    let verdict = evaluate(&policy, &obs);
    assert!(!verdict.reasons.is_empty());
    if verdict.recommendation == Recommendation::Rollback {
        assert_eq!(verdict.verdict, VerdictKind::Critical);
    }
    let _ = (verdict.summary(), verdict.numbers());
});
