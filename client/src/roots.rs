//! Extra trusted roots: a PEM file of CA certificates (a private CA, or a
//! self-signed server's own certificate), trusted besides the system's
//! roots. The CLI (`--ca-file`) and the controller's webhooks read it the
//! same way.

use std::path::{Path, PathBuf};

/// A CA file that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("the CA file {}: {reason}", path.display())]
pub struct CaFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// The certificates of the PEM file at `path`: one or several
/// `-----BEGIN CERTIFICATE-----` blocks (text around them is ignored).
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let fail = |reason: String| CaFileError {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    parse_pem_bundle(&pem).map_err(fail)
}

/// The certificates of a PEM bundle, each checked usable as a root; the
/// error says why not.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs =
        reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    // rustls decodes a root only when a client is built with it: build a
    // throwaway one per certificate now, so a bad one is refused here, by
    // its place in the file, rather than by the first call.
    for (i, cert) in certs.iter().enumerate() {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert.clone())
            .build()
            .map_err(|e| {
                format!(
                    "certificate {} of {} is not usable: {}",
                    i + 1,
                    certs.len(),
                    error_chain(&e)
                )
            })?;
    }
    Ok(certs)
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let err = read_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("the CA file /nonexistent/ca.pem: cannot be read"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let err = parse_pem_bundle(b"just some text\n").unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn a_block_that_is_not_a_certificate_is_refused() {
        let pem =
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let err = parse_pem_bundle(pem).unwrap_err();
        assert!(err.starts_with("certificate 1 of 1 is not usable"), "{err}");
    }
}
