//! The `outputs` block of a deployment, as JSON, and its validation into
//! [`Outputs`]: every field named, every value checked.

use super::ConfigError;
use crate::outputs::{
    FieldKind, MAX_BINS, MAX_BODY_BYTES, MAX_FIELDS, OutputField, Outputs, ScoreBins,
    check_field_name, check_pointer,
};
use crate::shadow::DEFAULT_TOLERANCE;
use crate::split::Bps;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutputs {
    fields: Vec<RawField>,
    #[serde(default = "default_sample_percent")]
    sample_percent: f64,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
}

fn default_sample_percent() -> f64 {
    100.0
}

fn default_max_body_bytes() -> u64 {
    64 * 1024
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    pointer: String,
    kind: RawKind,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    bins: Option<u16>,
    #[serde(default)]
    tolerance: Option<f64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Class,
    Score,
}

impl RawOutputs {
    /// `field` is where the block stands (`deployments[0].outputs`).
    pub(super) fn validate(self, field: &str) -> Result<Outputs, ConfigError> {
        let err = |at: &str, m: String| ConfigError::new(format!("{field}.{at}"), m);
        if self.fields.is_empty() || self.fields.len() > MAX_FIELDS {
            return Err(err("fields", format!("must list 1 to {MAX_FIELDS} fields")));
        }
        let mut fields: Vec<OutputField> = Vec::with_capacity(self.fields.len());
        for (i, raw) in self.fields.into_iter().enumerate() {
            let f = raw.validate(&format!("{field}.fields[{i}]"))?;
            if fields.iter().any(|other| other.name == f.name) {
                return Err(err(
                    &format!("fields[{i}].name"),
                    format!(
                        "{:?} is used by an earlier field; names must be unique",
                        f.name
                    ),
                ));
            }
            fields.push(f);
        }
        let sample =
            Bps::parse_percent(self.sample_percent).map_err(|m| err("sample_percent", m))?;
        if !(1..=MAX_BODY_BYTES as u64).contains(&self.max_body_bytes) {
            return Err(err(
                "max_body_bytes",
                format!(
                    "must be between 1 and {MAX_BODY_BYTES}, got {}",
                    self.max_body_bytes
                ),
            ));
        }
        Ok(Outputs {
            fields,
            sample,
            // At most MAX_BODY_BYTES, so it fits a usize on wasm32 too.
            max_body_bytes: self.max_body_bytes as usize,
        })
    }
}

impl RawField {
    fn validate(self, field: &str) -> Result<OutputField, ConfigError> {
        let err = |at: &str, m: String| ConfigError::new(format!("{field}.{at}"), m);
        check_field_name(&self.name).map_err(|m| err("name", m))?;
        check_pointer(&self.pointer).map_err(|m| err("pointer", m))?;
        let kind = match self.kind {
            RawKind::Class => {
                for (at, given) in [
                    ("min", self.min.is_some()),
                    ("max", self.max.is_some()),
                    ("bins", self.bins.is_some()),
                    ("tolerance", self.tolerance.is_some()),
                ] {
                    if given {
                        return Err(err(at, "applies only to a score field".into()));
                    }
                }
                FieldKind::Class
            }
            RawKind::Score => FieldKind::Score(self.bins(field)?),
        };
        Ok(OutputField {
            name: self.name,
            pointer: self.pointer,
            kind,
        })
    }

    fn bins(&self, field: &str) -> Result<ScoreBins, ConfigError> {
        let err = |at: &str, m: String| ConfigError::new(format!("{field}.{at}"), m);
        let (Some(min), Some(max)) = (self.min, self.max) else {
            let missing = if self.min.is_none() { "min" } else { "max" };
            return Err(err(missing, "is required for a score field".into()));
        };
        if !(min.is_finite() && max.is_finite() && min < max) {
            return Err(err(
                "max",
                format!("must be a finite number above min ({min}), got {max}"),
            ));
        }
        let bins = self.bins.unwrap_or(10);
        if !(1..=MAX_BINS).contains(&bins) {
            return Err(err(
                "bins",
                format!("must be between 1 and {MAX_BINS}, got {bins}"),
            ));
        }
        let tolerance = self.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(err(
                "tolerance",
                format!("must be a finite number of at least 0, got {tolerance}"),
            ));
        }
        Ok(ScoreBins {
            min,
            max,
            bins,
            tolerance,
        })
    }
}
