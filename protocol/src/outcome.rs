//! The outcome class of a finished request.
//!
//! Envoy reports `response.code` (0 when no response was received) and
//! `response.code_details`. A response the upstream actually sent is classed
//! by its status; a request that never got one from the model (reset,
//! timeout, connection refused, no healthy host) is a `reset`, even when
//! Envoy answered the client with a local 503/504. A 2xx answer whose body
//! was read for its outputs and could not be (not JSON, a field missing or
//! of the wrong kind) is a `bad_output`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    /// 1xx, 2xx and 3xx.
    #[serde(rename = "2xx")]
    Success,
    /// 4xx: the client's fault, not the model's (by default).
    #[serde(rename = "4xx")]
    ClientError,
    /// 5xx sent by the upstream, or by Envoy for reasons other than a reset.
    #[serde(rename = "5xx")]
    ServerError,
    /// No response from the upstream.
    #[serde(rename = "reset")]
    Reset,
    /// A 2xx answer read for its outputs that holds no usable answer.
    #[serde(rename = "bad_output")]
    BadOutput,
}

/// `response.code_details` prefixes that mean the upstream never answered.
const NO_RESPONSE_DETAILS: [&[u8]; 6] = [
    b"upstream_reset",
    b"upstream_response_timeout",
    b"upstream_per_try_timeout",
    b"upstream_per_try_idle_timeout",
    b"upstream_max_stream_duration_reached",
    b"no_healthy_upstream",
];

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::Reset,
        Outcome::BadOutput,
    ];

    /// The label used in metric names and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "2xx",
            Outcome::ClientError => "4xx",
            Outcome::ServerError => "5xx",
            Outcome::Reset => "reset",
            Outcome::BadOutput => "bad_output",
        }
    }

    /// A dense index (0 ..= 4) for per-class arrays.
    pub fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::ClientError => 1,
            Outcome::ServerError => 2,
            Outcome::Reset => 3,
            Outcome::BadOutput => 4,
        }
    }

    /// Whether the status alone classes a finished request, so that
    /// `response.code_details` need not be read: a response that arrived
    /// whole with a status below 500. A missing status, a 5xx (the model's,
    /// or Envoy's for want of an answer) and a response cut off after its
    /// headers all need the details to tell a reset apart.
    pub fn status_suffices(code: u64, complete: bool) -> bool {
        complete && (100..500).contains(&code)
    }

    /// Classifies a finished request. `code` is `response.code` (0 or absent:
    /// no response), `details` is `response.code_details`.
    pub fn classify(code: u64, details: &[u8]) -> Outcome {
        if code == 0 || NO_RESPONSE_DETAILS.iter().any(|p| details.starts_with(p)) {
            return Outcome::Reset;
        }
        match code {
            100..=399 => Outcome::Success,
            400..=499 => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome::{self, *};

    #[test]
    fn details_are_needed_unless_a_whole_answer_has_a_status_below_500() {
        assert!(Outcome::status_suffices(200, true));
        assert!(Outcome::status_suffices(404, true));
        assert!(!Outcome::status_suffices(200, false), "cut off mid-body");
        assert!(!Outcome::status_suffices(0, true), "no response");
        assert!(!Outcome::status_suffices(503, true), "perhaps Envoy's");
        // Where the status suffices, a whole answer's details ("via_upstream"
        // or a local reply's reason) do not change the class.
        for code in [100, 200, 204, 302, 400, 404, 499] {
            for details in ["via_upstream", "route_not_found", ""] {
                assert_eq!(
                    Outcome::classify(code, details.as_bytes()),
                    Outcome::classify(code, b""),
                    "{code} {details}"
                );
            }
        }
    }

    #[test]
    fn classes_follow_envoy_codes_and_details() {
        let cases: &[(u64, &str, Outcome)] = &[
            (200, "via_upstream", Success),
            (204, "via_upstream", Success),
            (302, "via_upstream", Success),
            (400, "via_upstream", ClientError),
            (404, "route_not_found", ClientError),
            (500, "via_upstream", ServerError),
            (503, "via_upstream", ServerError),
            (503, "cluster_not_found", ServerError),
            (
                503,
                "upstream_reset_before_response_started{remote_connection_failure}",
                Reset,
            ),
            (
                503,
                "upstream_reset_after_response_started{remote_reset}",
                Reset,
            ),
            (504, "upstream_response_timeout", Reset),
            (503, "no_healthy_upstream", Reset),
            (0, "", Reset),
            (0, "downstream_remote_disconnect", Reset),
            (999, "via_upstream", ServerError),
        ];
        for &(code, details, want) in cases {
            assert_eq!(
                Outcome::classify(code, details.as_bytes()),
                want,
                "{code} {details}"
            );
        }
    }

    #[test]
    fn labels_and_indices_are_dense_and_distinct() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        let json = serde_json::to_string(&Outcome::ALL).unwrap();
        assert_eq!(json, r#"["2xx","4xx","5xx","reset","bad_output"]"#);
    }
}
