//! The HTTP server: predictions, health, model metadata, and fault switches.
//!
//! Faults make a healthy model misbehave on purpose, for the demo, tests and
//! benchmarks: answer a share of requests with 500s, add latency, or crash
//! (500) on malformed input instead of answering 400 as a robust model does.
//! They are set at start and switched at runtime through `POST /admin/faults`,
//! which needs the admin token.

use crate::model::{Model, parse_input};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coalmine_protocol::secret::{Secret, bearer_matches};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The fault switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of predictions answered with a 500 (0 ..= 1).
    pub error_rate: f64,
    /// Added to every prediction.
    pub extra_latency_ms: u64,
    /// Answer malformed input with a 500 (a fragile model) instead of a 400.
    pub crash_on_malformed: bool,
}

/// A partial update of the switches.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    pub error_rate: Option<f64>,
    pub extra_latency_ms: Option<u64>,
    pub crash_on_malformed: Option<bool>,
}

impl Faults {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be between 0 and 1, got {}",
                self.error_rate
            ));
        }
        if self.extra_latency_ms > 60_000 {
            return Err(format!(
                "extra_latency_ms must be at most 60000, got {}",
                self.extra_latency_ms
            ));
        }
        Ok(())
    }

    fn apply(&self, u: FaultsUpdate) -> Faults {
        Faults {
            error_rate: u.error_rate.unwrap_or(self.error_rate),
            extra_latency_ms: u.extra_latency_ms.unwrap_or(self.extra_latency_ms),
            crash_on_malformed: u.crash_on_malformed.unwrap_or(self.crash_on_malformed),
        }
    }
}

#[derive(Clone, Debug)]
struct AppState {
    model: Arc<Model>,
    faults: Arc<RwLock<Faults>>,
    admin_token: Option<Arc<Secret>>,
}

/// An error answer: a status and `{error, message}`.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn failure(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        message: message.into(),
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    failure(status, code, message).into_response()
}

/// The server's routes.
pub fn router(model: Model, faults: Faults, admin_token: Option<Secret>) -> Router {
    let state = AppState {
        model: Arc::new(model),
        faults: Arc::new(RwLock::new(faults)),
        admin_token: admin_token.map(Arc::new),
    };
    Router::new()
        .route("/predict", post(predict))
        .route("/healthz", get(healthz))
        .route("/model", get(model_metadata))
        .route("/admin/faults", get(get_faults).post(set_faults))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint: try POST /predict, GET /model",
            )
        })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

fn faults(s: &AppState) -> Faults {
    s.faults.read().map(|f| *f).unwrap_or_default()
}

async fn predict(State(s): State<AppState>, body: Bytes) -> Response {
    let f = faults(&s);
    if f.extra_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.extra_latency_ms)).await;
    }
    let parsed = serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("body: not JSON ({e})"))
        .and_then(|v| parse_input(&v).map_err(|e| e.to_string()));
    let input = match parsed {
        Ok(input) => input,
        Err(_) if f.crash_on_malformed => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_crashed",
                "the model failed on malformed input",
            );
        }
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    if f.error_rate > 0.0 && rand::rng().random_bool(f.error_rate.clamp(0.0, 1.0)) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected_fault",
            "injected failure (error_rate)",
        );
    }
    let probability = s.model.probability(&input);
    Json(json!({
        "prediction": u8::from(probability >= 0.5),
        "probability": probability,
        "model_version": s.model.version,
    }))
    .into_response()
}

async fn healthz(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "model_version": s.model.version}))
}

async fn model_metadata(State(s): State<AppState>) -> Json<Value> {
    Json(Value::Object(s.model.metadata()))
}

fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), Failure> {
    let Some(token) = &s.admin_token else {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "disabled",
            "the fault switch is disabled: start the server with --admin-token (or COALMINE_MODELS_ADMIN_TOKEN)",
        ));
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if bearer_matches(token, header) {
        Ok(())
    } else {
        Err(failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the fault switch needs `Authorization: Bearer <admin token>`",
        ))
    }
}

async fn get_faults(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(f) = authorize(&s, &headers) {
        return f.into_response();
    }
    Json(faults(&s)).into_response()
}

async fn set_faults(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(f) = authorize(&s, &headers) {
        return f.into_response();
    }
    let update: FaultsUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid faults: {e}"),
            );
        }
    };
    let Ok(mut current) = s.faults.write() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "fault state unavailable",
        );
    };
    let next = current.apply(update);
    if let Err(m) = next.check() {
        return error(StatusCode::BAD_REQUEST, "bad_request", m);
    }
    *current = next;
    tracing::info!(?next, "faults changed");
    Json(next).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::example;
    use crate::train::{Options, load, train};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const TOKEN: &str = "admin-secret";

    fn model() -> Model {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/uci-heart-cleveland/cleveland.tsv"
        );
        train(
            &load(&std::fs::read_to_string(path).unwrap()).unwrap(),
            &Options::new("v1", false),
        )
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn predictions_match_the_artifact() {
        let m = model();
        let app = router(m.clone(), Faults::default(), None);
        let (status, body) = call(&app, "POST", "/predict", None, &example().to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let want = m.probability(&parse_input(&example()).unwrap());
        // By hand: bias + Σ w·encode(x), through the logistic function.
        let z = m
            .encode(&parse_input(&example()).unwrap())
            .iter()
            .zip(&m.weights)
            .fold(m.bias, |a, (x, w)| a + x * w);
        assert!((want - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
        assert_eq!(body["probability"].as_f64().unwrap(), want);
        assert_eq!(body["prediction"], u8::from(want >= 0.5));
        assert_eq!(body["model_version"], "v1");
        let (status, meta) = call(&app, "GET", "/model", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(meta["sha256"], m.sha256);
        assert_eq!(meta["test_accuracy"].as_f64().unwrap(), m.test_accuracy);
        assert_eq!(
            call(&app, "GET", "/healthz", None, "").await.1["status"],
            "ok"
        );
    }

    #[tokio::test]
    async fn malformed_input_is_a_400_naming_the_field_unless_the_model_is_fragile() {
        let app = router(model(), Faults::default(), None);
        let mut missing = example();
        missing.as_object_mut().unwrap().remove("max_HR");
        for (body, field) in [
            (missing.to_string(), "max_HR"),
            (json!({"age": "x"}).to_string(), "age"),
            ("{not json".to_string(), "body"),
            ("[]".to_string(), "body"),
        ] {
            let (status, resp) = call(&app, "POST", "/predict", None, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(
                resp["message"].as_str().unwrap().starts_with(field),
                "{resp}"
            );
        }
        let fragile = router(
            model(),
            Faults {
                crash_on_malformed: true,
                ..Faults::default()
            },
            None,
        );
        let (status, resp) = call(&fragile, "POST", "/predict", None, &missing.to_string()).await;
        assert_eq!(
            (status, resp["error"].as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, Some("model_crashed"))
        );
        assert_eq!(
            call(&fragile, "POST", "/predict", None, &example().to_string())
                .await
                .0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn fault_switches_behave_as_documented() {
        let app = router(model(), Faults::default(), Some(Secret::new(TOKEN)));
        let (status, _) = call(&app, "POST", "/admin/faults", None, r#"{"error_rate": 1}"#).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(
            &app,
            "POST",
            "/admin/faults",
            Some("wrong"),
            r#"{"error_rate": 1}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(
            &app,
            "POST",
            "/admin/faults",
            Some(TOKEN),
            r#"{"error_rate": 2}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(
            &app,
            "POST",
            "/admin/faults",
            Some(TOKEN),
            r#"{"colour": 1}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, f) = call(
            &app,
            "POST",
            "/admin/faults",
            Some(TOKEN),
            r#"{"error_rate": 1}"#,
        )
        .await;
        assert_eq!(
            (status, f["error_rate"].as_f64()),
            (StatusCode::OK, Some(1.0))
        );
        for _ in 0..20 {
            let (status, body) = call(&app, "POST", "/predict", None, &example().to_string()).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::INTERNAL_SERVER_ERROR, Some("injected_fault"))
            );
        }
        call(
            &app,
            "POST",
            "/admin/faults",
            Some(TOKEN),
            r#"{"error_rate": 0.25}"#,
        )
        .await;
        let mut errors = 0;
        for _ in 0..400 {
            if call(&app, "POST", "/predict", None, &example().to_string())
                .await
                .0
                != StatusCode::OK
            {
                errors += 1;
            }
        }
        // 25 % of 400: 100 expected; [60, 140] is over 4 standard deviations.
        assert!((60..=140).contains(&errors), "{errors} errors");

        let (_, f) = call(
            &app,
            "POST",
            "/admin/faults",
            Some(TOKEN),
            r#"{"error_rate": 0, "extra_latency_ms": 150}"#,
        )
        .await;
        assert_eq!(
            f,
            json!({"error_rate": 0.0, "extra_latency_ms": 150, "crash_on_malformed": false})
        );
        let t = std::time::Instant::now();
        assert_eq!(
            call(&app, "POST", "/predict", None, &example().to_string())
                .await
                .0,
            StatusCode::OK
        );
        assert!(t.elapsed() >= Duration::from_millis(150));
        let (status, f) = call(&app, "GET", "/admin/faults", Some(TOKEN), "").await;
        assert_eq!(
            (status, f["extra_latency_ms"].as_u64()),
            (StatusCode::OK, Some(150))
        );

        let disabled = router(model(), Faults::default(), None);
        let (status, body) = call(&disabled, "POST", "/admin/faults", Some(TOKEN), "{}").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
}
