//! The policy's `post_promotion` block: how long a newly promoted baseline
//! stays watched (the watch itself is `engine/watch.rs`).

use super::{MAX_WAIT_SECONDS, PolicyError, bad};
use serde::{Deserialize, Serialize};

/// After a promotion (by the engine or an operator) the new baseline is
/// judged for `watch_seconds` against the absolute SLOs, the old baseline's
/// last window before the promotion and the feedback metrics; an
/// established breach reverts to the pinned version. 0 turns it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PostPromotion {
    /// Seconds the new baseline is watched after a promotion (0: never;
    /// at most a day).
    #[cfg_attr(feature = "openapi", schema(maximum = 86400))]
    pub watch_seconds: u64,
}

/// The default watch: ten minutes.
pub const DEFAULT_WATCH_SECONDS: u64 = 600;

impl Default for PostPromotion {
    fn default() -> Self {
        PostPromotion {
            watch_seconds: DEFAULT_WATCH_SECONDS,
        }
    }
}

impl PostPromotion {
    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        if self.watch_seconds > MAX_WAIT_SECONDS {
            return Err(bad(
                "post_promotion.watch_seconds",
                format!(
                    "must be at most {MAX_WAIT_SECONDS} (a day; 0 turns the watch off), got {}",
                    self.watch_seconds
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::Policy;
    use serde_json::json;

    #[test]
    fn the_watch_defaults_to_ten_minutes_and_is_checked() {
        assert_eq!(Policy::default().post_promotion.watch_seconds, 600);
        let p: Policy =
            serde_json::from_value(json!({"post_promotion": {"watch_seconds": 0}})).unwrap();
        assert!(p.validate().is_ok());
        let p: Policy =
            serde_json::from_value(json!({"post_promotion": {"watch_seconds": 86_401}})).unwrap();
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "post_promotion.watch_seconds");
        assert!(e.to_string().contains("at most 86400"), "{e}");
        assert!(
            serde_json::from_value::<Policy>(json!({"post_promotion": {"watch_secs": 5}})).is_err()
        );
        // A policy stored before the watch existed reads with the default.
        let old: Policy = serde_json::from_value(json!({"bake_seconds": 30})).unwrap();
        assert_eq!(old.post_promotion.watch_seconds, 600);
    }
}
