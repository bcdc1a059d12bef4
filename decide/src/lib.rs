//! coalmine's decisions, as pure functions: no clock, no I/O, no database.
//!
//! - [`window`]: rolling per-second buckets of every proxy's reports, merged
//!   into each role's requests, errors and exact percentiles;
//! - [`observe`]: what the policy looks at for a deployment at a moment;
//! - [`policy`]: the thresholds, schedule and switches operators set;
//! - [`rules`]: the policy's rules, one function each, combined into a
//!   [`verdict`] (CRITICAL / DEGRADED / HEALTHY / INSUFFICIENT_DATA) with
//!   reasons that carry a [`verdict::ReasonCode`] and their numbers;
//! - [`significance`]: anytime-valid tests and confidence sequences for
//!   rates (the policy's significance guard);
//! - [`engine`]: the deployment state machine: `step` for the engine's own
//!   decisions, `command` for an operator's;
//! - [`sim`]: the decision simulator (`make bench-decisions`).
//!
//! The controller is the I/O shell around this crate; the simulator and the
//! tests drive it with synthetic statistics and a fake clock. With the
//! `openapi` feature the types the API shows derive their OpenAPI schemas.

pub mod engine;
pub mod observe;
pub mod policy;
pub mod rules;
pub mod significance;
pub mod sim;
pub mod verdict;
pub mod window;
