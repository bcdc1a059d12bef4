//! Shadow: a version that sees a copy of live traffic but never answers it
//! (DESIGN.md, "Shadow").
//!
//! The controller names a deployment's shadow in the split table
//! ([`ShadowSplit`]: the version, its cluster, the share of requests
//! copied). The filter copies that share of the requests its baseline
//! serves (method, path, headers, body) to the shadow's cluster once the
//! user's request has been answered, compares the shadow's answer field by
//! field with the answer the user got ([`agrees`]), and reports per
//! deployment and shadow version ([`ShadowReport`]): the shadow's own
//! outcome classes and latency, per field how many answers were compared
//! and how many agreed, and the copies not made, by why.
//!
//! Here: the wire types and their checks, the pure comparison, which
//! headers a copy carries ([`copy_headers`]), and a worker's tally between
//! two reports ([`ShadowTally`]).

use crate::outcome::Outcome;
use crate::outputs::{FieldKind, MAX_FIELDS, OutputField, Said, check_field_name};
use crate::split::{Bps, Target};
use crate::stats::{
    HistogramError, LATENCY_MAX_US, LATENCY_SIGFIG, StatsError, decode_histogram, encode_histogram,
};
use crate::sync::{MAX_ID_LEN, MAX_REPORT_REQUESTS, OutcomeCounts};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The header that marks a copy, so model servers can tell it from a
/// user's request (value `1`).
pub const SHADOW_HEADER: &str = "x-coalmine-shadow";

/// Default: two scores agree when at most this far apart.
pub const DEFAULT_TOLERANCE: f64 = 0.05;

/// A deployment's shadow in the split table.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct ShadowSplit {
    pub target: Target,
    /// The share of the baseline's requests copied to the shadow.
    pub bps: Bps,
}

/// Whether the shadow's value of a field agrees with the user's: class
/// labels equal, scores at most `tolerance` apart (a field the kind of
/// which the values do not match never agrees).
pub fn agrees(field: &OutputField, user: &Said, shadow: &Said) -> bool {
    match (field.kind, user, shadow) {
        (FieldKind::Class, Said::Label(a), Said::Label(b)) => a == b,
        // The slack absorbs decimal rounding: 0.55 − 0.50 is
        // 0.050000000000000044 in binary floating point.
        (FieldKind::Score(bins), Said::Score(a), Said::Score(b)) => {
            (a - b).abs() <= bins.tolerance + 1e-12
        }
        _ => false,
    }
}

/// Headers a copy never carries: coalmine's own routing headers (named in
/// the configuration), and those that describe one connection or one
/// transfer rather than the request (the copy is a new request, its body
/// sent whole).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "expect",
    "content-length",
];

/// The headers of a copy: the user's request headers (pseudo-headers
/// included, so method, path and authority stay the user's), without
/// coalmine's routing headers (`drop`), without hop-by-hop headers, and
/// marked with [`SHADOW_HEADER`].
pub fn copy_headers(headers: Vec<(String, String)>, drop: &[&str]) -> Vec<(String, String)> {
    let mut copy: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
                && !drop.iter().any(|d| name.eq_ignore_ascii_case(d))
                && !name.eq_ignore_ascii_case(SHADOW_HEADER)
        })
        .collect();
    copy.push((SHADOW_HEADER.to_string(), "1".to_string()));
    copy
}

/// Copies not made, by why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct ShadowSkips {
    /// The worker already had `max_in_flight` copies under way.
    #[serde(default)]
    pub busy: u64,
    /// The request's body was larger than `shadow.max_body_bytes`.
    #[serde(default)]
    pub too_large: u64,
    /// The copy could not be sent: Envoy refused the call (e.g. the
    /// cluster does not exist), or a header value is not UTF-8, which the
    /// call cannot carry.
    #[serde(default)]
    pub refused: u64,
    /// The user's request was not seen whole: the client gave up before
    /// its end, or its body could not be read.
    #[serde(default)]
    pub incomplete: u64,
}

/// Why a copy was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowSkip {
    Busy,
    TooLarge,
    Refused,
    Incomplete,
}

impl ShadowSkips {
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn total(&self) -> u64 {
        self.busy
            .saturating_add(self.too_large)
            .saturating_add(self.refused)
            .saturating_add(self.incomplete)
    }

    pub fn add(&mut self, skip: ShadowSkip, n: u64) {
        let c = match skip {
            ShadowSkip::Busy => &mut self.busy,
            ShadowSkip::TooLarge => &mut self.too_large,
            ShadowSkip::Refused => &mut self.refused,
            ShadowSkip::Incomplete => &mut self.incomplete,
        };
        *c = c.saturating_add(n);
    }

    pub fn merge(&mut self, other: &ShadowSkips) {
        self.add(ShadowSkip::Busy, other.busy);
        self.add(ShadowSkip::TooLarge, other.too_large);
        self.add(ShadowSkip::Refused, other.refused);
        self.add(ShadowSkip::Incomplete, other.incomplete);
    }
}

/// One field's agreement in a report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct FieldAgreement {
    pub field: String,
    /// Answers compared: both the user's and the shadow's read whole.
    pub compared: u64,
    /// Of those, how many agreed.
    pub agreed: u64,
}

/// A deployment's shadow since the last acknowledged report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct ShadowReport {
    pub deployment: String,
    /// The shadow version that answered the copies.
    pub version: String,
    /// The shadow's answers by outcome class (a `bad_output` is a 2xx
    /// answer without the configured fields).
    pub counts: OutcomeCounts,
    /// The shadow's latencies in µs, from sending the copy to its answer:
    /// an HdrHistogram in V2 encoding, base64.
    pub latency_us: String,
    /// Per output field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agreement: Vec<FieldAgreement>,
    /// Shadow answers that could not be compared: the shadow's or the
    /// user's answer was not read whole (an error, a body too large or
    /// compressed, no JSON).
    #[serde(default)]
    pub uncompared: u64,
    /// Copies not made.
    #[serde(default)]
    pub skipped: ShadowSkips,
}

/// Why a shadow report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShadowReportError {
    #[error("{0} is empty or longer than {MAX_ID_LEN} bytes")]
    BadId(&'static str),
    #[error("{0} requests in one report is more than the limit of {MAX_REPORT_REQUESTS}")]
    TooManyRequests(u64),
    #[error("latency histogram: {0}")]
    Histogram(String),
    #[error("counts say {counts} answers but the latency histogram holds {histogram}")]
    CountMismatch { counts: u64, histogram: u64 },
    #[error("agreement: {0}")]
    Agreement(String),
}

impl From<HistogramError> for ShadowReportError {
    fn from(e: HistogramError) -> ShadowReportError {
        ShadowReportError::Histogram(e.to_string())
    }
}

impl ShadowReport {
    /// Checks the report on its own and decodes its histogram: ids in
    /// bounds, counts agreeing with the histogram, at most [`MAX_FIELDS`]
    /// distinct fields, no more agreed than compared and no more compared
    /// than the shadow's 2xx answers.
    pub fn decode(&self) -> Result<(OutcomeCounts, Histogram<u64>), ShadowReportError> {
        for (what, id) in [("deployment", &self.deployment), ("version", &self.version)] {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(ShadowReportError::BadId(what));
            }
        }
        let total = self.counts.total();
        if total > MAX_REPORT_REQUESTS {
            return Err(ShadowReportError::TooManyRequests(total));
        }
        let bad = |m: String| Err::<(), _>(ShadowReportError::Agreement(m));
        if self.agreement.len() > MAX_FIELDS {
            bad(format!(
                "{} fields is more than the limit of {MAX_FIELDS}",
                self.agreement.len()
            ))?;
        }
        for (i, f) in self.agreement.iter().enumerate() {
            check_field_name(&f.field).or_else(bad)?;
            if self.agreement.iter().take(i).any(|g| g.field == f.field) {
                bad(format!("field {:?} is reported twice", f.field))?;
            }
            if f.agreed > f.compared {
                bad(format!(
                    "{}: {} agreed of {} compared",
                    f.field, f.agreed, f.compared
                ))?;
            }
            if f.compared > self.counts.success {
                bad(format!(
                    "{}: {} compared, but only {} 2xx answers reported",
                    f.field, f.compared, self.counts.success
                ))?;
            }
        }
        if self.uncompared > total {
            bad(format!(
                "{} answers uncompared, but only {total} answers reported",
                self.uncompared
            ))?;
        }
        if self.skipped.total() > MAX_REPORT_REQUESTS {
            return Err(ShadowReportError::TooManyRequests(self.skipped.total()));
        }
        let h = decode_histogram(&self.latency_us)?;
        if h.len() != total {
            return Err(ShadowReportError::CountMismatch {
                counts: total,
                histogram: h.len(),
            });
        }
        Ok((self.counts, h))
    }
}

/// What a worker saw of one deployment's shadow version between two
/// reports.
#[derive(Clone, Debug)]
pub struct ShadowTally {
    counts: OutcomeCounts,
    latency_us: Histogram<u64>,
    /// Per configured field: (compared, agreed).
    fields: Vec<(u64, u64)>,
    uncompared: u64,
    skipped: ShadowSkips,
}

/// What one copy's answer came to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compared<'a> {
    /// The shadow's and the user's answers were both read whole: for each
    /// configured field, whether they agreed.
    Fields(&'a [bool]),
    /// One of them was not read whole.
    Uncompared,
    /// The deployment reads no outputs: nothing to compare.
    NoOutputs,
}

impl ShadowTally {
    pub fn try_new(fields: usize) -> Result<ShadowTally, StatsError> {
        Ok(ShadowTally {
            counts: OutcomeCounts::default(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)?,
            fields: vec![(0, 0); fields],
            uncompared: 0,
            skipped: ShadowSkips::default(),
        })
    }

    /// One answer of the shadow. Never fails: latencies outside the
    /// histogram's range are clamped into it.
    pub fn record(&mut self, outcome: Outcome, latency_us: u64, compared: Compared<'_>) {
        self.counts.add(outcome, 1);
        self.latency_us.saturating_record(latency_us.max(1));
        match compared {
            Compared::Fields(agreed) => {
                for (slot, &agree) in self.fields.iter_mut().zip(agreed) {
                    slot.0 = slot.0.saturating_add(1);
                    slot.1 = slot.1.saturating_add(u64::from(agree));
                }
            }
            Compared::Uncompared => self.uncompared = self.uncompared.saturating_add(1),
            Compared::NoOutputs => {}
        }
    }

    pub fn skipped(&mut self, skip: ShadowSkip) {
        self.skipped.add(skip, 1);
    }

    /// Whether anything was recorded since the last [`ShadowTally::clear`].
    pub fn is_empty(&self) -> bool {
        self.counts.total() == 0 && self.skipped.is_empty()
    }

    /// The report of what was recorded (`fields` names the tally's fields).
    pub fn report(&self, deployment: &str, version: &str, fields: &[OutputField]) -> ShadowReport {
        ShadowReport {
            deployment: deployment.to_string(),
            version: version.to_string(),
            counts: self.counts,
            latency_us: encode_histogram(&self.latency_us),
            agreement: fields
                .iter()
                .zip(&self.fields)
                .map(|(f, &(compared, agreed))| FieldAgreement {
                    field: f.name.clone(),
                    compared,
                    agreed,
                })
                .collect(),
            uncompared: self.uncompared,
            skipped: self.skipped,
        }
    }

    /// Forgets everything recorded so far (keeps the allocation).
    pub fn clear(&mut self) {
        self.counts = OutcomeCounts::default();
        self.latency_us.reset();
        self.fields.iter_mut().for_each(|f| *f = (0, 0));
        self.uncompared = 0;
        self.skipped = ShadowSkips::default();
    }
}

#[cfg(test)]
mod tests;
