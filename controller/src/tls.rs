//! HTTPS for the API: the certificate chain and key operators give
//! (`--tls-cert`, `--tls-key`), read and checked before the controller
//! serves, so a bad file stops it at start with the file's name.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// The TLS side of the listener: every accepted connection is handed to
/// this before HTTP.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsFileError> {
    Ok(TlsAcceptor::from(Arc::new(server_config(cert, key)?)))
}

/// A server configuration of the PEM chain at `cert` (the server's own
/// certificate first) and the PEM key at `key` (PKCS#8, PKCS#1 RSA or SEC1
/// EC), checked to belong together. HTTP/1.1 only, as the API serves.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsFileError> {
    let fail = |path: &Path, reason: String| TlsFileError {
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| fail(cert, format!("cannot be read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert, format!("is not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail(
            cert,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| fail(key, format!("cannot be read: {e}")))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        fail(
            key,
            format!("holds no usable PEM private key (PKCS#8, RSA or EC): {e}"),
        )
    })?;
    // The provider the workspace's rustls is built with (reqwest's too),
    // named rather than left to the process default.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(cert, format!("no TLS version to offer: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            fail(
                cert,
                format!("cannot serve with the key {}: {e}", key.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How long, and how much, a closing connection reads on ([`Lingering`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// A connection that, when HTTP closes it, sends its close (TLS
/// close_notify, then FIN) and reads on for at most [`LINGER`] and
/// [`LINGER_BYTES`], discarding, before letting go. An answer given
/// without reading the request's body (a refused token) is then read by
/// a client still sending that body, instead of being lost to a reset:
/// over TLS, clients report that reset as a protocol violation.
#[derive(Debug)]
pub struct Lingering<T> {
    inner: T,
    /// Set once the close is sent: until when, and how much more, to read.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl<T> Lingering<T> {
    pub fn new(inner: T) -> Lingering<T> {
        Lingering {
            inner,
            linger: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER)), LINGER_BYTES));
        }
        let Some((deadline, left)) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() && buf.filled().len() < *left => {
                    *left -= buf.filled().len();
                }
                // The client's end (or error, or too much): done.
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_matching_pair_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pair(dir.path(), "a");
        let missing = dir.path().join("nope.key");
        let err = server_config(&cert, &missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
        assert!(err.contains("cannot be read"), "{err}");
    }

    #[test]
    fn a_file_without_certificates_or_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let text = dir.path().join("text.pem");
        std::fs::write(&text, "not pem\n").unwrap();
        let err = server_config(&text, &key).unwrap_err().to_string();
        assert!(err.contains("text.pem: holds no PEM certificate"), "{err}");
        let err = server_config(&cert, &text).unwrap_err().to_string();
        assert!(
            err.contains("text.pem: holds no usable PEM private key"),
            "{err}"
        );
        // A certificate given as the key.
        let err = server_config(&cert, &cert).unwrap_err().to_string();
        assert!(
            err.contains("a.crt: holds no usable PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pair(dir.path(), "a");
        let (_, other) = pair(dir.path(), "b");
        let err = server_config(&cert, &other).unwrap_err().to_string();
        assert!(err.contains("cannot serve with the key"), "{err}");
        assert!(err.contains("b.key"), "{err}");
    }
}
