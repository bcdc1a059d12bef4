//! The shadow rule: does the shadow answer what users were answered?
//!
//! For each output field, the share of compared answers on which the
//! shadow agreed with the baseline's answer (class labels equal, scores
//! within the filter's tolerance). A field *disagrees* when, over at least
//! `shadow.min_samples` compared answers, its agreement is below
//! `shadow.min_agreement`:
//!
//! - with the significance guard, when the anytime-valid upper confidence
//!   bound of its agreement rate is below the minimum, with Robbins'
//!   beta-binomial mixture (as the feedback rule's absolute `min`; Robbins
//!   1970; Howard, Ramdas, McAuliffe, Sekhon, Annals of Statistics 2021),
//!   at α/(2k) for k fields judged (those with a minimum above 0): the
//!   Bonferroni correction (Dunn, JASA 1961), as the outputs rule divides α
//!   by its categories, so that the chance of any field falsely found
//!   below stays at most α/2 however many fields there are. The lower and
//!   upper bounds shown, each at α/(2k), form a two-sided confidence
//!   sequence for all k fields at once at 1 − α, valid however often the
//!   window is looked at;
//! - with `"significance": "none"`, when the plain rate is below it.
//!
//! A rate below the minimum that the bound does not establish yet is
//! *unproven*: the shadow's verdict waits (INSUFFICIENT_DATA) rather than
//! say it agrees. The shadow never changes the canary's verdict; this is
//! its own finding, which the engine reports once per field and run.

use crate::policy::{Policy, ShadowRule};
use crate::significance::{lower_bound, upper_bound};
use crate::verdict::pct;
use crate::window::{Agreement, ShadowWindowStats};
use coalmine_protocol::shadow::ShadowSkips;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What the shadow's answers come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShadowVerdict {
    /// Every field judged and none below the minimum.
    Agrees,
    /// At least one field's agreement is (established) below the minimum.
    Disagrees,
    /// A field has too few compared answers, or a rate below the minimum
    /// not established yet, or the deployment reads no outputs.
    InsufficientData,
}

impl ShadowVerdict {
    pub const ALL: [ShadowVerdict; 3] = [
        ShadowVerdict::Agrees,
        ShadowVerdict::Disagrees,
        ShadowVerdict::InsufficientData,
    ];

    /// The verdict as JSON and metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowVerdict::Agrees => "AGREES",
            ShadowVerdict::Disagrees => "DISAGREES",
            ShadowVerdict::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// The copies not made, by why: each reason the wire type has, by its
/// name in JSON (`busy`, `too_large`, …), in the type's order. Metrics, the
/// CLI and the dashboard show every reason this way, so one the filter
/// adds is shown without a change here.
pub fn skip_reasons(skipped: &ShadowSkips) -> Vec<(String, u64)> {
    // Written as JSON (fields in the type's order), read back in order.
    serde_json::to_string(skipped)
        .ok()
        .and_then(|json| serde_json::from_str::<InOrder>(&json).ok())
        .map_or_else(Vec::new, |r| r.0)
}

/// A JSON object of counts, its keys in the order written.
struct InOrder(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<InOrder, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = InOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<InOrder, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, u64>()? {
                    out.push(entry);
                }
                Ok(InOrder(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Where a field stands against the minimum (health shows it, so the
/// dashboard and the CLI need not judge it again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Fewer than `min_samples` compared answers.
    Collecting,
    /// At or above the minimum.
    Agrees,
    /// Below the minimum, not established yet (with the guard).
    Unproven,
    /// Below the minimum (established, with the guard).
    Below,
}

/// One output field's agreement, as health shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShadowField {
    pub field: String,
    /// Answers compared: the user's and the shadow's both read whole.
    pub compared: u64,
    /// Of those, how many agreed.
    pub agreed: u64,
    /// agreed / compared (none before anything was compared).
    pub agreement: Option<f64>,
    /// The anytime-valid bounds of the agreement rate, each at α/(2k) for
    /// k fields judged (none without the significance guard or before
    /// anything was compared).
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub min_agreement: f64,
    /// Where it stands against the minimum, as the engine judged it.
    pub standing: Standing,
}

/// A deployment's shadow in health: its numbers over the window beside the
/// baseline's, and each field's agreement with the answers users got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShadowHealth {
    pub version: String,
    /// The share of the baseline's requests copied to the shadow.
    pub percent: f64,
    /// The shadow's answers over the window.
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Answers that could not be compared (one side not read whole).
    pub uncompared: u64,
    /// Copies not made, by why.
    pub skipped: ShadowSkips,
    pub fields: Vec<ShadowField>,
    pub verdict: ShadowVerdict,
}

/// A field established below the minimum: what the `shadow_disagrees`
/// event says.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowFinding {
    pub field: String,
    pub agreed: u64,
    pub compared: u64,
    pub rate: f64,
    /// The upper bound that established it (none without the guard).
    pub bound: Option<f64>,
    pub min_agreement: f64,
    /// The level of the bound: α/(2k) for k fields judged (none without
    /// the guard).
    pub alpha: Option<f64>,
}

impl ShadowFinding {
    /// The sentence, naming the shadow's `version`.
    pub fn message(&self, version: &str) -> String {
        let mut m = format!(
            "shadow {version} disagrees on {}: {} of {} compared answers agreed with what users got ({}), below the minimum of {}",
            self.field,
            self.agreed,
            self.compared,
            pct(self.rate),
            pct(self.min_agreement)
        );
        if let (Some(bound), Some(a)) = (self.bound, self.alpha) {
            m.push_str(&format!(
                " (its upper bound {}, established at α = {a})",
                pct(bound)
            ));
        }
        m
    }

    /// The numbers behind it, for the event log.
    pub fn numbers(&self, version: &str) -> Map<String, Value> {
        let v = json!({
            "version": version, "field": self.field, "agreed": self.agreed,
            "compared": self.compared, "rate": self.rate, "bound": self.bound,
            "min_agreement": self.min_agreement, "alpha": self.alpha,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// The shadow's fields judged, and its verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowJudgement {
    pub fields: Vec<ShadowField>,
    /// Each field's standing, in the order of `fields`.
    pub standings: Vec<Standing>,
    /// The fields below the minimum.
    pub findings: Vec<ShadowFinding>,
    pub verdict: ShadowVerdict,
}

/// One field against the rule; `level` is the level of each of its
/// bounds (α/(2k), see [`field_level`]) with the guard on, none without.
pub fn judge_field(
    rule: &ShadowRule,
    level: Option<f64>,
    field: &str,
    a: Agreement,
) -> (ShadowField, Standing, Option<ShadowFinding>) {
    let (agreed, compared) = (a.agreed.min(a.compared), a.compared);
    let rate = a.rate();
    let bounds = level.filter(|_| compared > 0).map(|level| {
        (
            lower_bound(agreed, compared, level),
            upper_bound(agreed, compared, level),
        )
    });
    let min = rule.min_agreement_of(field);
    let observed_below = rate.is_some_and(|r| r < min);
    let standing = if compared < rule.min_samples {
        Standing::Collecting
    } else {
        match bounds {
            Some((_, upper)) if upper < min => Standing::Below,
            Some(_) if observed_below => Standing::Unproven,
            None if observed_below => Standing::Below,
            _ => Standing::Agrees,
        }
    };
    let shown = ShadowField {
        field: field.to_string(),
        compared,
        agreed,
        agreement: rate,
        lower: bounds.map(|b| b.0),
        upper: bounds.map(|b| b.1),
        min_agreement: min,
        standing,
    };
    let finding = (standing == Standing::Below).then(|| ShadowFinding {
        field: field.to_string(),
        agreed,
        compared,
        rate: rate.unwrap_or(0.0),
        bound: bounds.map(|b| b.1),
        min_agreement: min,
        alpha: level,
    });
    (shown, standing, finding)
}

/// The level of each field's one-sided bound under the guard at `alpha`
/// with `judged` fields judged: α/(2k), Bonferroni over the fields (Dunn,
/// JASA 1961), so that any of the k fields is falsely found below the
/// minimum with a chance of at most α/2 (as `rules/outputs.rs` divides α
/// by its categories).
pub fn field_level(alpha: f64, judged: usize) -> f64 {
    alpha / (2.0 * judged.max(1) as f64)
}

/// Every field of the shadow's window against the policy's shadow rule.
pub fn judge(policy: &Policy, stats: &ShadowWindowStats) -> ShadowJudgement {
    // Fields with a minimum of 0 are shown, never judged: not counted.
    let judged = stats
        .fields
        .keys()
        .filter(|f| policy.shadow.min_agreement_of(f) > 0.0)
        .count();
    let guard = policy
        .significance
        .alpha()
        .map(|alpha| field_level(alpha, judged));
    let mut j = ShadowJudgement {
        fields: Vec::with_capacity(stats.fields.len()),
        standings: Vec::with_capacity(stats.fields.len()),
        findings: Vec::new(),
        verdict: ShadowVerdict::InsufficientData,
    };
    for (field, a) in &stats.fields {
        let (shown, standing, finding) = judge_field(&policy.shadow, guard, field, *a);
        j.fields.push(shown);
        j.standings.push(standing);
        j.findings.extend(finding);
    }
    j.verdict = if !j.findings.is_empty() {
        ShadowVerdict::Disagrees
    } else if !j.standings.is_empty() && j.standings.iter().all(|s| *s == Standing::Agrees) {
        ShadowVerdict::Agrees
    } else {
        ShadowVerdict::InsufficientData
    };
    j
}

impl ShadowHealth {
    /// The shadow `version` copying `percent` of the baseline's requests:
    /// its window and its judgement.
    pub fn new(
        version: &str,
        percent: f64,
        stats: &ShadowWindowStats,
        judgement: ShadowJudgement,
    ) -> ShadowHealth {
        ShadowHealth {
            version: version.to_string(),
            percent,
            requests: stats.requests,
            errors: stats.errors,
            error_rate: stats.error_rate,
            p50_ms: stats.p50_ms,
            p95_ms: stats.p95_ms,
            p99_ms: stats.p99_ms,
            uncompared: stats.uncompared,
            skipped: stats.skipped,
            fields: judgement.fields,
            verdict: judgement.verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Significance;
    use std::collections::BTreeMap;

    fn window(fields: &[(&str, u64, u64)]) -> ShadowWindowStats {
        ShadowWindowStats {
            requests: 1000,
            fields: fields
                .iter()
                .map(|&(f, compared, agreed)| (f.to_string(), Agreement { compared, agreed }))
                .collect::<BTreeMap<_, _>>(),
            ..ShadowWindowStats::default()
        }
    }

    fn seed() -> Policy {
        Policy {
            significance: Significance::None,
            ..Policy::default()
        }
    }

    #[test]
    fn a_field_judged_by_its_own_minimum() {
        // A retrained model: classes agree, scores often beyond the
        // tolerance.
        let w = window(&[("prediction", 1000, 983), ("probability", 1000, 763)]);
        let mut policy = Policy::default();
        assert_eq!(judge(&policy, &w).verdict, ShadowVerdict::Disagrees);
        let own: crate::policy::ShadowRule = serde_json::from_value(serde_json::json!({
            "fields": {"probability": {"min_agreement": 0.5}}
        }))
        .unwrap();
        policy.shadow = own;
        let j = judge(&policy, &w);
        assert_eq!(j.verdict, ShadowVerdict::Agrees);
        assert!(j.findings.is_empty());
        assert_eq!(j.fields[1].min_agreement, 0.5, "shown with its own minimum");
        assert_eq!(j.fields[0].min_agreement, 0.9);
        // 0: shown, never judged.
        policy.shadow.fields.insert(
            "prediction".into(),
            crate::policy::FieldMinimum { min_agreement: 0.0 },
        );
        let bad = window(&[("prediction", 1000, 10), ("probability", 1000, 763)]);
        assert_eq!(judge(&policy, &bad).verdict, ShadowVerdict::Agrees);
        // Bad minima and names are refused.
        for (fields, at) in [
            (
                serde_json::json!({"probability": {"min_agreement": 1.5}}),
                "shadow.fields.probability.min_agreement",
            ),
            (
                serde_json::json!({"Bad Name": {"min_agreement": 0.5}}),
                "shadow.fields.Bad Name",
            ),
        ] {
            let e =
                serde_json::from_value::<Policy>(serde_json::json!({"shadow": {"fields": fields}}))
                    .map(|p| p.validate())
                    .unwrap()
                    .unwrap_err();
            assert_eq!(e.field, at);
        }
    }

    #[test]
    fn an_established_disagreement_is_a_finding_with_its_numbers() {
        // 350 of 500 (70 %): far below 90 %, its upper bound too.
        let j = judge(&Policy::default(), &window(&[("prediction", 500, 350)]));
        assert_eq!(j.verdict, ShadowVerdict::Disagrees);
        assert_eq!(j.standings, [Standing::Below]);
        let f = &j.findings[0];
        assert_eq!((f.agreed, f.compared, f.rate), (350, 500, 0.7));
        let bound = f.bound.unwrap();
        assert!(bound > 0.7 && bound < 0.9, "{bound}");
        assert_eq!(f.alpha, Some(0.005));
        let shown = &j.fields[0];
        assert_eq!(shown.upper, Some(bound));
        assert!(shown.lower.unwrap() < 0.7);
        assert_eq!(shown.min_agreement, 0.9);
        let m = f.message("v3");
        assert!(
            m.starts_with("shadow v3 disagrees on prediction: 350 of 500 compared answers agreed with what users got (70.0 %), below the minimum of 90.0 %"),
            "{m}"
        );
        assert!(m.contains("established at α = 0.005"), "{m}");
        let n = f.numbers("v3");
        for key in [
            "version",
            "field",
            "agreed",
            "compared",
            "rate",
            "bound",
            "min_agreement",
            "alpha",
        ] {
            assert!(n.contains_key(key), "{key}");
        }
    }

    #[test]
    fn few_samples_are_insufficient_data() {
        // 10 of 40 agree: terrible, but under min_samples (50).
        let j = judge(&Policy::default(), &window(&[("prediction", 40, 10)]));
        assert_eq!(
            (j.verdict, j.standings.as_slice()),
            (ShadowVerdict::InsufficientData, &[Standing::Collecting][..])
        );
        assert!(j.findings.is_empty());
        // No fields at all (no outputs read): nothing to judge.
        let j = judge(&Policy::default(), &window(&[]));
        assert_eq!(j.verdict, ShadowVerdict::InsufficientData);
        // Nothing compared: no rate, no bounds.
        let j = judge(&Policy::default(), &window(&[("prediction", 0, 0)]));
        let f = &j.fields[0];
        assert_eq!((f.agreement, f.lower, f.upper), (None, None, None));
    }

    #[test]
    fn a_rate_below_the_minimum_waits_for_its_bound_under_the_guard() {
        // 52 of 60 (86.7 %): below 90 %, but its upper bound is not.
        let w = window(&[("prediction", 60, 52)]);
        let j = judge(&Policy::default(), &w);
        assert_eq!(j.standings, [Standing::Unproven]);
        assert_eq!(j.verdict, ShadowVerdict::InsufficientData);
        assert!(j.fields[0].upper.unwrap() >= 0.9);
        // Without the guard the plain rate decides: below, no bound.
        let j = judge(&seed(), &w);
        assert_eq!(j.verdict, ShadowVerdict::Disagrees);
        let f = &j.findings[0];
        assert_eq!((f.bound, f.alpha), (None, None));
        assert_eq!((j.fields[0].lower, j.fields[0].upper), (None, None));
        assert!(!f.message("v3").contains("bound"));
    }

    #[test]
    fn agreeing_fields_agree_and_one_bad_field_is_enough() {
        let w = window(&[("prediction", 1000, 990), ("probability", 1000, 960)]);
        assert_eq!(judge(&Policy::default(), &w).verdict, ShadowVerdict::Agrees);
        assert_eq!(judge(&seed(), &w).verdict, ShadowVerdict::Agrees);
        // Exactly at the minimum is not below it.
        let j = judge(&seed(), &window(&[("prediction", 100, 90)]));
        assert_eq!(j.verdict, ShadowVerdict::Agrees);
        let w = window(&[("prediction", 1000, 990), ("probability", 1000, 500)]);
        let j = judge(&Policy::default(), &w);
        assert_eq!(j.verdict, ShadowVerdict::Disagrees);
        assert_eq!(j.findings.len(), 1);
        assert_eq!(j.findings[0].field, "probability");
        // One field still collecting: no verdict of agreement yet.
        let w = window(&[("prediction", 1000, 990), ("probability", 10, 10)]);
        assert_eq!(
            judge(&Policy::default(), &w).verdict,
            ShadowVerdict::InsufficientData
        );
    }

    #[test]
    fn the_level_is_shared_among_the_fields_judged() {
        // 419 of 500 (83.8 %): established below 90 % at α/2 = 0.005 ...
        let one = judge(&Policy::default(), &window(&[("prediction", 500, 419)]));
        assert_eq!(one.standings, [Standing::Below]);
        assert_eq!(one.findings[0].alpha, Some(0.005));
        // ... but not at α/16 with eight fields judged (Bonferroni): the
        // seven others agree, and a false finding on any of the eight
        // would otherwise be up to eight times as likely.
        let agreeing = ["f1", "f2", "f3", "f4", "f5", "f6", "f7"];
        let mut fields: Vec<(&str, u64, u64)> = agreeing.iter().map(|f| (*f, 500, 499)).collect();
        fields.push(("prediction", 500, 419));
        let eight = judge(&Policy::default(), &window(&fields));
        let at = eight
            .fields
            .iter()
            .position(|f| f.field == "prediction")
            .unwrap();
        assert_eq!(eight.standings[at], Standing::Unproven);
        assert_eq!(eight.verdict, ShadowVerdict::InsufficientData);
        assert!(eight.fields[at].upper.unwrap() >= 0.9);
        assert!(eight.fields[at].upper > one.fields[0].upper, "wider bounds");
        // A finding says the level it was established at.
        fields.pop();
        fields.push(("prediction", 500, 350));
        let j = judge(&Policy::default(), &window(&fields));
        assert_eq!(j.findings.len(), 1);
        assert_eq!(j.findings[0].alpha, Some(0.01 / 16.0));
        assert!(j.findings[0].message("v3").contains("α = 0.000625"));
        // A field shown but never judged (minimum 0) does not count.
        let mut policy = Policy::default();
        for f in agreeing {
            policy
                .shadow
                .fields
                .insert(f.into(), crate::policy::FieldMinimum { min_agreement: 0.0 });
        }
        fields.pop();
        fields.push(("prediction", 500, 419));
        let j = judge(&policy, &window(&fields));
        assert_eq!(j.verdict, ShadowVerdict::Disagrees);
        assert_eq!(j.findings[0].alpha, Some(0.005));
        assert_eq!(field_level(0.01, 0), 0.005);
    }

    #[test]
    fn every_reason_a_copy_was_not_made_is_named() {
        let skipped = ShadowSkips {
            busy: 3,
            too_large: 1,
            ..ShadowSkips::default()
        };
        let reasons = skip_reasons(&skipped);
        assert_eq!(
            &reasons[..3],
            [
                ("busy".into(), 3),
                ("too_large".into(), 1),
                ("refused".into(), 0)
            ]
        );
        assert_eq!(reasons[3], ("incomplete".into(), 0));
        // Whatever else the wire type counts is there too, all of it.
        let total: u64 = reasons.iter().map(|r| r.1).sum();
        assert_eq!(total, skipped.total());
        assert_eq!(reasons.len(), json!(skipped).as_object().unwrap().len());
    }

    #[test]
    fn health_carries_the_window_and_the_judgement() {
        let mut w = window(&[("prediction", 500, 350)]);
        w.errors = 5;
        w.error_rate = 0.005;
        w.p50_ms = Some(12.0);
        w.uncompared = 7;
        w.skipped.busy = 2;
        let h = ShadowHealth::new("v3", 50.0, &w, judge(&Policy::default(), &w));
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["version"], "v3");
        assert_eq!(v["percent"], 50.0);
        assert_eq!(v["requests"], 1000);
        assert_eq!(v["p50_ms"], 12.0);
        assert_eq!(v["p95_ms"], Value::Null);
        // Every reason the wire type has, by name.
        let skipped = v["skipped"].as_object().unwrap();
        assert_eq!(skipped["busy"], 2);
        for reason in ["too_large", "refused"] {
            assert_eq!(skipped[reason], 0, "{reason}");
        }
        assert_eq!(v["verdict"], "DISAGREES");
        assert_eq!(v["fields"][0]["field"], "prediction");
        assert_eq!(v["fields"][0]["agreement"], 0.7);
        assert_eq!(v["fields"][0]["standing"], "below");
        for (standing, json) in [
            (Standing::Collecting, "collecting"),
            (Standing::Agrees, "agrees"),
            (Standing::Unproven, "unproven"),
            (Standing::Below, "below"),
        ] {
            assert_eq!(serde_json::to_value(standing).unwrap(), json);
        }
        let back: ShadowHealth = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
    }
}
