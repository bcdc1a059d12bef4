//! Failures, each a sentence and an exit code: 2 invalid request,
//! 3 controller unreachable, 4 token refused, 5 not found, 6 transition
//! refused, 1 anything else.

use coalmine_client::ClientError;

/// A failure, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "cannot reach the controller at {url}: {cause}; {}",
        unreachable_hint(cause)
    )]
    Unreachable { url: String, cause: String },
    #[error(
        "the controller refused the token: {0} (pass --token, set COALMINE_TOKEN, or put it in .coalmine/operator-token)"
    )]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("refused: {0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Unauthorized(_) => 4,
            CliError::NotFound(_) => 5,
            CliError::Conflict(_) => 6,
            CliError::Other(_) => 1,
        }
    }
}

impl CliError {
    /// The same failure, its message changed by `f`.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> CliError {
        match self {
            CliError::Invalid(m) => CliError::Invalid(f(m)),
            CliError::Unreachable { url, cause } => CliError::Unreachable {
                url,
                cause: f(cause),
            },
            CliError::Unauthorized(m) => CliError::Unauthorized(f(m)),
            CliError::NotFound(m) => CliError::NotFound(f(m)),
            CliError::Conflict(m) => CliError::Conflict(f(m)),
            CliError::Other(m) => CliError::Other(f(m)),
        }
    }
}

/// What to check when the controller cannot be reached: a certificate
/// not trusted wants its CA, anything else the URL.
fn unreachable_hint(cause: &str) -> &'static str {
    if cause.contains("certificate") {
        "is it signed by a private CA? (trust it with --ca-file or COALMINE_CA_FILE)"
    } else {
        "is it running? (set --url or COALMINE_URL)"
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { url, cause } => CliError::Unreachable { url, cause },
            ClientError::NoToken | ClientError::NoFeedbackToken => {
                CliError::Unauthorized(e.to_string())
            }
            ClientError::Api { status, message } => match status {
                400 | 413 => CliError::Invalid(message),
                401 => CliError::Unauthorized(message),
                404 => CliError::NotFound(message),
                409 => CliError::Conflict(message),
                _ => CliError::Other(format!("the controller answered {status}: {message}")),
            },
            ClientError::Decode(m) => CliError::Other(m),
            ClientError::Setup(_) => CliError::Other(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_certificate_points_at_the_ca_file() {
        let e = CliError::Unreachable {
            url: "https://c:8700".into(),
            cause: "invalid peer certificate: UnknownIssuer".into(),
        };
        let text = e.to_string();
        assert!(text.contains("--ca-file or COALMINE_CA_FILE"), "{text}");
        let e = CliError::Unreachable {
            url: "http://c:8700".into(),
            cause: "Connection refused (os error 111)".into(),
        };
        assert!(
            e.to_string()
                .ends_with("is it running? (set --url or COALMINE_URL)")
        );
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            CliError::Invalid(String::new()).exit_code(),
            CliError::Unreachable {
                url: String::new(),
                cause: String::new(),
            }
            .exit_code(),
            CliError::Unauthorized(String::new()).exit_code(),
            CliError::NotFound(String::new()).exit_code(),
            CliError::Conflict(String::new()).exit_code(),
            CliError::Other(String::new()).exit_code(),
        ];
        let mut unique = codes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
    }
}
