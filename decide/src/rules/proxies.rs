//! One proxy's reports cannot alone roll back or advance a canary when the
//! other proxies' reports disagree.
//!
//! A proxy's sync token can only report as that proxy, and a report far
//! above its usual volume is not counted, but a compromised sidecar can
//! still make up numbers under its own name. So when two or more proxies
//! reported canary requests in the window, the verdict is also read
//! without the proxy that reported the most of them:
//!
//! - a CRITICAL verdict (a rollback) that is HEALTHY without it holds;
//! - a HEALTHY verdict (a step up, a promotion) that is CRITICAL or
//!   DEGRADED without it holds;
//!
//! as DEGRADED with the reason `proxies_disagree`, naming the proxy. When
//! the others have too few requests for a verdict of their own, they do
//! not disagree, and the whole window decides: a proxy that carries most
//! of the canary's traffic is heard. DEGRADED and INSUFFICIENT_DATA hold
//! anyway and are left as they are.
//!
//! The post-promotion watch likewise, with the proxy that reported the most
//! of the new baseline's requests in the watch's window: a CRITICAL verdict
//! (a revert) that is HEALTHY without it, or a HEALTHY one that is CRITICAL
//! without it (a breach one proxy's numbers would drown), holds as DEGRADED
//! with `proxies_disagree`: nothing is reverted, and the engine reports the
//! hold once (`engine/watch.rs`).

use crate::verdict::{Reason, ReasonCode, Recommendation, Verdict, VerdictKind};
use crate::window::Loudest;
use serde_json::json;

/// What a verdict acts on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Subject<'a> {
    /// A canary: CRITICAL rolls it back, HEALTHY advances it.
    Canary,
    /// The post-promotion watch of this version: CRITICAL reverts it,
    /// HEALTHY keeps it.
    Watch(&'a str),
}

/// `whole`, or a hold when the verdict without the loudest proxy `l`
/// (`judge(others)`) contradicts it.
pub(super) fn corroborate<T>(
    whole: Verdict,
    subject: Subject<'_>,
    (l, others): (&Loudest, &T),
    judge: impl FnOnce(&T) -> Verdict,
) -> Verdict {
    let acts = match (whole.verdict, subject) {
        (VerdictKind::Critical, Subject::Canary) => "roll back the canary".to_string(),
        (VerdictKind::Healthy, Subject::Canary) => "advance the canary".to_string(),
        (VerdictKind::Critical, Subject::Watch(version)) => format!("revert {version}"),
        (VerdictKind::Healthy, Subject::Watch(version)) => format!("keep {version}"),
        _ => return whole,
    };
    let without = judge(others);
    let disagree = match whole.verdict {
        VerdictKind::Critical => without.verdict == VerdictKind::Healthy,
        _ => matches!(
            without.verdict,
            VerdictKind::Critical | VerdictKind::Degraded
        ),
    };
    if !disagree {
        return whole;
    }
    let rest = l.proxies.saturating_sub(1);
    let requests = match subject {
        Subject::Canary => "canary requests".to_string(),
        Subject::Watch(version) => format!("requests of {version} in its watch's window"),
    };
    let message = format!(
        "proxy {} ({} of {} {requests}) alone would {acts} ({}: {}); \
         {} {} ({}): holding until they agree",
        l.proxy,
        l.requests,
        l.total,
        whole.verdict.as_str(),
        whole.summary(),
        if rest == 1 {
            "the other proxy says".to_string()
        } else {
            format!("the other {rest} proxies say")
        },
        without.verdict.as_str(),
        without.summary(),
    );
    let (theirs, all) = match subject {
        Subject::Canary => ("proxy_canary_requests", "canary_requests"),
        Subject::Watch(_) => ("proxy_requests", "requests"),
    };
    let numbers = json!({
        "proxy": l.proxy,
        theirs: l.requests,
        all: l.total,
        "proxies": l.proxies,
        "with_proxy": whole.verdict.as_str(),
        "without_proxy": without.verdict.as_str(),
    });
    Verdict {
        verdict: VerdictKind::Degraded,
        recommendation: Recommendation::Hold,
        reasons: vec![Reason::new(ReasonCode::ProxiesDisagree, message, numbers)],
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::testing::{T0, kinds, with_canary};
    use crate::engine::{Deployment, Step, step};
    use crate::observe::observe;
    use crate::policy::Policy;
    use crate::verdict::{ReasonCode, VerdictKind};
    use crate::window::{Reported, Windows, bucket_seconds, proxy_bucket_seconds, twenty_ms};
    use coalmine_protocol::Role;

    /// One report of `proxy`, counted as the controller counts it: into the
    /// whole window and into the proxy's own series.
    fn report(w: &mut Windows, proxy: &str, role: Role, second: u64, ok: u64, errors: u64) {
        let (counts, h) = twenty_ms(ok, errors);
        let r = Reported::requests(&counts, &h);
        let version = if role == Role::Canary { "v2" } else { "v1" };
        let window = Policy::default().window_seconds;
        w.add(
            "heart-prod",
            role,
            version,
            second - second % bucket_seconds(window),
            &r,
        );
        let at = second - second % proxy_bucket_seconds(window);
        w.proxies.add("heart-prod", role, version, proxy, at, &r);
    }

    /// A minute of ordinary traffic from `proxies`, the canary at 20 %,
    /// `canary_errors` of every 40 canary requests failing.
    fn minute(w: &mut Windows, proxies: &[&str], canary_errors: u64) {
        let start = T0 / 1000;
        for s in start..start + 60 {
            for p in proxies {
                report(w, p, Role::Baseline, s, 160, 0);
                report(w, p, Role::Canary, s, 40 - canary_errors, canary_errors);
            }
        }
    }

    fn decide(w: &Windows, d: &Deployment) -> Step {
        step(d, &observe(w, d, T0 + 60_000), T0 + 60_000)
    }

    #[test]
    fn one_proxy_cannot_roll_back_a_canary_the_others_find_healthy() {
        let d = with_canary(Policy::default());
        let mut w = Windows::default();
        minute(&mut w, &["a", "b"], 0);
        // proxy c makes up 3 000 failing canary requests.
        report(&mut w, "c", Role::Canary, T0 / 1000 + 59, 0, 3000);
        let s = decide(&w, &d);
        let v = s.verdict.unwrap();
        assert_eq!(v.verdict, VerdictKind::Degraded, "{v:?}");
        let r = v.reason(ReasonCode::ProxiesDisagree).unwrap();
        assert!(
            r.message
                .starts_with("proxy c (3000 of 7800 canary requests) alone would roll back")
                && r.message.contains("the other 2 proxies say HEALTHY"),
            "{}",
            r.message
        );
        assert_eq!(kinds(&s.transition), ["health_degraded"]);
        assert!(s.transition.deployment.canary.is_some());

        // The same report with no other proxy serving the canary decides.
        let mut alone = Windows::default();
        report(&mut alone, "a", Role::Baseline, T0 / 1000 + 59, 9000, 0);
        report(&mut alone, "c", Role::Canary, T0 / 1000 + 59, 0, 3000);
        let s = decide(&alone, &d);
        assert_eq!(s.verdict.unwrap().verdict, VerdictKind::Critical);
        assert!(kinds(&s.transition).contains(&"rolled_back"));
    }

    #[test]
    fn a_failing_canary_seen_by_every_proxy_is_rolled_back() {
        let d = with_canary(Policy::default());
        let mut w = Windows::default();
        minute(&mut w, &["a", "b", "c"], 20);
        let s = decide(&w, &d);
        assert_eq!(s.verdict.unwrap().verdict, VerdictKind::Critical);
        assert!(kinds(&s.transition).contains(&"rolled_back"));
    }

    #[test]
    fn one_proxy_cannot_drown_the_others_errors() {
        let d = with_canary(Policy::default());
        let mut w = Windows::default();
        // a and b see 20 % canary errors, against none on the baseline.
        minute(&mut w, &["a", "b"], 8);
        // c makes up a million successful canary requests.
        report(&mut w, "c", Role::Canary, T0 / 1000 + 59, 1_000_000, 0);
        let whole = crate::rules::judge(&Policy::default(), &observe(&w, &d, T0 + 60_000));
        assert_eq!(whole.verdict, VerdictKind::Healthy, "{whole:?}");
        let s = decide(&w, &d);
        let v = s.verdict.unwrap();
        assert_eq!(v.verdict, VerdictKind::Degraded, "{v:?}");
        let r = v.reason(ReasonCode::ProxiesDisagree).unwrap();
        assert!(r.message.contains("alone would advance"), "{}", r.message);
        assert_eq!(r.numbers["without_proxy"], "CRITICAL");
    }
}
