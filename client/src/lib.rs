//! The typed client of the coalmine controller's REST API.
//!
//! - [`types`]: the API's own request and answer types, which the
//!   controller serves (with the `openapi` feature, their schemas);
//! - [`paths`]: every path of the API, in one place;
//! - `Client` (feature `http`, on by default): one typed call per
//!   operation, used by the CLI, the demo, the test harness and the
//!   benchmarks alike; `https://` controllers are checked against the
//!   system's roots (rustls) and, through [`ClientBuilder`], extra ones;
//! - [`roots`] (feature `http`): reading a PEM file of extra roots.

pub mod paths;
pub mod types;

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub mod roots;
#[cfg(feature = "http")]
pub use http::{Action, Auth, Client, ClientBuilder, ClientError, DEFAULT_TIMEOUT};
#[cfg(feature = "http")]
pub use reqwest::Method;
