//! The policy's `shadow` block: how a shadow's agreement with the answers
//! users got is judged.

use super::{PolicyError, bad};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The shadow rule: a field of the shadow's answers "disagrees" when its
/// agreement rate with the answers users got is below `min_agreement` over
/// at least `min_samples` compared answers (with the significance guard:
/// when its anytime-valid upper bound is). It never changes the canary's
/// verdict; it is the shadow's own finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ShadowRule {
    /// The least share of compared answers that must agree, in (0, 1].
    pub min_agreement: f64,
    /// Compared answers a field needs before it is judged.
    pub min_samples: u64,
    /// Per output field, a minimum of its own in [0, 1] instead of
    /// `min_agreement` (0: shown, never judged). A retrained model's
    /// scores rarely stay within a tight tolerance while its classes
    /// agree; this lets the classes decide.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldMinimum>,
}

/// One field's own minimum agreement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FieldMinimum {
    pub min_agreement: f64,
}

impl Default for ShadowRule {
    fn default() -> Self {
        ShadowRule {
            min_agreement: 0.9,
            min_samples: 50,
            fields: BTreeMap::new(),
        }
    }
}

impl ShadowRule {
    /// The minimum agreement of `field`.
    pub fn min_agreement_of(&self, field: &str) -> f64 {
        self.fields
            .get(field)
            .map_or(self.min_agreement, |f| f.min_agreement)
    }

    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        let a = self.min_agreement;
        if !(a.is_finite() && a > 0.0 && a <= 1.0) {
            return Err(bad(
                "shadow.min_agreement",
                format!("must be a fraction in (0, 1], got {a}"),
            ));
        }
        for (name, f) in &self.fields {
            let at = format!("shadow.fields.{name}");
            coalmine_protocol::outputs::check_field_name(name).map_err(|m| bad(&at, m))?;
            let a = f.min_agreement;
            if !(a.is_finite() && (0.0..=1.0).contains(&a)) {
                return Err(bad(
                    &format!("{at}.min_agreement"),
                    format!("must be a fraction in [0, 1], got {a}"),
                ));
            }
        }
        if !(1..=1_000_000_000).contains(&self.min_samples) {
            return Err(bad(
                "shadow.min_samples",
                format!("must be between 1 and 1000000000, got {}", self.min_samples),
            ));
        }
        Ok(())
    }
}
