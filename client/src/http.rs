//! The client: one typed call per operation of the API, over reqwest.

use crate::paths;
use crate::roots::{CaFileError, error_chain, read_ca_file};
use crate::types::{
    CreateDeployment, DeploymentView, ErrorBody, FeedbackAccepted, FeedbackBatch, ReasonBody,
    RegisterVersion, Sample, SetTraffic, StartCanary, StartShadow, StoredEvent, UnbarVersion,
};
use coalmine_decide::engine::Version;
use coalmine_decide::policy::Policy;
use coalmine_decide::verdict::Health;
use coalmine_protocol::sync::{SyncRequest, SyncResponse};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How long a call may take unless the client is built with another timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the controller at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The controller answered with an error (`{error, message}`).
    #[error("{message}")]
    Api { status: u16, message: String },
    /// A call that changes state, without an operator token.
    #[error("no operator token given, and changes need one")]
    NoToken,
    /// Feedback, with neither a feedback nor an operator token.
    #[error("no feedback token (or operator token) given, and feedback needs one")]
    NoFeedbackToken,
    /// An answer that is not what the API promises.
    #[error("unexpected answer from the controller: {0}")]
    Decode(String),
    /// The HTTP client cannot be set up (e.g. the system's roots are unreadable).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Which token a call presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Operator,
    Sync,
    /// The feedback token, else the operator token.
    Feedback,
}

/// A controller, reached at its base URL.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    operator_token: Option<String>,
    sync_token: Option<String>,
    feedback_token: Option<String>,
}

impl Client {
    /// A client of the controller at `url` (e.g. `http://127.0.0.1:8700`),
    /// calls time out after [`DEFAULT_TIMEOUT`].
    pub fn new(url: &str) -> Client {
        Client::with_timeout(url, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(url: &str, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Client::over(http, url)
    }

    /// A client with more than a URL: another timeout, extra trusted roots.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_string(),
            timeout: DEFAULT_TIMEOUT,
            roots: Vec::new(),
        }
    }

    fn over(http: reqwest::Client, url: &str) -> Client {
        Client {
            http,
            url: url.trim_end_matches('/').to_string(),
            operator_token: None,
            sync_token: None,
            feedback_token: None,
        }
    }

    /// Presents `token` on calls that change state.
    pub fn operator_token(mut self, token: Option<String>) -> Client {
        self.operator_token = token;
        self
    }

    /// Presents `token` on sync calls.
    pub fn sync_token(mut self, token: Option<String>) -> Client {
        self.sync_token = token;
        self
    }

    /// Presents `token` on feedback calls (without it, the operator token).
    pub fn feedback_token(mut self, token: Option<String>) -> Client {
        self.feedback_token = token;
        self
    }

    /// The controller's base URL.
    pub fn base_url(&self) -> &str {
        &self.url
    }

    /// The full URL of an API path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn request(&self, method: Method, path: &str, auth: Auth) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        let token = match auth {
            Auth::None => None,
            Auth::Operator => self.operator_token.as_ref(),
            Auth::Sync => self.sync_token.as_ref(),
            Auth::Feedback => self
                .feedback_token
                .as_ref()
                .or(self.operator_token.as_ref()),
        };
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, String), ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.url.clone(),
            cause: unreachable_cause(&e),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Decode(format!("reading the answer: {e}")))?;
        Ok((status, text))
    }

    /// Any call, as JSON in and out, whatever the status: for what the
    /// typed calls cannot send (a malformed body, a missing token).
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        auth: Auth,
    ) -> Result<(u16, Value), ClientError> {
        let mut req = self.request(method, path, auth);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, text) = self.send(req).await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// A typed call: `body` as JSON, the answer as `T`, an error answer as
    /// [`ClientError::Api`].
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: Auth,
    ) -> Result<T, ClientError> {
        if auth == Auth::Operator && self.operator_token.is_none() {
            return Err(ClientError::NoToken);
        }
        if auth == Auth::Feedback && self.feedback_token.is_none() && self.operator_token.is_none()
        {
            return Err(ClientError::NoFeedbackToken);
        }
        let mut req = self.request(method, path, auth);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, text) = self.send(req).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.message)
                .unwrap_or(text);
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None, Auth::None)
            .await
    }

    async fn change<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(method, path, Some(body), Auth::Operator).await
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentView>, ClientError> {
        self.get(paths::DEPLOYMENTS).await
    }

    pub async fn deployment(&self, name: &str) -> Result<DeploymentView, ClientError> {
        self.get(&paths::deployment(name)).await
    }

    pub async fn create_deployment(
        &self,
        body: &CreateDeployment,
    ) -> Result<DeploymentView, ClientError> {
        self.change(Method::POST, paths::DEPLOYMENTS, body).await
    }

    pub async fn versions(&self, name: &str) -> Result<Vec<Version>, ClientError> {
        self.get(&paths::of(name, "versions")).await
    }

    pub async fn register_version(
        &self,
        name: &str,
        body: &RegisterVersion,
    ) -> Result<Version, ClientError> {
        self.change(Method::POST, &paths::of(name, "versions"), body)
            .await
    }

    /// Lifts the bar on a rolled-back version, with the reason.
    pub async fn unbar_version(
        &self,
        name: &str,
        body: &UnbarVersion,
    ) -> Result<Version, ClientError> {
        self.change(Method::POST, &paths::of(name, "unbar"), body)
            .await
    }

    pub async fn start_canary(
        &self,
        name: &str,
        body: &StartCanary,
    ) -> Result<DeploymentView, ClientError> {
        self.change(Method::POST, &paths::of(name, "canary"), body)
            .await
    }

    /// Starts a shadow of `version` copying `percent` of the baseline's
    /// requests (none: 100), or changes the running one's version or share.
    pub async fn start_shadow(
        &self,
        name: &str,
        version: &str,
        percent: Option<f64>,
    ) -> Result<DeploymentView, ClientError> {
        let body = StartShadow {
            version: version.to_string(),
            percent,
        };
        self.change(Method::POST, &paths::of(name, "shadow"), &body)
            .await
    }

    /// Stops the running shadow.
    pub async fn stop_shadow(&self, name: &str) -> Result<DeploymentView, ClientError> {
        let path = paths::of(name, "shadow");
        self.call::<(), _>(Method::DELETE, &path, None, Auth::Operator)
            .await
    }

    pub async fn set_traffic(
        &self,
        name: &str,
        canary_percent: f64,
    ) -> Result<DeploymentView, ClientError> {
        let body = SetTraffic { canary_percent };
        self.change(Method::PUT, &paths::of(name, "traffic"), &body)
            .await
    }

    /// `pause`, `resume`, `promote` or `rollback`, with an optional reason.
    pub async fn act(
        &self,
        name: &str,
        action: Action,
        reason: Option<String>,
    ) -> Result<DeploymentView, ClientError> {
        let path = paths::of(name, action.as_str());
        self.change(Method::POST, &path, &ReasonBody { reason })
            .await
    }

    pub async fn health(&self, name: &str) -> Result<Health, ClientError> {
        self.get(&paths::of(name, "health")).await
    }

    pub async fn events(
        &self,
        name: &str,
        since: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<StoredEvent>, ClientError> {
        self.get(&paths::events(name, since, limit)).await
    }

    /// The newest events (below `before`), newest first.
    pub async fn latest_events(
        &self,
        name: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<StoredEvent>, ClientError> {
        self.get(&paths::latest_events(name, before, limit)).await
    }

    pub async fn history(
        &self,
        name: &str,
        since: Option<u64>,
    ) -> Result<Vec<Sample>, ClientError> {
        self.get(&paths::history(name, since)).await
    }

    pub async fn policy(&self, name: &str) -> Result<Policy, ClientError> {
        self.get(&paths::of(name, "policy")).await
    }

    pub async fn set_policy(
        &self,
        name: &str,
        policy: &Policy,
    ) -> Result<DeploymentView, ClientError> {
        self.change(Method::PUT, &paths::of(name, "policy"), policy)
            .await
    }

    /// Posts one call of feedback (at most
    /// [`MAX_FEEDBACK_OBSERVATIONS`](crate::types::MAX_FEEDBACK_OBSERVATIONS)
    /// observations), with the feedback token or else the operator token.
    pub async fn feedback(
        &self,
        name: &str,
        batch: &FeedbackBatch,
    ) -> Result<FeedbackAccepted, ClientError> {
        let path = paths::of(name, "feedback");
        self.call(Method::POST, &path, Some(batch), Auth::Feedback)
            .await
    }

    /// A proxy's sync call (with the sync token), held up to `wait_ms`.
    pub async fn sync(&self, req: &SyncRequest, wait_ms: u64) -> Result<SyncResponse, ClientError> {
        self.call(Method::POST, &paths::sync(wait_ms), Some(req), Auth::Sync)
            .await
    }

    /// The controller's Prometheus metrics (text).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.text(paths::METRICS).await
    }

    /// A page as text (the dashboard, `/metrics`), failing on an error status.
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let (status, text) = self
            .send(self.request(Method::GET, path, Auth::None))
            .await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Api {
                status,
                message: text,
            });
        }
        Ok(text)
    }

    /// Liveness: `Ok` when the controller answers `/healthz`.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.get::<Value>(paths::HEALTHZ).await.map(|_| ())
    }

    /// Readiness: `Ok` when the controller answers `/readyz` with 200 (every
    /// change stored, evaluations running), else why not.
    pub async fn readyz(&self) -> Result<(), ClientError> {
        self.get::<Value>(paths::READYZ).await.map(|_| ())
    }

    /// The OpenAPI document.
    pub async fn openapi(&self) -> Result<Value, ClientError> {
        self.get(paths::OPENAPI).await
    }
}

/// Builds a [`Client`]: `https://` URLs are checked against the system's
/// roots and the roots added here.
#[derive(Debug)]
pub struct ClientBuilder {
    url: String,
    timeout: Duration,
    roots: Vec<reqwest::Certificate>,
}

impl ClientBuilder {
    /// How long a call may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// Trusts `cert` besides the system's roots (a controller behind a
    /// private CA).
    pub fn add_root_certificate(mut self, cert: reqwest::Certificate) -> ClientBuilder {
        self.roots.push(cert);
        self
    }

    /// Trusts every certificate of the PEM file at `path` besides the
    /// system's roots.
    pub fn ca_file(mut self, path: &Path) -> Result<ClientBuilder, CaFileError> {
        self.roots.extend(read_ca_file(path)?);
        Ok(self)
    }

    pub fn build(self) -> Result<Client, ClientError> {
        let http = self
            .roots
            .into_iter()
            .fold(reqwest::Client::builder(), |b, cert| {
                b.add_root_certificate(cert)
            })
            .timeout(self.timeout)
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        Ok(Client::over(http, &self.url))
    }
}

/// The operator's calls that take only an optional reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Rollback,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
        }
    }
}

fn unreachable_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        // A refused connection, or a certificate not trusted: the
        // innermost cause says which.
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        cause.to_string()
    } else {
        e.to_string()
    }
}
