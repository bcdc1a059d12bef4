//! Bearer tokens (the controller's operator and sync tokens, the model
//! server's admin token): compared in constant time and never printed
//! ([`Secret`]'s `Debug` is redacted).

use subtle::ConstantTimeEq;

/// A token that must not appear in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(token: impl Into<String>) -> Secret {
        Secret(token.into())
    }

    /// Whether `presented` is this token (constant time in its content).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Whether an `Authorization` header value carries `token` as a bearer token.
pub fn bearer_matches(token: &Secret, header: Option<&[u8]>) -> bool {
    header
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .is_some_and(|presented| token.matches(presented.trim_ascii()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let t = Secret::new("s3cret");
        assert!(bearer_matches(&t, Some(b"Bearer s3cret")));
        assert!(!bearer_matches(&t, Some(b"Bearer s3cre")));
        assert!(!bearer_matches(&t, Some(b"Bearer s3cret2")));
        assert!(!bearer_matches(&t, Some(b"Basic s3cret")));
        assert!(!bearer_matches(&t, None));
        assert_eq!(format!("{t:?}"), "Secret(<redacted>)");
    }
}
