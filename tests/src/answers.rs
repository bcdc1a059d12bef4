//! An upstream that answers whatever a test asks it to, for the outputs
//! the filter reads: `?body=<kind>` chooses the answer (see [`answer_body`]), so a
//! test can send every kind of good and bad answer through Envoy and compare
//! what the client got with what the upstream sent.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::SocketAddr;

/// A running answer server; stopped on drop.
#[derive(Debug)]
pub struct AnswerServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerServer {
    pub async fn start() -> anyhow::Result<AnswerServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(answer);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(AnswerServer { addr, task })
    }
}

impl Drop for AnswerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Deserialize)]
struct Ask {
    body: String,
    #[serde(default)]
    label: i64,
}

/// What the server answers for `kind` (and `label`, for the answers that
/// carry one): the body, its content type and encoding, and whether it is
/// sent in chunks without a length.
pub fn answer_body(kind: &str, label: i64) -> (Vec<u8>, &'static str, Option<&'static str>, bool) {
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let good =
        json(serde_json::json!({"prediction": label, "probability": 0.72, "model_version": "t"}));
    let big = json(
        serde_json::json!({"prediction": 1, "probability": 0.5, "padding": "x".repeat(100 * 1024)}),
    );
    match kind {
        "json" => (good, "application/json", None, false),
        "chunked" => (good, "application/json", None, true),
        "not_json" => (
            b"<html>model overloaded</html>".to_vec(),
            "text/html",
            None,
            false,
        ),
        "missing" => (
            json(serde_json::json!({"probability": 0.5})),
            "application/json",
            None,
            false,
        ),
        "wrong_kind" => (
            json(serde_json::json!({"prediction": 0.5, "probability": "high"})),
            "application/json",
            None,
            false,
        ),
        "empty" => (Vec::new(), "application/json", None, false),
        "huge" => (big, "application/json", None, false),
        "huge_chunked" => (big, "application/json", None, true),
        // Not really compressed: the filter must not read it either way.
        "gzip" => (good, "application/json", Some("gzip"), false),
        _ => (b"unknown kind".to_vec(), "text/plain", None, false),
    }
}

async fn answer(Query(ask): Query<Ask>) -> Response {
    let (bytes, content_type, encoding, chunked) = answer_body(&ask.body, ask.label);
    let body = if chunked {
        // Three chunks and no content-length: chunked transfer encoding.
        let third = bytes.len() / 3 + 1;
        let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(third.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(bytes)
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(e) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    resp
}
