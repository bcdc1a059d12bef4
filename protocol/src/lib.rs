//! coalmine's pure core, shared by the proxy-wasm filter and the controller.
//!
//! Nothing here performs I/O, reads a clock or touches proxy-wasm, so every
//! piece compiles and is tested both natively and on `wasm32-wasip1`:
//!
//! - [`config`]: the filter's plugin configuration, parsed into typed,
//!   validated structs; errors name the offending field.
//! - [`split`]: the split table (baseline / canary targets and the canary share
//!   in basis points) the filter routes by.
//! - [`active`]: the splits a worker routes by right now: the configured
//!   ones, then the controller's table, baseline only while the lease has
//!   expired.
//! - [`routing`]: which deployment a request belongs to, and which role serves
//!   it, uniformly at random or sticky by a user key.
//! - [`outcome`]: the outcome class of a finished request (2xx/3xx, 4xx, 5xx,
//!   reset, bad_output).
//! - [`outputs`]: what a deployment's answers say: the fields read, reading
//!   and binning them, a body collected as it passes, the counts by label
//!   or bin.
//! - [`stats`]: per-role outcome counters and latency HdrHistograms, their
//!   wire encoding, and a worker's statistics pending its next report.
//! - [`sync`]: the messages between filter and controller and their limits;
//!   a worker's side of the loop as a state machine given the time (calls in
//!   flight or lost, holds, answers, the outbox that resends until
//!   acknowledged, the lease and its transitions), which the filter's
//!   callbacks only carry out.
//! - [`shared`]: the keys and values the workers of one proxy share through
//!   proxy-wasm shared data (split table with its epoch up front, lease).
//! - [`secret`]: bearer tokens compared in constant time, never printed.
// Nothing on the request path may panic: a panic is a VM trap that fails
// user traffic. (Tests may.)
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod active;
pub mod config;
pub mod outcome;
pub mod outputs;
pub mod routing;
pub mod secret;
pub mod shadow;
pub mod shared;
pub mod split;
pub mod stats;
pub mod sync;

pub use config::{ConfigError, PluginConfig};
pub use outcome::Outcome;
pub use split::{Bps, DeploymentSplit, Role, SplitTable, Target};
pub use stats::RoleStats;
