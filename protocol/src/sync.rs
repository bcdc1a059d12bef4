//! The sync protocol between every filter worker and the controller.
//!
//! Each worker, every `interval_ms`, sends `POST /v1/sync` with what it
//! recorded since its last acknowledged report, and receives the split table
//! and a lease. A report that was not acknowledged (the call failed or timed
//! out) is sent again unchanged, with the same sequence number, so the
//! controller can count it exactly once: it deduplicates by
//! `(proxy, instance, seq)`.
//!
//! Here: the messages, their structural limits and the sync path. The
//! worker's side of the loop is in submodules:
//! - `outbox`: the report sent and not yet acknowledged ([`Outbox`]).
//! - [`lease`]: when the controller's lease runs out, and which worker
//!   speaks for the transition.
//! - [`worker_loop`]: the loop's state machine ([`worker_loop::SyncLoop`]),
//!   which the filter's tick and HTTP callbacks drive.

use crate::outcome::Outcome;
use crate::outputs::{FieldReport, MAX_FIELDS, Skips, check_field_name};
use crate::shadow::ShadowReport;
use crate::split::{Role, SplitTable};
use crate::stats::{HistogramError, RoleStats, decode_histogram, encode_histogram};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub mod lease;
mod outbox;
pub mod worker_loop;

pub use outbox::Outbox;

/// The codec's own bound, named here with the other limits of a report.
pub use crate::stats::MAX_HISTOGRAM_BYTES;

/// Where the controller answers sync calls (the plugin configuration's
/// default `controller.path`).
pub const SYNC_PATH: &str = "/v1/sync";

/// Limits a controller enforces on one report (a filter never comes close).
pub const MAX_REPORTS: usize = 1024;
pub const MAX_ID_LEN: usize = 256;
/// One report claiming more requests than this is refused: about three
/// hours of a million requests a second, far above anything a worker
/// accumulates, and far enough below `u64::MAX` that sums cannot overflow.
pub const MAX_REPORT_REQUESTS: u64 = 1 << 40;

/// What a filter worker sends.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct SyncRequest {
    /// The proxy's node id (`xds.node.id`).
    pub proxy: String,
    /// Random per VM: a restarted worker is a new instance.
    pub instance: String,
    /// Increases by one per new report; a resent report keeps its number.
    pub seq: u64,
    /// The split table epoch the worker holds (0: none yet).
    pub epoch: u64,
    #[serde(default)]
    pub reports: Vec<RoleReport>,
    /// What each deployment's shadow answered (none without a shadow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowReport>,
}

/// Everything a worker recorded since its last acknowledged report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reports {
    pub roles: Vec<RoleReport>,
    pub shadow: Vec<ShadowReport>,
}

impl From<Vec<RoleReport>> for Reports {
    fn from(roles: Vec<RoleReport>) -> Reports {
        Reports {
            roles,
            shadow: Vec::new(),
        }
    }
}

/// One deployment role's delta since the last acknowledged report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct RoleReport {
    pub deployment: String,
    pub role: Role,
    /// The version that served these requests.
    pub version: String,
    pub counts: OutcomeCounts,
    /// Latencies in µs: an HdrHistogram in V2 encoding, base64.
    pub latency_us: String,
    /// What the answers read said, per field (deployments with `outputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<FieldReport>,
    /// Answers not read, by why.
    #[serde(default, skip_serializing_if = "Skips::is_empty")]
    pub outputs_skipped: Skips,
}

/// Requests per outcome class.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct OutcomeCounts {
    #[serde(rename = "2xx", default)]
    pub success: u64,
    #[serde(rename = "4xx", default)]
    pub client_error: u64,
    #[serde(rename = "5xx", default)]
    pub server_error: u64,
    #[serde(default)]
    pub reset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_output: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OutcomeCounts {
    pub fn get(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Success => self.success,
            Outcome::ClientError => self.client_error,
            Outcome::ServerError => self.server_error,
            Outcome::Reset => self.reset,
            Outcome::BadOutput => self.bad_output,
        }
    }

    pub fn add(&mut self, outcome: Outcome, n: u64) {
        let c = match outcome {
            Outcome::Success => &mut self.success,
            Outcome::ClientError => &mut self.client_error,
            Outcome::ServerError => &mut self.server_error,
            Outcome::Reset => &mut self.reset,
            Outcome::BadOutput => &mut self.bad_output,
        };
        *c = c.saturating_add(n);
    }

    pub fn merge(&mut self, other: &OutcomeCounts) {
        for o in Outcome::ALL {
            self.add(o, other.get(o));
        }
    }

    pub fn total(&self) -> u64 {
        Outcome::ALL
            .iter()
            .fold(0u64, |a, &o| a.saturating_add(self.get(o)))
    }
}

/// What the controller answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct SyncResponse {
    pub table: SplitTable,
    /// How long the table stays valid without another successful sync.
    pub lease_ms: u64,
}

/// Why a report or one of its parts was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("{0} is empty or longer than {MAX_ID_LEN} bytes")]
    BadId(&'static str),
    #[error("{0} reports is more than the limit of {MAX_REPORTS}")]
    TooManyReports(usize),
    #[error("latency histogram is not valid base64")]
    Base64,
    #[error("latency histogram is {0} bytes, more than {MAX_HISTOGRAM_BYTES}")]
    HistogramTooLarge(usize),
    #[error("latency histogram: {0}")]
    Histogram(String),
    #[error("counts say {counts} requests but the latency histogram holds {histogram}")]
    CountMismatch { counts: u64, histogram: u64 },
    #[error("{0} requests in one report is more than the limit of {MAX_REPORT_REQUESTS}")]
    TooManyRequests(u64),
    #[error("outputs: {0}")]
    Outputs(String),
}

impl From<HistogramError> for ReportError {
    fn from(e: HistogramError) -> ReportError {
        match e {
            HistogramError::Base64 => ReportError::Base64,
            HistogramError::TooLarge(n) => ReportError::HistogramTooLarge(n),
            HistogramError::Invalid(why) => ReportError::Histogram(why),
        }
    }
}

impl RoleReport {
    /// The report of one role's statistics (no outputs).
    pub fn from_stats(
        deployment: &str,
        role: Role,
        version: &str,
        stats: &RoleStats,
    ) -> RoleReport {
        let mut counts = OutcomeCounts::default();
        for o in Outcome::ALL {
            counts.add(o, stats.count(o));
        }
        RoleReport {
            deployment: deployment.to_string(),
            role,
            version: version.to_string(),
            counts,
            latency_us: encode_histogram(stats.latency_us()),
            outputs: Vec::new(),
            outputs_skipped: Skips::default(),
        }
    }

    /// The outputs part: at most [`MAX_FIELDS`] distinct, well-named fields,
    /// each within its limits and counting no more answers than the 2xx
    /// answers reported; no more skipped than answered.
    fn check_outputs(&self) -> Result<(), ReportError> {
        let bad = |m: String| Err(ReportError::Outputs(m));
        if self.outputs.len() > MAX_FIELDS {
            return bad(format!(
                "{} fields is more than the limit of {MAX_FIELDS}",
                self.outputs.len()
            ));
        }
        for (i, f) in self.outputs.iter().enumerate() {
            check_field_name(&f.field).or_else(bad)?;
            if self.outputs.iter().take(i).any(|g| g.field == f.field) {
                return bad(format!("field {:?} is reported twice", f.field));
            }
            f.counts
                .check()
                .or_else(|m| bad(format!("{}: {m}", f.field)))?;
            let read = f.counts.total();
            if read > self.counts.success {
                return bad(format!(
                    "{}: {read} answers read, but only {} 2xx answers reported",
                    f.field, self.counts.success
                ));
            }
        }
        let answered = self.counts.success.saturating_add(self.counts.bad_output);
        if self.outputs_skipped.total() > answered {
            return bad(format!(
                "{} answers skipped, but only {answered} 2xx answers reported",
                self.outputs_skipped.total()
            ));
        }
        Ok(())
    }

    /// Decodes the histogram and checks it agrees with the counts.
    pub fn decode(&self) -> Result<(OutcomeCounts, Histogram<u64>), ReportError> {
        let total = self.counts.total();
        if total > MAX_REPORT_REQUESTS {
            return Err(ReportError::TooManyRequests(total));
        }
        self.check_outputs()?;
        let h = decode_histogram(&self.latency_us)?;
        if h.len() != total {
            return Err(ReportError::CountMismatch {
                counts: total,
                histogram: h.len(),
            });
        }
        Ok((self.counts, h))
    }
}

impl SyncRequest {
    /// Structural checks that need no controller state.
    pub fn check(&self) -> Result<(), ReportError> {
        for (what, id) in [("proxy", &self.proxy), ("instance", &self.instance)] {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(ReportError::BadId(what));
            }
        }
        let count = self.reports.len().saturating_add(self.shadow.len());
        if count > MAX_REPORTS {
            return Err(ReportError::TooManyReports(count));
        }
        for r in &self.reports {
            if r.deployment.is_empty() || r.deployment.len() > MAX_ID_LEN {
                return Err(ReportError::BadId("deployment"));
            }
            if r.version.is_empty() || r.version.len() > MAX_ID_LEN {
                return Err(ReportError::BadId("version"));
            }
        }
        Ok(())
    }
}

/// The longest a sync call may ask the controller to hold its answer.
pub const MAX_WAIT_MS: u64 = 60_000;
/// `path` with the hold as a query parameter (none for 0).
pub fn sync_path(path: &str, wait_ms: u64) -> String {
    if wait_ms == 0 {
        return path.to_string();
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}wait_ms={wait_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LATENCY_MAX_US, LATENCY_SIGFIG};

    #[test]
    fn hold_goes_into_the_query() {
        assert_eq!(sync_path(SYNC_PATH, 0), SYNC_PATH);
        assert_eq!(
            sync_path(SYNC_PATH, 900),
            format!("{SYNC_PATH}?wait_ms=900")
        );
        assert_eq!(sync_path("/sync?x=1", 900), "/sync?x=1&wait_ms=900");
    }

    fn stats(latencies: &[u64], errors: u64) -> RoleStats {
        let mut s = RoleStats::try_new().unwrap();
        for (i, &l) in latencies.iter().enumerate() {
            let o = if (i as u64) < errors {
                Outcome::ServerError
            } else {
                Outcome::Success
            };
            s.record(o, l);
        }
        s
    }

    #[test]
    fn a_report_round_trips_through_json() {
        let s = stats(&[1_000, 2_000, 250_000, 3_000_000], 1);
        let r = RoleReport::from_stats("heart-prod", Role::Canary, "v2", &s);
        let req = SyncRequest {
            proxy: "p".into(),
            instance: "i".into(),
            seq: 3,
            epoch: 1,
            reports: vec![r],
            shadow: Vec::new(),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(
            json.contains(r#""counts":{"2xx":3,"4xx":0,"5xx":1,"reset":0}"#),
            "{json}"
        );
        let back: SyncRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
        let (counts, h) = back.reports[0].decode().unwrap();
        assert_eq!(counts.total(), 4);
        assert_eq!(h.len(), 4);
        assert_eq!(
            h.value_at_quantile(0.75),
            s.latency_us().value_at_quantile(0.75)
        );
        assert!(req.check().is_ok());
    }

    #[test]
    fn outputs_in_a_report_are_held_to_their_limits() {
        use crate::outputs::FieldCounts;
        let class = |labels: &[(&str, u64)]| FieldCounts::Class {
            labels: labels.iter().map(|&(l, n)| (l.to_string(), n)).collect(),
            other: 0,
        };
        let field = |name: &str, counts: FieldCounts| FieldReport {
            field: name.into(),
            counts,
        };
        // Three 2xx answers and a bad one.
        let mut r = RoleReport::from_stats("d", Role::Canary, "v2", &stats(&[5, 6, 7, 8], 0));
        r.counts.success = 3;
        r.counts.bad_output = 1;
        r.outputs = vec![field("prediction", class(&[("0", 2), ("1", 1)]))];
        r.outputs_skipped = Skips {
            too_large: 1,
            encoded: 0,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""bad_output":1"#), "{json}");
        assert_eq!(serde_json::from_str::<RoleReport>(&json).unwrap(), r);
        assert!(r.decode().is_ok());
        let refused = |change: &dyn Fn(&mut RoleReport)| {
            let mut bad = r.clone();
            change(&mut bad);
            matches!(bad.decode(), Err(ReportError::Outputs(_)))
        };
        assert!(refused(
            &|b| b.outputs[0] = field("prediction", class(&[("0", 4)]))
        ));
        assert!(refused(&|b| b.outputs.push(b.outputs[0].clone())));
        assert!(refused(&|b| b.outputs[0].field = "Pred".into()));
        assert!(refused(&|b| b.outputs_skipped.encoded = 4));
        assert!(refused(&|b| {
            let many: Vec<(String, u64)> = (0..17).map(|i| (format!("l{i}"), 0)).collect();
            let many: Vec<(&str, u64)> = many.iter().map(|(l, n)| (l.as_str(), *n)).collect();
            b.outputs[0] = field("prediction", class(&many));
        }));
        assert!(refused(&|b| {
            b.outputs = (0..9)
                .map(|i| field(&format!("f{i}"), class(&[])))
                .collect();
        }));
        // Reports without outputs carry none on the wire.
        let plain = RoleReport::from_stats("d", Role::Baseline, "v1", &stats(&[5], 0));
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("outputs") && !json.contains("bad_output"),
            "{json}"
        );
    }

    #[test]
    fn counts_must_agree_with_the_histogram() {
        let mut r = RoleReport::from_stats("d", Role::Baseline, "v1", &stats(&[10, 20], 0));
        r.counts.success = 5;
        assert_eq!(
            r.decode(),
            Err(ReportError::CountMismatch {
                counts: 5,
                histogram: 2
            })
        );
    }

    #[test]
    fn absurd_counts_are_refused_before_the_histogram_is_read() {
        // A histogram's counts are varints: a few bytes can claim 2^63
        // requests. Refused, so window sums can never overflow.
        let mut h = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).unwrap();
        h.record_n(1000, 1 << 62).unwrap();
        let mut r = RoleReport::from_stats("d", Role::Canary, "v2", &stats(&[], 0));
        r.latency_us = encode_histogram(&h);
        r.counts.server_error = 1 << 62;
        assert_eq!(r.decode(), Err(ReportError::TooManyRequests(1 << 62)));
        r.counts.server_error = MAX_REPORT_REQUESTS + 1;
        assert!(matches!(r.decode(), Err(ReportError::TooManyRequests(_))));
        r.counts = OutcomeCounts {
            success: u64::MAX,
            client_error: u64::MAX,
            ..OutcomeCounts::default()
        };
        assert_eq!(r.decode(), Err(ReportError::TooManyRequests(u64::MAX)));
    }

    #[test]
    fn structural_limits() {
        let mut req = SyncRequest {
            proxy: String::new(),
            instance: "i".into(),
            seq: 1,
            epoch: 0,
            reports: vec![],
            shadow: Vec::new(),
        };
        assert_eq!(req.check(), Err(ReportError::BadId("proxy")));
        req.proxy = "p".into();
        let r = RoleReport::from_stats("d", Role::Baseline, "v1", &stats(&[], 0));
        req.reports = vec![r; MAX_REPORTS + 1];
        assert_eq!(
            req.check(),
            Err(ReportError::TooManyReports(MAX_REPORTS + 1))
        );
        assert!(
            serde_json::from_str::<SyncRequest>(
                r#"{"proxy":"p","instance":"i","seq":-1,"epoch":0}"#
            )
            .is_err()
        );
    }
}
