//! The rules of webhook delivery, pure (no I/O, no clock): the retry
//! schedule, what an answer means, where a receiver resumes, and what is
//! sent. `webhook.rs` is the shell that applies them.

use crate::store::StoredEvent;
use serde_json::{Value, json};
use std::time::Duration;

/// How each delivery is tried: again and again until a 2xx, waiting
/// `first_backoff`, then twice as long after each failure, at most
/// `max_backoff`; each attempt may take `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts in a row (1 or more).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// Whether the `failures`-th failure in a row of one delivery is logged as
/// a warning (the others at debug): the 1st, 2nd, 4th, 8th… so an outage
/// stays visible without a line every 30 s.
pub(crate) fn worth_warning(failures: u32) -> bool {
    failures.is_power_of_two()
}

/// Why an attempt did not count as delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A status other than 2xx (and 3xx).
    Status(u16),
    /// A redirect: never followed, since a receiver's URL was given on
    /// purpose and a redirect could send the event elsewhere.
    Redirect(u16),
    TimedOut,
    /// No answer (connection refused, TLS refused, …), with the cause.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "answered {s}"),
            Failure::Redirect(s) => write!(f, "answered {s} (redirects are not followed)"),
            Failure::TimedOut => write!(f, "timed out"),
            Failure::Unreachable(cause) => write!(f, "unreachable: {cause}"),
        }
    }
}

/// What an answer with `status` means: only a 2xx is a delivery.
pub(crate) fn judge(status: u16) -> Result<(), Failure> {
    match status {
        200..=299 => Ok(()),
        300..=399 => Err(Failure::Redirect(status)),
        _ => Err(Failure::Status(status)),
    }
}

/// Where a receiver's deliveries start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// After the last event it acknowledged (its stored cursor).
    Stored(i64),
    /// A receiver seen for the first time starts after the newest event:
    /// it is sent what happens from now on, not the history. The cursor
    /// must be stored at once, so a restart does not skip what came since.
    New(i64),
}

impl Resume {
    pub(crate) fn from(stored: Option<i64>, newest: i64) -> Resume {
        match stored {
            Some(id) => Resume::Stored(id),
            None => Resume::New(newest),
        }
    }

    /// The id of the last event counted as delivered.
    pub(crate) fn cursor(self) -> i64 {
        match self {
            Resume::Stored(id) | Resume::New(id) => id,
        }
    }
}

/// The JSON POSTed for `e`. Its `id` is the event's id in the timeline:
/// increasing, and the same on every attempt, so a receiver can drop a
/// repeat (after a crash between its 2xx and the cursor's write).
pub(crate) fn payload(e: &StoredEvent, public_url: &str) -> Value {
    json!({
        "deployment": e.deployment,
        "event": e.event.kind.as_str(),
        "id": e.id,
        "at": e.at,
        "actor": e.event.actor,
        "reason": e.event.reason,
        "numbers": e.event.numbers,
        "link": format!("{}/#/deployments/{}", public_url.trim_end_matches('/'), e.deployment),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalmine_decide::engine::{Event, EventKind};

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = RetryPolicy::default();
        let waits: Vec<u64> = (1..=9).map(|n| r.backoff(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(r.backoff(0), r.first_backoff);
        assert_eq!(r.backoff(u32::MAX), r.max_backoff);
    }

    #[test]
    fn warnings_thin_out_as_an_outage_lasts() {
        let warned: Vec<u32> = (1..=40).filter(|&n| worth_warning(n)).collect();
        assert_eq!(warned, [1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn only_a_2xx_is_a_delivery() {
        assert_eq!(judge(200), Ok(()));
        assert_eq!(judge(204), Ok(()));
        assert_eq!(judge(302), Err(Failure::Redirect(302)));
        assert_eq!(judge(308), Err(Failure::Redirect(308)));
        assert_eq!(judge(404), Err(Failure::Status(404)));
        assert_eq!(judge(503), Err(Failure::Status(503)));
        assert_eq!(
            Failure::Redirect(301).to_string(),
            "answered 301 (redirects are not followed)"
        );
    }

    #[test]
    fn a_new_receiver_starts_at_the_newest_event() {
        assert_eq!(Resume::from(None, 42), Resume::New(42));
        assert_eq!(Resume::from(Some(7), 42), Resume::Stored(7));
        assert_eq!(Resume::from(None, 0).cursor(), 0);
        assert_eq!(Resume::from(Some(7), 42).cursor(), 7);
    }

    #[test]
    fn the_payload_carries_the_event_id_and_a_link() {
        let e = StoredEvent {
            id: 17,
            deployment: "heart-prod".into(),
            at: 1000,
            event: Event {
                kind: EventKind::RolledBack,
                actor: "operator".into(),
                reason: "bad outputs".into(),
                numbers: json!({"version": "v2"}).as_object().cloned().unwrap(),
            },
        };
        let p = payload(&e, "http://coalmine.example:8700/");
        assert_eq!(p["id"], 17);
        assert_eq!(p["event"], "rolled_back");
        assert_eq!(
            p["link"],
            "http://coalmine.example:8700/#/deployments/heart-prod"
        );
        assert_eq!(p["numbers"]["version"], "v2");
    }
}
