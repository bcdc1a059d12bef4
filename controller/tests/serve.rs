//! `serve` on a real socket with an injected shutdown.

use coalmine_controller::auth::{LiveTokens, Tokens};
use coalmine_controller::store::SqliteStore;
use coalmine_controller::{Controller, Limits, Transport, serve, serve_with};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn serves_until_told_to_stop_then_returns() {
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let controller = Controller::open(store, Default::default()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, controller, Tokens::default(), async {
        let _ = stopped.await;
    }));
    let reply = get(addr, "/healthz").await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#"{"status":"ok"}"#), "{reply}");
    stop.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(
        matches!(done, Ok(Ok(Ok(())))),
        "serve did not return cleanly: {done:?}"
    );
    assert!(
        get(addr, "/healthz").await.is_err(),
        "still accepting after shutdown"
    );
}

/// A controller serving HTTPS with a fresh self-signed certificate for
/// 127.0.0.1, its headers (and handshakes) due within `header_timeout`.
async fn tls_controller(
    header_timeout: Duration,
) -> (
    std::net::SocketAddr,
    Arc<Controller>,
    rcgen::CertifiedKey<rcgen::KeyPair>,
    tempfile::TempDir,
) {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, key.cert.pem()).unwrap();
    std::fs::write(&key_file, key.signing_key.serialize_pem()).unwrap();
    let (acceptor, _) = coalmine_controller::tls::acceptor(&cert_file, &key_file).unwrap();
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let controller = Controller::open(store, Default::default()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        header_timeout,
        ..Limits::default()
    };
    let tokens = Tokens::single(None, Some("sync-token"), None);
    tokio::spawn(serve_with(
        listener,
        controller.clone(),
        Arc::new(LiveTokens::new(tokens)),
        limits,
        Transport::Tls(acceptor),
        std::future::pending(),
    ));
    (addr, controller, key, dir)
}

fn handshake_failures(controller: &Controller, reason: &str) -> u64 {
    let needle =
        format!("coalmine_controller_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    controller
        .metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn over_tls_plain_http_gets_no_answer_and_a_trusting_client_does() {
    let (addr, controller, key, _dir) = tls_controller(Duration::from_secs(10)).await;
    // Plain HTTP: the handshake fails; no HTTP status line comes back.
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
    .expect("the connection was not closed");
    assert!(
        !String::from_utf8_lossy(&reply).contains("HTTP/1.1"),
        "plain HTTP was answered: {reply:?}"
    );
    assert_eq!(handshake_failures(&controller, "error"), 1);

    // A client trusting the certificate is served, over HTTP/1.1.
    let mut tls = tls_connect(addr, &key).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(handshake_failures(&controller, "error"), 1);
}

/// A TLS connection to `addr`, trusting `key`'s certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    key: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// A request refused before its body is read (no token) closes the
/// connection; a client still sending that body must get the answer, not a
/// reset (over TLS, clients report the reset as a protocol violation).
#[tokio::test]
async fn over_tls_an_answer_given_before_the_body_is_read_reaches_the_client() {
    let (addr, _controller, key, _dir) = tls_controller(Duration::from_secs(10)).await;
    let body = vec![b'a'; 1 << 20];
    let mut tls = tls_connect(addr, &key).await;
    let head = format!(
        "POST /v1/sync HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // As a client on a slower link: the answer comes while it sends.
    for chunk in body.chunks(64 * 1024) {
        tls.write_all(chunk)
            .await
            .expect("the body could not be sent to the end");
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 401"), "{read:?}: {text}");
}

#[tokio::test]
async fn over_tls_a_client_that_sends_nothing_is_closed_at_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let (addr, controller, _key, _dir) = tls_controller(timeout).await;
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "still open after 5 s");
    let took = started.elapsed();
    assert!(took >= timeout, "closed after {took:?}, before the timeout");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(handshake_failures(&controller, "timeout"), 1);
    assert!(
        controller
            .metrics()
            .encode()
            .contains("coalmine_controller_open_connections 0"),
        "the connection is still counted open"
    );
}
