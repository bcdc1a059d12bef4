//! The post-promotion watch in `coalmine status`: until when, what the new
//! baseline is compared with, and where it stands.

use super::{ms, pct};
use coalmine_decide::rules::watch::WatchHealth;

/// The watch's lines (after the canary's verdict).
pub(super) fn watch(w: &WatchHealth) -> String {
    let mut out = format!(
        "\nwatch {} after its promotion: {} s left   standing {}{}\n",
        w.version,
        w.seconds_left,
        w.verdict.as_str(),
        if w.breach_reported {
            "   (breach reported; automatic rollback is off)"
        } else {
            ""
        }
    );
    let r = &w.reference;
    out.push_str(&format!(
        "  {} before the promotion: error rate {}, p95 {} over {} requests\n",
        r.version,
        pct(r.error_rate),
        ms(r.p95_ms),
        r.requests
    ));
    let c = &w.current;
    out.push_str(&format!(
        "  {} since the promotion:  error rate {}, p95 {} over {} requests\n",
        w.version,
        pct(c.error_rate),
        ms(c.p95_ms),
        c.requests
    ));
    for reason in &w.reasons {
        out.push_str(&format!("  - {}\n", reason.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use coalmine_client::types::DeploymentView;
    use serde_json::json;

    #[test]
    fn status_shows_the_watch_and_both_versions_numbers() {
        let d: DeploymentView = serde_json::from_value(json!({
            "name": "heart-prod", "state": "stable", "baseline": {"version": "v2", "cluster": "heart-v2"},
            "canary": null, "canary_percent": 0.0, "pinned": {"version": "v1", "cluster": "heart-v1"},
            "cooldown_until": null, "versions_in_play": ["v2"], "epoch": 4, "policy": {},
            "health": {"verdict": "INSUFFICIENT_DATA", "recommendation": "CONTINUE", "window_seconds": 300,
                "reasons": [{"code": "no_canary", "numbers": {}, "message": "no canary in progress; v2 serves all traffic"}],
                "baseline": {"requests": 900, "errors": 3, "error_rate": 0.0033, "p50_ms": 5.0, "p95_ms": 20.0, "p99_ms": 30.0},
                "canary": {"requests": 0, "errors": 0, "error_rate": 0.0, "p50_ms": null, "p95_ms": null, "p99_ms": null},
                "watch": {"version": "v2", "since": 1000, "until": 601000, "seconds_left": 412,
                    "reference": {"version": "v1", "requests": 1000, "errors": 10, "error_rate": 0.01, "p95_ms": 100.0},
                    "current": {"requests": 800, "errors": 4, "error_rate": 0.005, "p50_ms": 40.0, "p95_ms": 98.0, "p99_ms": 120.0},
                    "verdict": "HEALTHY", "breach_reported": false,
                    "reasons": [{"code": "healthy", "numbers": {}, "message": "v2 within limits since its promotion"}]}}
        }))
        .unwrap();
        let out = super::super::status(&d);
        for want in [
            "watch v2 after its promotion: 412 s left   standing HEALTHY",
            "v1 before the promotion: error rate 1.00 %, p95 100.0 ms over 1000 requests",
            "v2 since the promotion:  error rate 0.50 %, p95 98.0 ms over 800 requests",
            "- v2 within limits since its promotion",
        ] {
            assert!(out.contains(want), "{want:?} missing in\n{out}");
        }
    }
}
