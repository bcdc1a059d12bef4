//! A webhook receiver as the controller knows it: its URL, the redacted
//! form every log line and metric label uses instead, and the key its
//! delivery cursor is stored under. Pure: no I/O.
//!
//! Webhook URLs are often secrets (a Slack hook's path is its credential),
//! so only the scheme, host and port are ever shown, and the database keeps
//! a SHA-256 of the URL, never the URL.

use reqwest::Url;
use sha2::{Digest, Sha256};

/// A `--webhook` that cannot be used. The message shows the redacted form
/// of the URL, never its path or query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    #[error("{0} is not a URL")]
    NotAUrl(String),
    #[error("{0} is not an http(s) URL")]
    NotHttp(String),
}

/// A configured receiver.
#[derive(Clone, PartialEq, Eq)]
pub struct Receiver {
    url: Url,
    redacted: String,
    key: String,
}

impl std::fmt::Debug for Receiver {
    // The URL itself stays out of debug output too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("redacted", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Parses a `--webhook` value: an absolute `http://` or `https://` URL
    /// with a host.
    pub fn parse(given: &str) -> Result<Receiver, ReceiverError> {
        let given = given.trim();
        let url = Url::parse(given).map_err(|_| ReceiverError::NotAUrl(redact_unparsed(given)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ReceiverError::NotHttp(redact(&url)));
        }
        Ok(Receiver {
            redacted: redact(&url),
            key: cursor_key(given),
            url,
        })
    }

    /// Where deliveries are POSTed.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Scheme, host and port only: what logs and metrics show.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The key of its cursor in the store (SHA-256 of the URL, hex).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// `scheme://host[:port]/…`: what the URL is, without anything secret
/// (user, password, path, query, fragment). The `/…` says something was
/// left out.
pub(crate) fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// What may be shown of a string that does not parse as a URL: its scheme
/// at most.
fn redact_unparsed(given: &str) -> String {
    match given.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            format!("{scheme}://…")
        }
        _ => "…".to_string(),
    }
}

/// SHA-256 of the URL as given (trimmed), in lowercase hex. The same URL
/// keeps its cursor across restarts; any change to it starts afresh.
pub(crate) fn cursor_key(url: &str) -> String {
    Sha256::digest(url.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Each receiver once (the same URL given twice is one receiver), in the
/// order given; blanks are skipped.
pub fn receivers(given: &[String]) -> Result<Vec<Receiver>, ReceiverError> {
    let mut out: Vec<Receiver> = Vec::new();
    for g in given.iter().filter(|g| !g.trim().is_empty()) {
        let r = Receiver::parse(g)?;
        if !out.iter().any(|o| o.key == r.key) {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(url: &str) -> String {
        Receiver::parse(url).unwrap().redacted().to_string()
    }

    #[test]
    fn redaction_keeps_scheme_host_and_port_only() {
        assert_eq!(
            redacted("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redacted("http://user:pass@127.0.0.1:9000/hook?token=s3cret#frag"),
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(redacted("https://[::1]:8443/x"), "https://[::1]:8443/…");
        // The default port is not shown: it says nothing.
        assert_eq!(
            redacted("https://example.com:443/x"),
            "https://example.com/…"
        );
    }

    #[test]
    fn only_http_urls_with_a_host_are_receivers() {
        assert_eq!(
            Receiver::parse("ftp://files.example/secret").unwrap_err(),
            ReceiverError::NotHttp("ftp://files.example/…".into())
        );
        let err = Receiver::parse("hooks.slack.com/services/SECRET").unwrap_err();
        assert_eq!(err, ReceiverError::NotAUrl("…".into()));
        let err = Receiver::parse("https://exa mple.com/SECRET").unwrap_err();
        assert_eq!(err.to_string(), "https://… is not a URL");
        assert!(Receiver::parse(" https://hooks.example/x ").is_ok());
    }

    #[test]
    fn the_cursor_key_is_a_hash_never_the_url() {
        let r = Receiver::parse("https://hooks.example/SECRET").unwrap();
        assert_eq!(r.key().len(), 64);
        assert!(r.key().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!r.key().contains("SECRET"));
        assert_eq!(r.key(), cursor_key(" https://hooks.example/SECRET"));
        assert_ne!(r.key(), cursor_key("https://hooks.example/OTHER"));
        assert!(!format!("{r:?}").contains("SECRET"));
    }

    #[test]
    fn the_same_url_twice_is_one_receiver() {
        let given = [
            "https://a.example/1".to_string(),
            " ".to_string(),
            "https://b.example/2".to_string(),
            "https://a.example/1".to_string(),
        ];
        let r = receivers(&given).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].url().as_str(), "https://a.example/1");
    }
}
