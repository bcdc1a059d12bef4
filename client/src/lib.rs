//! The typed client of the coalmine controller's REST API.
//!
//! - [`types`]: the API's own request and answer types, which the
//!   controller serves (with the `openapi` feature, their schemas);
//! - [`paths`]: every path of the API, in one place;
//! - `Client` (feature `http`, on by default): one typed call per
//!   operation, used by the CLI, the demo, the test harness and the
//!   benchmarks alike.

pub mod paths;
pub mod types;

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub use http::{Action, Auth, Client, ClientError, DEFAULT_TIMEOUT};
#[cfg(feature = "http")]
pub use reqwest::Method;
