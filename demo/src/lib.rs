//! The demo's traffic: real patients posted as live predictions, and the
//! diagnoses their records confirm fed back after a delay. `make demo`
//! tells its story with it; the end-to-end tests drive canaries with it.

pub mod traffic;

pub use traffic::{Labels, Plan, Tally, Traffic};
