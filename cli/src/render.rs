//! Tables for people: deployments, status, versions, events.

use coalmine_client::types::{DeploymentView, StoredEvent};
use coalmine_decide::engine::Version;
use coalmine_decide::rules::compare;
use coalmine_decide::rules::shadow::{ShadowHealth, Standing, skip_reasons};
use coalmine_decide::window::RoleWindowStats;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use std::collections::BTreeSet;

mod ramp;
mod watch;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn pct(rate: f64) -> String {
    format!("{:.2} %", rate * 100.0)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1} ms"))
}

fn canary_cell(d: &DeploymentView) -> String {
    match &d.canary {
        None => "-".into(),
        Some(c) => format!(
            "{} @ {} %{}",
            c.version,
            d.canary_percent,
            if c.paused { " (paused)" } else { "" }
        ),
    }
}

fn shadow_cell(d: &DeploymentView) -> String {
    d.shadow
        .as_ref()
        .map_or("-".into(), |s| format!("{} @ {} %", s.version, s.percent))
}

/// `deployments list`.
pub fn deployments(list: &[DeploymentView]) -> String {
    let mut t = table(&[
        "deployment",
        "state",
        "baseline",
        "canary",
        "shadow",
        "verdict",
        "epoch",
    ]);
    for d in list {
        t.add_row(vec![
            d.name.clone(),
            d.state.as_str().to_string(),
            d.baseline.version.clone(),
            canary_cell(d),
            shadow_cell(d),
            d.health.verdict.as_str().to_string(),
            d.epoch.to_string(),
        ]);
    }
    t.to_string()
}

fn role_row(role: &str, r: &RoleWindowStats) -> Vec<String> {
    vec![
        role.to_string(),
        r.requests.to_string(),
        r.errors.to_string(),
        pct(r.error_rate),
        ms(r.p50_ms),
        ms(r.p95_ms),
        ms(r.p99_ms),
    ]
}

/// `status` (and `deployments show`, `watch`): split, per-role numbers, verdict.
pub fn status(d: &DeploymentView) -> String {
    let h = &d.health;
    let mut out = format!(
        "deployment {}  ({})\nbaseline   {} ({})\ncanary     {}\n",
        d.name,
        d.state.as_str(),
        d.baseline.version,
        d.baseline.cluster,
        canary_cell(d),
    );
    if let Some(c) = &d.canary {
        out.push_str(&ramp::line(c));
    }
    if d.shadow.is_some() {
        out.push_str(&format!(
            "shadow     {} of the baseline's requests, never answering\n",
            shadow_cell(d)
        ));
    }
    out.push_str(&format!(
        "pinned     {}\n\n",
        d.pinned.as_ref().map_or("-", |p| p.version.as_str())
    ));
    let mut t = table(&[
        "role",
        "requests",
        "errors",
        "error rate",
        "p50",
        "p95",
        "p99",
    ]);
    t.add_row(role_row("baseline", &h.baseline));
    t.add_row(role_row("canary", &h.canary));
    if let Some(s) = &h.shadow {
        t.add_row(vec![
            format!("shadow {}", s.version),
            s.requests.to_string(),
            s.errors.to_string(),
            pct(s.error_rate),
            ms(s.p50_ms),
            ms(s.p95_ms),
            ms(s.p99_ms),
        ]);
    }
    out.push_str(&t.to_string());
    if let Some(s) = &h.shadow {
        out.push_str(&shadow(s));
    }
    out.push_str(&outputs(&h.baseline, &h.canary));
    out.push_str(&feedback(&h.baseline, &h.canary));
    out.push_str(&format!(
        "\n\nverdict {}   recommendation {}   (window {} s)\n",
        h.verdict.as_str(),
        h.recommendation.as_str(),
        h.window_seconds
    ));
    for r in &h.reasons {
        out.push_str(&format!("  - {}\n", r.message));
    }
    if let Some(w) = &h.watch {
        out.push_str(&watch::watch(w));
    }
    out
}

/// A field's standing against the minimum, as the engine judged it.
fn standing(s: Standing) -> &'static str {
    match s {
        Standing::Collecting => "collecting",
        Standing::Agrees => "agrees",
        Standing::Unproven => "below, not yet established",
        Standing::Below => "below",
    }
}

/// The shadow's agreement with the answers users got, field by field:
/// the rate, its anytime-valid bounds, the minimum and where it stands;
/// then its verdict and the copies not compared or not made (every reason
/// health names).
fn shadow(s: &ShadowHealth) -> String {
    let mut out = String::from("\n\n");
    if !s.fields.is_empty() {
        let mut t = table(&[
            "shadow field",
            "compared",
            "agreed",
            "agreement",
            "bounds",
            "minimum",
            "standing",
        ]);
        for f in &s.fields {
            let bounds = match (f.lower, f.upper) {
                (Some(l), Some(u)) => format!("{} – {}", pct(l), pct(u)),
                _ => "-".into(),
            };
            t.add_row(vec![
                f.field.clone(),
                f.compared.to_string(),
                f.agreed.to_string(),
                f.agreement.map_or("-".into(), pct),
                bounds,
                pct(f.min_agreement),
                standing(f.standing).to_string(),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    let skipped: Vec<String> = skip_reasons(&s.skipped)
        .into_iter()
        .map(|(why, n)| format!("{n} {}", why.replace('_', " ")))
        .collect();
    out.push_str(&format!(
        "shadow {} {}: {} answers not compared; copies skipped: {}",
        s.version,
        s.verdict.as_str(),
        s.uncompared,
        skipped.join(", ")
    ));
    out
}

/// What each role answered, field by field: every value's share on both
/// roles, the shift between them, and answers not read.
fn outputs(baseline: &RoleWindowStats, canary: &RoleWindowStats) -> String {
    let fields: BTreeSet<&String> = baseline
        .outputs
        .keys()
        .chain(canary.outputs.keys())
        .collect();
    let mut out = String::new();
    for field in fields {
        let Some(c) = compare(canary.outputs.get(field), baseline.outputs.get(field)) else {
            continue;
        };
        out.push_str(&format!(
            "\n\n{field}: {} baseline and {} canary answers read, shift {:.2}\n",
            c.baseline_samples, c.canary_samples, c.shift
        ));
        let mut t = table(&["value", "baseline", "canary"]);
        for s in &c.shares {
            t.add_row(vec![s.value.clone(), pct(s.baseline), pct(s.canary)]);
        }
        out.push_str(&t.to_string());
    }
    let skipped = baseline.outputs_skipped.total() + canary.outputs_skipped.total();
    if skipped > 0 {
        out.push_str(&format!(
            "\nanswers not read (too large or compressed): baseline {}, canary {}",
            baseline.outputs_skipped.total(),
            canary.outputs_skipped.total()
        ));
    }
    out
}

/// What clients reported back, per metric and role: the rate, how many
/// observations it rests on, and how old the newest is.
fn feedback(baseline: &RoleWindowStats, canary: &RoleWindowStats) -> String {
    let metrics: BTreeSet<&String> = baseline
        .feedback
        .keys()
        .chain(canary.feedback.keys())
        .collect();
    if metrics.is_empty() {
        return String::new();
    }
    let cell = |r: &RoleWindowStats, metric: &String| match r.feedback.get(metric) {
        Some(f) if f.observations > 0 => format!(
            "{:.3} of {} (newest {})",
            f.rate,
            f.observations,
            f.newest_age_seconds
                .map_or("-".into(), |s| format!("{s} s ago"))
        ),
        Some(_) => "none yet".into(),
        None => "-".into(),
    };
    let mut t = table(&["feedback", "baseline", "canary"]);
    for m in metrics {
        t.add_row(vec![m.clone(), cell(baseline, m), cell(canary, m)]);
    }
    format!("\n\n{t}")
}

/// `versions list` and `versions register`.
pub fn versions(list: &[Version]) -> String {
    let mut t = table(&[
        "version", "cluster", "state", "healthy", "pinned", "metadata",
    ]);
    for v in list {
        t.add_row(vec![
            v.version.clone(),
            v.cluster.clone(),
            v.state.as_str().to_string(),
            v.healthy.to_string(),
            if v.pinned {
                "★ last known good".into()
            } else {
                String::new()
            },
            v.metadata.to_string(),
        ]);
    }
    t.to_string()
}

/// `events`: the timeline, times in UTC.
pub fn events(list: &[StoredEvent]) -> String {
    let mut t = table(&["id", "at", "event", "actor", "reason"]);
    for e in list {
        let (ms, secs) = (e.at, e.at / 1000);
        let at = format!(
            "{:02}:{:02}:{:02}.{:03} UTC",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            ms % 1000
        );
        t.add_row(vec![
            e.id.to_string(),
            at,
            e.event.kind.as_str().to_string(),
            e.event.actor.clone(),
            e.event.reason.clone(),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_renders_both_roles_and_the_reasons() {
        let d: DeploymentView = serde_json::from_value(json!({
            "name": "heart-prod", "state": "canary", "baseline": {"version": "v1", "cluster": "heart-v1"},
            "canary": {"version": "v2", "cluster": "heart-v2", "percent": 20.0, "steps": [20.0, 50.0, 100.0], "step_index": 0,
                "next_step_percent": 50.0, "bake_seconds": 60, "started_at": 0, "step_since": 0, "paused": false},
            "canary_percent": 20.0, "pinned": {"version": "v1", "cluster": "heart-v1"}, "cooldown_until": null,
            "versions_in_play": ["v1", "v2"], "epoch": 3, "policy": {},
            "health": {"verdict": "CRITICAL", "recommendation": "ROLLBACK", "window_seconds": 60,
                "reasons": [{"code": "error_rate_critical", "numbers": {},
                    "message": "canary error rate 25.0 % exceeds baseline 0.0 % by 25.0 pp (limit 5.0 pp)"}],
                "baseline": {"requests": 400, "errors": 0, "error_rate": 0.0, "p50_ms": 3.1, "p95_ms": 9.9, "p99_ms": 12.0,
                    "outputs": {"prediction": {"class": {"labels": {"0": 200, "1": 200}, "other": 0}}}},
                "canary": {"requests": 100, "errors": 25, "error_rate": 0.25, "p50_ms": null, "p95_ms": null, "p99_ms": null,
                    "outputs": {"prediction": {"class": {"labels": {"0": 30, "1": 70}, "other": 0}}},
                    "outputs_skipped": {"too_large": 2, "encoded": 0},
                    "feedback": {"accuracy": {"observations": 40, "ones": 24, "rate": 0.6, "newest_age_seconds": 3}}}}
        }))
        .unwrap();
        let out = status(&d);
        for want in [
            "v2 @ 20 %",
            "ramp       [20] → 50 → 100 %, 60 s healthy at each share",
            "25.00 %",
            "9.9 ms",
            "CRITICAL",
            "ROLLBACK",
            "- canary error rate 25.0 %",
            "prediction: 400 baseline and 100 canary answers read, shift 0.20",
            "70.00 %",
            "answers not read (too large or compressed): baseline 0, canary 2",
            "│ accuracy ┆ -        ┆ 0.600 of 40 (newest 3 s ago) │",
        ] {
            assert!(out.contains(want), "{want:?} missing in\n{out}");
        }
        assert!(
            !out.contains("shadow"),
            "no shadow, no shadow lines:\n{out}"
        );
    }

    #[test]
    fn status_shows_the_shadow_next_to_the_baseline() {
        let d: DeploymentView = serde_json::from_value(json!({
            "name": "heart-prod", "state": "stable", "baseline": {"version": "v1", "cluster": "heart-v1"},
            "canary": null, "canary_percent": 0.0,
            "shadow": {"version": "v3", "cluster": "heart-v3", "percent": 50.0, "started_at": 0},
            "pinned": {"version": "v1", "cluster": "heart-v1"}, "cooldown_until": null,
            "versions_in_play": ["v1", "v3"], "epoch": 4, "policy": {},
            "health": {"verdict": "INSUFFICIENT_DATA", "recommendation": "CONTINUE", "window_seconds": 300,
                "reasons": [{"code": "no_canary", "numbers": {}, "message": "no canary in progress; v1 serves all traffic"}],
                "baseline": {"requests": 1000, "errors": 1, "error_rate": 0.001, "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 30.0},
                "canary": {"requests": 0, "errors": 0, "error_rate": 0.0, "p50_ms": null, "p95_ms": null, "p99_ms": null},
                "shadow": {"version": "v3", "percent": 50.0, "requests": 500, "errors": 4, "error_rate": 0.008,
                    "p50_ms": 12.5, "p95_ms": 40.0, "p99_ms": 61.0, "uncompared": 4,
                    "skipped": {"busy": 3, "too_large": 1, "refused": 0},
                    "fields": [{"field": "prediction", "compared": 496, "agreed": 350, "agreement": 0.7056,
                        "lower": 0.63, "upper": 0.77, "min_agreement": 0.9, "standing": "below"},
                        {"field": "probability", "compared": 496, "agreed": 440, "agreement": 0.8871,
                        "lower": 0.85, "upper": 0.92, "min_agreement": 0.9, "standing": "unproven"}],
                    "verdict": "DISAGREES"}}
        }))
        .unwrap();
        let out = status(&d);
        for want in [
            "shadow     v3 @ 50 % of the baseline's requests, never answering",
            "│ shadow v3 ┆ 500      ┆ 4      ┆ 0.80 %     ┆ 12.5 ms ┆ 40.0 ms ┆ 61.0 ms │",
            // Each field's standing as the controller judged it, not judged again.
            "│ prediction   ┆ 496      ┆ 350    ┆ 70.56 %   ┆ 63.00 % – 77.00 % ┆ 90.00 % ┆ below    ",
            "┆ 90.00 % ┆ below, not yet established │",
            "shadow v3 DISAGREES: 4 answers not compared; copies skipped: 3 busy, 1 too large, 0 refused, 0 incomplete",
        ] {
            assert!(out.contains(want), "{want:?} missing in\n{out}");
        }
        assert!(deployments(&[d]).contains("v3 @ 50 %"));
    }
}
