//! `serve` on a real socket with an injected shutdown.

use coalmine_controller::auth::Tokens;
use coalmine_controller::store::SqliteStore;
use coalmine_controller::{Controller, serve};
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
