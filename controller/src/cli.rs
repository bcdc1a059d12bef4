//! The `coalmine` operator CLI: the REST API as commands, tables or JSON.
//!
//! Errors are one sentence on stderr and a distinct exit code: 2 invalid
//! request, 3 controller unreachable, 4 token refused, 5 not found,
//! 6 transition refused, 1 anything else.

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "coalmine",
    version,
    about = "Operate coalmine canaries: deployments, versions, traffic, health, events."
)]
pub struct Cli {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The controller.
    #[arg(
        long,
        global = true,
        env = "COALMINE_URL",
        default_value = "http://127.0.0.1:8700"
    )]
    pub url: String,
    /// Operator token (default: COALMINE_TOKEN, then .coalmine/operator-token).
    #[arg(long, global = true, env = "COALMINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List, create or show deployments.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// List or register model versions.
    #[command(subcommand)]
    Versions(VersionsCmd),
    /// Start a canary.
    #[command(subcommand)]
    Canary(CanaryCmd),
    /// Set the canary's share by hand.
    #[command(subcommand)]
    Traffic(TrafficCmd),
    /// Stop automatic steps (rollback stays armed).
    Pause(Reasoned),
    /// Restart automatic steps.
    Resume(Reasoned),
    /// Make the canary the baseline.
    Promote(Reasoned),
    /// Roll the canary back (or, after a promotion, return to the pinned version).
    Rollback(Reasoned),
    /// Per-role numbers, verdict, recommendation and reasons.
    Status { deployment: String },
    /// The timeline.
    Events {
        deployment: String,
        /// Only events after this id.
        #[arg(long)]
        since: Option<i64>,
    },
    /// A live status view, refreshed in place until interrupted.
    Watch {
        deployment: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// Shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum DeploymentsCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        baseline_version: String,
        #[arg(long)]
        baseline_cluster: String,
        /// Policy JSON, or @file.json.
        #[arg(long)]
        policy: Option<String>,
    },
    Show {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VersionsCmd {
    List {
        deployment: String,
    },
    Register {
        deployment: String,
        version: String,
        #[arg(long)]
        cluster: String,
        /// Metadata JSON object, or @file.json.
        #[arg(long)]
        metadata: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CanaryCmd {
    Start {
        deployment: String,
        version: String,
        /// Initial share (default: the first step).
        #[arg(long)]
        percent: Option<f64>,
        /// Schedule, e.g. 10,25,50,100.
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<f64>>,
        #[arg(long)]
        bake_seconds: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TrafficCmd {
    Set {
        deployment: String,
        canary_percent: f64,
    },
}

#[derive(clap::Args, Debug)]
pub struct Reasoned {
    pub deployment: String,
    #[arg(long)]
    pub reason: Option<String>,
}

/// A failure, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "cannot reach the controller at {url}: {cause}; is it running? (set --url or COALMINE_URL)"
    )]
    Unreachable { url: String, cause: String },
    #[error(
        "the controller refused the token: {0} (pass --token, set COALMINE_TOKEN, or put it in .coalmine/operator-token)"
    )]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("refused: {0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Unauthorized(_) => 4,
            CliError::NotFound(_) => 5,
            CliError::Conflict(_) => 6,
            CliError::Other(_) => 1,
        }
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

fn unreachable_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        e.to_string()
    }
}

impl Client {
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            url: self.url.clone(),
            cause: unreachable_cause(&e),
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::Other(format!("reading the answer: {e}")))?;
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"message": text}));
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        Err(match status.as_u16() {
            400 | 413 => CliError::Invalid(message),
            401 => CliError::Unauthorized(message),
            404 => CliError::NotFound(message),
            409 => CliError::Conflict(message),
            _ => CliError::Other(format!("the controller answered {status}: {message}")),
        })
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.request(reqwest::Method::GET, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, CliError> {
        if self.token.is_none() {
            return Err(CliError::Unauthorized(
                "no operator token given, and changes need one".into(),
            ));
        }
        self.request(method, path, Some(body)).await
    }
}

fn json_arg(what: &str, arg: &str) -> Result<Value, CliError> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("--{what}: cannot read {path}: {e}")))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::Invalid(format!("--{what} is not valid JSON: {e}")))
}

fn path(deployment: &str, rest: &str) -> String {
    format!("/v1/deployments/{deployment}{rest}")
}

// ---- rendering ---------------------------------------------------------------

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.2} %", x * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1} ms"))
}

fn canary_cell(d: &Value) -> String {
    if d["canary"].is_null() {
        "-".into()
    } else {
        let share = d["canary_percent"]
            .as_f64()
            .map_or("-".into(), |p| p.to_string());
        format!(
            "{} @ {share} %{}",
            s(&d["canary"]["version"]),
            if d["canary"]["paused"] == true {
                " (paused)"
            } else {
                ""
            }
        )
    }
}

/// `deployments list`.
pub fn render_deployments(list: &Value) -> String {
    let mut t = table(&[
        "deployment",
        "state",
        "baseline",
        "canary",
        "verdict",
        "epoch",
    ]);
    for d in list.as_array().into_iter().flatten() {
        t.add_row(vec![
            s(&d["name"]),
            s(&d["state"]),
            s(&d["baseline"]["version"]),
            canary_cell(d),
            s(&d["health"]["verdict"]),
            s(&d["epoch"]),
        ]);
    }
    t.to_string()
}

/// `status` (and `deployments show`, `watch`): split, per-role numbers, verdict.
pub fn render_status(d: &Value) -> String {
    let h = &d["health"];
    let mut out = format!(
        "deployment {}  ({})\nbaseline   {} ({})\ncanary     {}\npinned     {}\n\n",
        s(&d["name"]),
        s(&d["state"]),
        s(&d["baseline"]["version"]),
        s(&d["baseline"]["cluster"]),
        canary_cell(d),
        s(&d["pinned"]["version"]),
    );
    let mut t = table(&[
        "role",
        "requests",
        "errors",
        "error rate",
        "p50",
        "p95",
        "p99",
    ]);
    for role in ["baseline", "canary"] {
        let r = &h[role];
        t.add_row(vec![
            role.to_string(),
            s(&r["requests"]),
            s(&r["errors"]),
            pct(&r["error_rate"]),
            ms(&r["p50_ms"]),
            ms(&r["p95_ms"]),
            ms(&r["p99_ms"]),
        ]);
    }
    out.push_str(&t.to_string());
    out.push_str(&format!(
        "\n\nverdict {}   recommendation {}   (window {} s)\n",
        s(&h["verdict"]),
        s(&h["recommendation"]),
        s(&h["window_seconds"])
    ));
    for r in h["reasons"].as_array().into_iter().flatten() {
        out.push_str(&format!("  - {}\n", s(&r["message"])));
    }
    out
}

pub fn render_versions(list: &Value) -> String {
    let mut t = table(&[
        "version", "cluster", "state", "healthy", "pinned", "metadata",
    ]);
    for v in list.as_array().into_iter().flatten() {
        t.add_row(vec![
            s(&v["version"]),
            s(&v["cluster"]),
            s(&v["state"]),
            s(&v["healthy"]),
            if v["pinned"] == true {
                "★ last known good".into()
            } else {
                String::new()
            },
            v["metadata"].to_string(),
        ]);
    }
    t.to_string()
}

pub fn render_events(list: &Value) -> String {
    let mut t = table(&["id", "at", "event", "actor", "reason"]);
    for e in list.as_array().into_iter().flatten() {
        let at = e["at"].as_u64().map_or("-".into(), |ms| {
            let secs = ms / 1000;
            format!(
                "{:02}:{:02}:{:02}.{:03} UTC",
                secs / 3600 % 24,
                secs / 60 % 60,
                secs % 60,
                ms % 1000
            )
        });
        t.add_row(vec![
            s(&e["id"]),
            at,
            s(&e["kind"]),
            s(&e["actor"]),
            s(&e["reason"]),
        ]);
    }
    t.to_string()
}

// ---- running -----------------------------------------------------------------

fn token(cli: &Cli) -> Option<String> {
    cli.token
        .clone()
        .or_else(|| std::fs::read_to_string(Path::new(".coalmine/operator-token")).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Runs a parsed command; returns what to print.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    use reqwest::Method;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::Other(e.to_string()))?,
        url: cli.url.trim_end_matches('/').to_string(),
        token: token(&cli),
    };
    let json_out = cli.output == Output::Json;
    let (value, render): (Value, fn(&Value) -> String) = match cli.command {
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "coalmine", &mut buf);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        Cmd::Watch {
            deployment,
            interval,
        } => return watch(&client, &deployment, interval, json_out).await,
        Cmd::Deployments(DeploymentsCmd::List) => {
            (client.get("/v1/deployments").await?, render_deployments)
        }
        Cmd::Deployments(DeploymentsCmd::Show { name }) => {
            (client.get(&path(&name, "")).await?, render_status)
        }
        Cmd::Deployments(DeploymentsCmd::Create {
            name,
            baseline_version,
            baseline_cluster,
            policy,
        }) => {
            let mut body = json!({"name": name, "baseline": {"version": baseline_version, "cluster": baseline_cluster}});
            if let Some(p) = policy {
                body["policy"] = json_arg("policy", &p)?;
            }
            (
                client.send(Method::POST, "/v1/deployments", body).await?,
                render_status,
            )
        }
        Cmd::Versions(VersionsCmd::List { deployment }) => (
            client.get(&path(&deployment, "/versions")).await?,
            render_versions,
        ),
        Cmd::Versions(VersionsCmd::Register {
            deployment,
            version,
            cluster,
            metadata,
        }) => {
            let mut body = json!({"version": version, "cluster": cluster});
            if let Some(m) = metadata {
                body["metadata"] = json_arg("metadata", &m)?;
            }
            let v = client
                .send(Method::POST, &path(&deployment, "/versions"), body)
                .await?;
            (json!([v]), render_versions)
        }
        Cmd::Canary(CanaryCmd::Start {
            deployment,
            version,
            percent,
            steps,
            bake_seconds,
        }) => {
            let mut body = json!({"version": version});
            if let Some(p) = percent {
                body["percent"] = json!(p);
            }
            if let Some(st) = steps {
                body["steps"] = json!(st);
            }
            if let Some(b) = bake_seconds {
                body["bake_seconds"] = json!(b);
            }
            (
                client
                    .send(Method::POST, &path(&deployment, "/canary"), body)
                    .await?,
                render_status,
            )
        }
        Cmd::Traffic(TrafficCmd::Set {
            deployment,
            canary_percent,
        }) => (
            client
                .send(
                    Method::PUT,
                    &path(&deployment, "/traffic"),
                    json!({"canary_percent": canary_percent}),
                )
                .await?,
            render_status,
        ),
        Cmd::Pause(r) => (
            client
                .send(
                    Method::POST,
                    &path(&r.deployment, "/pause"),
                    json!({"reason": r.reason}),
                )
                .await?,
            render_status,
        ),
        Cmd::Resume(r) => (
            client
                .send(
                    Method::POST,
                    &path(&r.deployment, "/resume"),
                    json!({"reason": r.reason}),
                )
                .await?,
            render_status,
        ),
        Cmd::Promote(r) => (
            client
                .send(
                    Method::POST,
                    &path(&r.deployment, "/promote"),
                    json!({"reason": r.reason}),
                )
                .await?,
            render_status,
        ),
        Cmd::Rollback(r) => (
            client
                .send(
                    Method::POST,
                    &path(&r.deployment, "/rollback"),
                    json!({"reason": r.reason}),
                )
                .await?,
            render_status,
        ),
        Cmd::Status { deployment } => (client.get(&path(&deployment, "")).await?, render_status),
        Cmd::Events { deployment, since } => {
            let q = since.map(|s| format!("?since={s}")).unwrap_or_default();
            (
                client
                    .get(&path(&deployment, &format!("/events{q}")))
                    .await?,
                render_events,
            )
        }
    };
    Ok(if json_out {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        render(&value)
    })
}

async fn watch(
    client: &Client,
    deployment: &str,
    interval: f64,
    json_out: bool,
) -> Result<String, CliError> {
    let every = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    loop {
        let d = client.get(&path(deployment, "")).await?;
        let body = if json_out {
            serde_json::to_string(&d).unwrap_or_default()
        } else {
            render_status(&d)
        };
        let mut out = std::io::stdout().lock();
        if json_out {
            let _ = writeln!(out, "{body}");
        } else {
            // Clear the screen and redraw in place.
            let _ = write!(
                out,
                "\x1b[2J\x1b[H{body}\n(refreshing every {interval} s; Ctrl-C to stop)\n"
            );
        }
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(String::new()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_renders_both_roles_and_the_reasons() {
        let d = json!({
            "name": "heart-prod", "state": "canary", "baseline": {"version": "v1", "cluster": "heart-v1"},
            "canary": {"version": "v2", "paused": false}, "canary_percent": 20.0, "pinned": {"version": "v1"},
            "health": {"verdict": "CRITICAL", "recommendation": "ROLLBACK", "window_seconds": 60,
                "reasons": [{"message": "canary error rate 25.0 % exceeds baseline 0.0 % by 25.0 pp (limit 5.0 pp)"}],
                "baseline": {"requests": 400, "errors": 0, "error_rate": 0.0, "p50_ms": 3.1, "p95_ms": 9.9, "p99_ms": 12.0},
                "canary": {"requests": 100, "errors": 25, "error_rate": 0.25, "p50_ms": null, "p95_ms": null, "p99_ms": null}}
        });
        let out = render_status(&d);
        for want in [
            "v2 @ 20 %",
            "25.00 %",
            "9.9 ms",
            "CRITICAL",
            "ROLLBACK",
            "- canary error rate 25.0 %",
        ] {
            assert!(out.contains(want), "{want:?} missing in\n{out}");
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            CliError::Invalid(String::new()).exit_code(),
            CliError::Unreachable {
                url: String::new(),
                cause: String::new(),
            }
            .exit_code(),
            CliError::Unauthorized(String::new()).exit_code(),
            CliError::NotFound(String::new()).exit_code(),
            CliError::Conflict(String::new()).exit_code(),
            CliError::Other(String::new()).exit_code(),
        ];
        let mut unique = codes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
    }
}
