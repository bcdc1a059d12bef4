//! The tokens the API checks (compared in constant time by
//! [`coalmine_protocol::secret`]).

pub use coalmine_protocol::secret::{Secret, bearer_matches};

/// The operator's token (calls that change state) and the proxies' (sync);
/// `None` disables a check (`--insecure-dev`).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub operator: Option<Secret>,
    pub sync: Option<Secret>,
}
