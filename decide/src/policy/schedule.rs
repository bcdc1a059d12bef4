//! The ramp a canary climbs: the policy's `steps` (with `bake_seconds`),
//! or a [`Schedule`] the shares are computed from.
//!
//! An exponential schedule is expanded once, when it is checked, into the
//! concrete planned shares (basis points, strictly increasing), so the
//! engine steps through it with the same machinery as through `steps`:
//! after k healthy bakes the canary's share is `min(max, start · factor^k)`
//! percent, rounded to 0.01 %, with shares that round alike kept once.

use super::{PolicyError, bad, check_seconds};
use coalmine_protocol::Bps;
use serde::{Deserialize, Serialize};

/// Most shares a computed ramp may plan (a factor of 1.0001 would need
/// thousands of bakes: a ramp nobody means).
pub const MAX_RAMP_SHARES: usize = 50;

/// A computed ramp, instead of a list of `steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Schedule {
    /// `min(max, start · factor^k)` percent after k healthy bakes.
    Exponential(Exponential),
}

/// As JSON: `{"exponential": {…}}`, that one key and no other.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Schedule {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .property("exponential", Exponential::schema())
                    .required("exponential")
                    .additional_properties(Some(AdditionalProperties::FreeForm(false))),
            )
            .description(Some(
                "A computed ramp instead of steps and bake_seconds: {\"exponential\": {start, factor, every_seconds, max}}",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Schedule {}

/// An exponential ramp; every field has a default (1 → 2 → 4 → … → 100 %,
/// 60 s at each share).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Exponential {
    /// The first share, percent: in (0, max], at least 0.01.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.01, maximum = 100))]
    pub start: f64,
    /// What each healthy bake multiplies the share by: above 1.
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 1))]
    pub factor: f64,
    /// The bake at each share, seconds (replaces `bake_seconds`).
    #[cfg_attr(feature = "openapi", schema(maximum = 86_400))]
    pub every_seconds: u64,
    /// The last share, percent, in (0, 100]: after a healthy bake there the
    /// canary is promoted, also when it is below 100.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.01, maximum = 100))]
    pub max: f64,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential {
            start: 1.0,
            factor: 2.0,
            every_seconds: 60,
            max: 100.0,
        }
    }
}

/// The shares a canary steps through and the bake at each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ramp {
    pub shares: Vec<Bps>,
    pub bake_seconds: u64,
}

impl Schedule {
    /// The planned ramp, or why the schedule is unusable (naming the field).
    pub fn ramp(&self) -> Result<Ramp, PolicyError> {
        match self {
            Schedule::Exponential(e) => e.ramp(),
        }
    }
}

impl Exponential {
    /// The planned ramp: the shares `min(max, start · factor^k)`, rounded to
    /// 0.01 % and kept once each, ending at `max`.
    pub fn ramp(&self) -> Result<Ramp, PolicyError> {
        const FIELD: &str = "schedule.exponential";
        let field = |f: &str| format!("{FIELD}.{f}");
        if !(self.factor.is_finite() && self.factor > 1.0) {
            return Err(bad(
                &field("factor"),
                format!("must be a finite number above 1, got {}", self.factor),
            ));
        }
        let max = share(self.max).ok_or_else(|| {
            bad(
                &field("max"),
                format!("must be in (0, 100] and at least 0.01, got {}", self.max),
            )
        })?;
        if share(self.start).is_none() || self.start > self.max {
            return Err(bad(
                &field("start"),
                format!(
                    "must be in (0, max = {}] and at least 0.01, got {}",
                    self.max, self.start
                ),
            ));
        }
        check_seconds(&field("every_seconds"), self.every_seconds)?;
        let shares = expand(self.start, self.factor, max);
        if shares.len() > MAX_RAMP_SHARES {
            return Err(bad(
                &field("factor"),
                format!(
                    "the ramp from {} % to {} % would take {} shares (at most {MAX_RAMP_SHARES}); use a larger factor or start",
                    self.start,
                    self.max,
                    shares.len()
                ),
            ));
        }
        Ok(Ramp {
            shares,
            bake_seconds: self.every_seconds,
        })
    }
}

/// A percentage in (0, 100] as a share no finer than 0.01 %.
fn share(percent: f64) -> Option<Bps> {
    Bps::from_percent(percent).filter(|b| *b > Bps::ZERO)
}

/// The distinct rounded shares of `start · factor^k` below `max`, then
/// `max`. Exponents that would round to a share already planned are jumped
/// over (to one before the computed jump, in case rounding overshot it), so
/// even a factor barely above 1 costs at most two turns per possible share
/// (10 000). A factor so close to 1 that the exponent outgrows `f64`'s
/// integers climbs by far less than 0.01 % a bake: from there every share
/// up to `max` is planned.
fn expand(start: f64, factor: f64, max: Bps) -> Vec<Bps> {
    let ln_factor = factor.ln();
    let mut shares: Vec<Bps> = Vec::new();
    let mut k = 0.0_f64;
    for _ in 0..=3 * usize::from(Bps::FULL.get()) {
        let at = Bps::from_percent(start * factor.powf(k)).unwrap_or(Bps::FULL);
        if at >= max {
            shares.push(max);
            return shares;
        }
        if shares.last().is_none_or(|last| at > *last) {
            shares.push(at);
        }
        // The first exponent whose share rounds above `at`.
        let above = (f64::from(at.get()) + 0.5) / 100.0;
        let jump = ((above / start).ln() / ln_factor).ceil();
        if k + 1.0 == k {
            break;
        }
        k = (jump - 1.0).max(k + 1.0);
    }
    let last = shares.last().map_or(0, |b| b.get());
    shares.extend((last + 1..=max.get()).filter_map(Bps::new));
    shares
}

/// A schedule: strictly increasing percentages in (0, 100], ending at 100,
/// as the shares the engine steps through.
pub fn schedule(field: &str, steps: &[f64]) -> Result<Vec<Bps>, PolicyError> {
    if steps.is_empty() || steps.len() > 20 {
        return Err(bad(field, "must list 1 to 20 percentages"));
    }
    let mut last = 0.0;
    let mut shares = Vec::with_capacity(steps.len());
    for &s in steps {
        let share = Bps::parse_percent(s).map_err(|m| bad(field, m))?;
        if s <= last {
            return Err(bad(
                field,
                format!("must increase strictly within (0, 100]; {s} does not follow {last}"),
            ));
        }
        shares.push(share);
        last = s;
    }
    if last != 100.0 {
        return Err(bad(field, "must end at 100"));
    }
    Ok(shares)
}

/// What a policy's ramp is: its `schedule` when it has one (it wins over
/// `steps`), else its `steps` with `bake_seconds`.
pub(super) fn policy_ramp(
    schedule_of: Option<&Schedule>,
    steps: &[f64],
    bake_seconds: u64,
) -> Result<Ramp, PolicyError> {
    match schedule_of {
        Some(s) => s.ramp(),
        None => Ok(Ramp {
            shares: schedule("steps", steps)?,
            bake_seconds,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use serde_json::{Value, json};

    fn percents(r: &Ramp) -> Vec<f64> {
        r.shares.iter().map(|b| b.as_percent()).collect()
    }

    fn ramp_of(v: Value) -> Result<Ramp, PolicyError> {
        serde_json::from_value::<Schedule>(json!({ "exponential": v }))
            .unwrap()
            .ramp()
    }

    #[test]
    fn an_exponential_schedule_expands_to_its_planned_shares() {
        let r = ramp_of(json!({"start": 1, "factor": 2, "every_seconds": 60, "max": 100})).unwrap();
        assert_eq!(percents(&r), [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]);
        assert_eq!(r.bake_seconds, 60);
        assert_eq!(ramp_of(json!({})).unwrap(), r, "the defaults");
        // Below 100: the last share is max, and promotion follows it.
        let r = ramp_of(json!({"start": 5, "factor": 3, "max": 50})).unwrap();
        assert_eq!(percents(&r), [5.0, 15.0, 45.0, 50.0]);
        // Rounded to 0.01 %, shares that round alike kept once.
        let r = ramp_of(json!({"start": 0.01, "factor": 1.5, "max": 0.1})).unwrap();
        assert_eq!(percents(&r), [0.01, 0.02, 0.03, 0.05, 0.08, 0.1]);
        assert!(r.shares.windows(2).all(|w| w[0] < w[1]));
        // start = max: one share.
        assert_eq!(
            percents(&ramp_of(json!({"start": 30, "max": 30})).unwrap()),
            [30.0]
        );
        // A share that rounds to max is not planned twice.
        let r = ramp_of(json!({"start": 99.999, "factor": 1.000001, "max": 100})).unwrap();
        assert_eq!(percents(&r), [100.0]);
    }

    #[test]
    fn every_refusal_names_its_field() {
        let refused = |v: Value| ramp_of(v).unwrap_err();
        for factor in [json!(1), json!(0.5), json!(-2)] {
            let e = refused(json!({ "factor": factor }));
            assert_eq!(e.field, "schedule.exponential.factor", "{e}");
            assert!(e.message.contains("above 1"), "{e}");
        }
        let e = Exponential {
            factor: f64::INFINITY,
            ..Exponential::default()
        }
        .ramp()
        .unwrap_err();
        assert_eq!(e.field, "schedule.exponential.factor");
        for max in [0.0, -1.0, 100.5, 0.001] {
            let e = refused(json!({ "max": max }));
            assert_eq!(e.field, "schedule.exponential.max", "{max}: {e}");
        }
        for start in [0.0, -1.0, 0.001, 60.0] {
            let e = refused(json!({ "start": start, "max": 50 }));
            assert_eq!(e.field, "schedule.exponential.start", "{start}: {e}");
        }
        let e = refused(json!({ "every_seconds": 86_401 }));
        assert_eq!(e.field, "schedule.exponential.every_seconds");
        assert!(e.message.contains("at most 86400"), "{e}");
        let e = refused(json!({ "factor": 1.0001 }));
        assert_eq!(e.field, "schedule.exponential.factor");
        assert!(
            e.message.contains("would take 9901 shares (at most 50)"),
            "{e}"
        );
        // The smallest factor above 1 is refused quickly, not looped over.
        let e = refused(json!({ "factor": 1.0 + f64::EPSILON, "start": 0.01 }));
        assert!(e.message.contains("would take"), "{e}");
    }

    #[test]
    fn schedule_json_is_strict() {
        for v in [
            json!({"exponential": {"strat": 1}}),
            json!({"linear": {}}),
            json!({"exponential": {}, "linear": {}}),
            json!("exponential"),
        ] {
            assert!(
                serde_json::from_value::<Schedule>(v.clone()).is_err(),
                "{v}"
            );
        }
    }

    #[test]
    fn the_policy_ramp_is_its_schedule_when_it_has_one() {
        let p = Policy::default();
        let r = p.ramp().unwrap();
        assert_eq!(
            (percents(&r), r.bake_seconds),
            (vec![20.0, 50.0, 100.0], 60)
        );
        let p: Policy = serde_json::from_value(json!({
            "steps": [10, 100], "bake_seconds": 5,
            "schedule": {"exponential": {"start": 25, "every_seconds": 7}}
        }))
        .unwrap();
        assert!(p.validate().is_ok());
        let r = p.ramp().unwrap();
        assert_eq!((percents(&r), r.bake_seconds), (vec![25.0, 50.0, 100.0], 7));
        let bad: Policy =
            serde_json::from_value(json!({"schedule": {"exponential": {"factor": 1}}})).unwrap();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "policy.schedule.exponential.factor: must be a finite number above 1, got 1"
        );
        let round: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(round, p);
        assert!(
            !serde_json::to_value(Policy::default())
                .unwrap()
                .as_object()
                .unwrap()
                .contains_key("schedule"),
            "absent unless set"
        );
    }
}
