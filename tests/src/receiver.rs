//! A webhook receiver on loopback that records what it is sent, and can
//! fail its first deliveries, refuse while told to, or never answer; over
//! plain HTTP or HTTPS with a certificate the test gives it.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

#[derive(Debug, Default)]
struct Inner {
    attempts: Vec<Value>,
    accepted: Vec<Value>,
    fail_first: usize,
    hang: bool,
    refusing: bool,
    /// TLS handshakes that failed (a client that does not trust us).
    failed_handshakes: usize,
}

/// Stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    scheme: &'static str,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, body: axum::body::Bytes) -> StatusCode {
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (n, fail_first, hang, refusing) = match inner.lock() {
        Ok(mut i) => {
            i.attempts.push(payload.clone());
            (i.attempts.len(), i.fail_first, i.hang, i.refusing)
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR,
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if refusing {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if n <= fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if let Ok(mut i) = inner.lock() {
        i.accepted.push(payload);
    }
    StatusCode::NO_CONTENT
}

/// TLS over a TCP listener, for `axum::serve`: a connection whose handshake
/// fails is counted and dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    inner: Arc<Mutex<Inner>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                _ => {
                    if let Ok(mut i) = self.inner.lock() {
                        i.failed_handshakes += 1;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Receiver {
    /// Answers 500 to the first `fail_first` deliveries, 204 after; with
    /// `hang`, never answers at all.
    pub async fn start(fail_first: usize, hang: bool) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner {
            fail_first,
            hang,
            ..Inner::default()
        }));
        let app = Router::new().fallback(receive).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            addr,
            scheme: "http",
            inner,
            task,
        })
    }

    /// An HTTPS receiver answering 204, with this certificate (DER) and its
    /// PKCS #8 key (DER).
    pub async fn start_https(cert_der: Vec<u8>, key_der: Vec<u8>) -> anyhow::Result<Receiver> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert_der)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
            )?;
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            inner: inner.clone(),
        };
        let app = Router::new().fallback(receive).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            addr,
            scheme: "https",
            inner,
            task,
        })
    }

    /// `http(s)://127.0.0.1:<port>/hook`; any path below it is received too.
    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme, self.addr)
    }

    /// While `on`, every delivery is answered 503 (recorded as an attempt,
    /// not accepted).
    pub fn refuse(&self, on: bool) {
        if let Ok(mut i) = self.inner.lock() {
            i.refusing = on;
        }
    }

    /// Every delivery attempt's payload, in arrival order.
    pub fn attempts(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.attempts.clone())
            .unwrap_or_default()
    }

    /// The payloads answered 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.accepted.clone())
            .unwrap_or_default()
    }

    /// TLS handshakes that failed so far.
    pub fn failed_handshakes(&self) -> usize {
        self.inner.lock().map(|i| i.failed_handshakes).unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
