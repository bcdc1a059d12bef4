//! What the demo prints: headings, a progress line a second, the numbers
//! behind a verdict, and each act's timeline.

use coalmine_client::types::{DeploymentView, StoredEvent};
use coalmine_decide::rules::compare;
use coalmine_decide::window::RoleWindowStats;
use coalmine_demo::Tally;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

pub(crate) fn heading(text: &str) {
    println!("\n\x1b[1;36m##  {text}\x1b[0m");
}

pub(crate) fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

pub(crate) fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1} ms"))
}

/// The largest output shift between the roles, over the fields read.
fn shift(h: &RoleWindowStats, c: &RoleWindowStats) -> Option<f64> {
    c.outputs
        .keys()
        .filter_map(|f| compare(c.outputs.get(f), h.outputs.get(f)))
        .map(|cmp| cmp.shift)
        .reduce(f64::max)
}

/// A role's accuracy from feedback: "0.600 of 40".
fn accuracy(r: &RoleWindowStats) -> String {
    r.feedback
        .get("accuracy")
        .filter(|f| f.observations > 0)
        .map_or("-".into(), |f| {
            format!("{:.3} of {}", f.rate, f.observations)
        })
}

/// One second of an act: traffic by role, the split and the verdict; with
/// `answers`, the output shift and each role's accuracy from labels.
pub(crate) fn progress(elapsed: Duration, t: &Tally, d: &DeploymentView, answers: bool) {
    let (b, c) = (t.role("baseline"), t.role("canary"));
    let mut line = format!(
        "    t={:>4.1}s  sent {:>5}  baseline {:>5} ({} 5xx)  canary {:>4} ({} 5xx)  split {:>3} %  {}",
        elapsed.as_secs_f64(),
        t.sent,
        b,
        t.errors("baseline"),
        c,
        t.errors("canary"),
        d.canary_percent,
        d.health.verdict.as_str(),
    );
    if answers {
        let h = &d.health;
        line.push_str(&format!(
            "  shift {}  accuracy canary {} · baseline {}",
            shift(&h.baseline, &h.canary).map_or("-".into(), |s| format!("{s:.2}")),
            accuracy(&h.canary),
            accuracy(&h.baseline)
        ));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// The numbers an engine event was decided on, and its reason.
pub(crate) fn decided(e: &StoredEvent) {
    let n = &e.event.numbers;
    let role = |r: &str| {
        let s: RoleWindowStats = serde_json::from_value(n[r].clone()).unwrap_or_default();
        format!(
            "{} requests, error rate {}, p95 {}, accuracy {}",
            s.requests,
            pct(s.error_rate),
            ms(s.p95_ms),
            accuracy(&s)
        )
    };
    println!(
        "    baseline: {}\n    canary:   {}",
        role("baseline"),
        role("canary")
    );
    for reason in e.event.reason.split("; ") {
        println!("    reason: {reason}");
    }
}

/// An act's events, times from the act's first.
pub(crate) fn timeline(events: &[StoredEvent]) {
    let t0 = events.first().map_or(0, |e| e.at);
    println!("    {:>7}  {:<24} {:<9} reason", "t", "event", "actor");
    for e in events {
        let reason: String = e.event.reason.chars().take(120).collect();
        let more = if e.event.reason.chars().count() > 120 {
            "…"
        } else {
            ""
        };
        println!(
            "    {:>6.2}s  {:<24} {:<9} {reason}{more}",
            e.at.saturating_sub(t0) as f64 / 1000.0,
            e.event.kind.as_str(),
            e.event.actor
        );
    }
}

/// A model server's `/model`: "test accuracy 0.855 on 60 held-out patients, sha256 ab12…".
pub(crate) fn model(version: &str, m: &Value) {
    println!(
        "    {version}: test accuracy {:.3} on {} held-out patients ({} rows with missing values left out), sha256 {}…",
        m["test_accuracy"].as_f64().unwrap_or_default(),
        m["training"]["test_rows"],
        m["training"]["rows_dropped_missing"],
        m["sha256"]
            .as_str()
            .unwrap_or_default()
            .get(..12)
            .unwrap_or_default()
    );
}
