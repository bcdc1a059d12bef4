//! The tokens the API checks (compared in constant time by
//! [`coalmine_protocol::secret`]).

pub use coalmine_protocol::secret::{Secret, bearer_matches};

/// The operator's token (calls that change state), the proxies' (sync) and
/// the data pipelines' (feedback only); `None` disables the operator's or
/// the proxies' check (`--insecure-dev`). Without a feedback token, only
/// the operator token posts feedback.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub operator: Option<Secret>,
    pub sync: Option<Secret>,
    pub feedback: Option<Secret>,
}
