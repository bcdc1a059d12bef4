//! HTTPS for the API: the certificate chain and key operators give
//! (`--tls-cert`, `--tls-key`), read and checked before the controller
//! serves, so a bad file stops it at start with the file's name. On
//! SIGHUP, and when a periodic check finds the files changed, they are
//! read again ([`LiveCert`]): a renewed certificate serves the connections
//! that come after, without a restart; files that do not check out leave
//! the old one serving.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// A certificate or key file that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// The TLS side of the listener: every accepted connection is handed to
/// this before HTTP; and the certificate it serves, to reload.
pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<LiveCert>), TlsFileError> {
    let (config, live) = server_config(cert, key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), live))
}

/// The certificate the listener serves: the files it was read from, and
/// what they held when last read whole and checked.
#[derive(Debug)]
pub struct LiveCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last read (their contents, or why they could not be
    /// read), taken or not: a periodic check tries them again only when
    /// that changed (a bad pair, or a missing file, is reported once, not
    /// at every check). Held while a reload runs, so a signal's and a
    /// check's reloads never interleave.
    tried: Mutex<(ReadFile, ReadFile)>,
}

/// A file's contents, or why it could not be read.
type ReadFile = Result<Vec<u8>, String>;

fn read_file(path: &Path) -> ReadFile {
    std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))
}

impl LiveCert {
    /// Reads the files again; when they check out, the connections that
    /// come after are served with them (those open keep theirs). When they
    /// do not, the old certificate keeps serving and the error names the
    /// file.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        self.try_files(true).map(|_| ())
    }

    /// [`LiveCert::reload`] when the files hold something else than when
    /// last tried: whether a new certificate now serves.
    pub fn reload_if_changed(&self) -> Result<bool, TlsFileError> {
        self.try_files(false)
    }

    fn try_files(&self, always: bool) -> Result<bool, TlsFileError> {
        let mut tried = self.tried.lock().unwrap_or_else(PoisonError::into_inner);
        let files = (read_file(&self.cert), read_file(&self.key));
        if !always && *tried == files {
            return Ok(false);
        }
        tried.clone_from(&files);
        let cert = files.0.map_err(|reason| fail(&self.cert, reason))?;
        let key = files.1.map_err(|reason| fail(&self.key, reason))?;
        let fresh = Arc::new(certified_key((&self.cert, &cert), (&self.key, &key))?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(true)
    }

    /// The files, as the operator named them.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current))
    }
}

/// The provider the workspace's rustls is built with (reqwest's too),
/// named rather than left to the process default.
fn provider() -> CryptoProvider {
    ring::default_provider()
}

/// A server configuration serving the PEM chain at `cert` (the server's
/// own certificate first) with the PEM key at `key` (PKCS#8, PKCS#1 RSA or
/// SEC1 EC), checked to belong together, and the handle that reloads them.
/// HTTP/1.1 only, as the API serves.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<(ServerConfig, Arc<LiveCert>), TlsFileError> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let first = certified_key((cert, &cert_pem), (key, &key_pem))?;
    let live = Arc::new(LiveCert {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        current: RwLock::new(Arc::new(first)),
        tried: Mutex::new((Ok(cert_pem), Ok(key_pem))),
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(cert, format!("no TLS version to offer: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(live.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, live))
}

fn fail(path: &Path, reason: String) -> TlsFileError {
    TlsFileError {
        path: path.to_path_buf(),
        reason,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    read_file(path).map_err(|reason| fail(path, reason))
}

/// The chain read from `cert` and the key read from `key`, checked to
/// belong together.
fn certified_key(
    (cert, cert_pem): (&Path, &[u8]),
    (key, key_pem): (&Path, &[u8]),
) -> Result<CertifiedKey, TlsFileError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert, format!("is not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail(
            cert,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        fail(
            key,
            format!("holds no usable PEM private key (PKCS#8, RSA or EC): {e}"),
        )
    })?;
    // As the single-certificate configuration checks them: the key must
    // be the certificate's (when rustls can tell).
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        fail(
            cert,
            format!("cannot serve with the key {}: {e}", key.display()),
        )
    })?;
    Ok(certified)
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
        let (config, _) = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_reload_takes_checked_files_and_keeps_the_old_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, live) = server_config(&cert, &key).unwrap();
        let served = |live: &LiveCert| live.current.read().unwrap().cert[0].clone();
        let first = served(&live);
        // Another pair at the same paths: served after the reload.
        let (b_cert, b_key) = pair(dir.path(), "b");
        std::fs::copy(&b_cert, &cert).unwrap();
        std::fs::copy(&b_key, &key).unwrap();
        live.reload().unwrap();
        let second = served(&live);
        assert_ne!(first, second);
        // A half-written certificate, or a key of another certificate: the
        // error names the file, and the last good one keeps serving.
        std::fs::write(&cert, "-----BEGIN CERT").unwrap();
        let err = live.reload().unwrap_err().to_string();
        assert!(err.contains("a.crt"), "{err}");
        assert_eq!(served(&live), second);
        let (c_cert, _) = pair(dir.path(), "c");
        std::fs::copy(&c_cert, &cert).unwrap();
        let err = live.reload().unwrap_err().to_string();
        assert!(err.contains("cannot serve with the key"), "{err}");
        assert_eq!(served(&live), second);
        // A periodic check reports that pair once, then waits for a change.
        assert!(live.reload_if_changed().is_ok_and(|taken| !taken));
        std::fs::copy(&b_key, &key).unwrap();
        std::fs::copy(&b_cert, &cert).unwrap();
        assert!(live.reload_if_changed().unwrap());
        assert_eq!(served(&live), second, "b's pair again");
        assert!(!live.reload_if_changed().unwrap(), "nothing changed since");
        // A missing file: reported once, the old pair serving.
        std::fs::remove_file(&key).unwrap();
        let err = live.reload_if_changed().unwrap_err().to_string();
        assert!(err.contains("a.key: cannot be read"), "{err}");
        assert!(!live.reload_if_changed().unwrap(), "reported once");
        assert_eq!(served(&live), second);
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
