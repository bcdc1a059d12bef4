//! Runs a parsed command through the typed client and returns what to
//! print: a table for people, or the API's JSON with `-o json`.

use crate::args::{
    CanaryCmd, Cli, Cmd, DeploymentsCmd, Output, Reasoned, ShadowCmd, TrafficCmd, VersionsCmd,
};
use crate::error::CliError;
use crate::{feedback, render};
use clap::CommandFactory;
use coalmine_client::types::{CreateDeployment, RegisterVersion, StartCanary, UnbarVersion};
use coalmine_client::{Action, Client};
use coalmine_protocol::Target;
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The operator token: `--token`, `COALMINE_TOKEN`, then the local stack's
/// `.coalmine/operator-token`.
fn token(cli: &Cli) -> Option<String> {
    cli.token
        .clone()
        .or_else(|| std::fs::read_to_string(Path::new(".coalmine/operator-token")).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The typed client of `--url`, trusting `--ca-file` too when given.
fn client(cli: &Cli) -> Result<Client, CliError> {
    let mut builder = Client::builder(&cli.url);
    if let Some(path) = &cli.ca_file {
        builder = builder
            .ca_file(path)
            .map_err(|e| CliError::Invalid(format!("--ca-file: {e}")))?;
    }
    Ok(builder.build()?.operator_token(token(cli)))
}

/// A JSON argument, given inline or as `@file.json`.
fn json_arg(what: &str, arg: &str) -> Result<Value, CliError> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("--{what}: cannot read {path}: {e}")))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::Invalid(format!("--{what} is not valid JSON: {e}")))
}

/// What a command prints: the answer as JSON, or its table.
fn shown<T: Serialize>(value: &T, json: bool, table: impl FnOnce(&T) -> String) -> String {
    if json {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        table(value)
    }
}

/// Runs a parsed command; returns what to print.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    let client = client(&cli)?;
    let json = cli.output == Output::Json;
    match cli.command {
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "coalmine", &mut buf);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Cmd::Watch {
            deployment,
            interval,
        } => watch(&client, &deployment, interval, json).await,
        Cmd::Deployments(cmd) => deployments(&client, cmd, json).await,
        Cmd::Versions(cmd) => versions(&client, cmd, json).await,
        Cmd::Canary(CanaryCmd::Start {
            deployment,
            version,
            percent,
            steps,
            bake_seconds,
            schedule,
        }) => {
            let schedule = match schedule {
                Some(s) => Some(
                    serde_json::from_value(json_arg("schedule", &s)?)
                        .map_err(|e| CliError::Invalid(format!("--schedule: {e}")))?,
                ),
                None => None,
            };
            let body = StartCanary {
                version,
                percent,
                steps,
                bake_seconds,
                schedule,
            };
            let d = client.start_canary(&deployment, &body).await?;
            Ok(shown(&d, json, render::status))
        }
        Cmd::Shadow(ShadowCmd::Start {
            deployment,
            version,
            percent,
        }) => {
            let d = client.start_shadow(&deployment, &version, percent).await?;
            Ok(shown(&d, json, render::status))
        }
        Cmd::Shadow(ShadowCmd::Stop { deployment }) => {
            let d = client.stop_shadow(&deployment).await?;
            Ok(shown(&d, json, render::status))
        }
        Cmd::Traffic(TrafficCmd::Set {
            deployment,
            canary_percent,
        }) => {
            let d = client.set_traffic(&deployment, canary_percent).await?;
            Ok(shown(&d, json, render::status))
        }
        Cmd::Pause(r) => act(&client, Action::Pause, r, json).await,
        Cmd::Resume(r) => act(&client, Action::Resume, r, json).await,
        Cmd::Promote(r) => act(&client, Action::Promote, r, json).await,
        Cmd::Rollback(r) => act(&client, Action::Rollback, r, json).await,
        Cmd::Status { deployment } => {
            let d = client.deployment(&deployment).await?;
            Ok(shown(&d, json, render::status))
        }
        Cmd::Feedback {
            deployment,
            metric,
            file,
            feedback_token,
        } => {
            let client = client.feedback_token(feedback_token);
            let posted = match file {
                Some(path) => {
                    let f = tokio::fs::File::open(&path).await.map_err(|e| {
                        CliError::Invalid(format!("--file: cannot read {}: {e}", path.display()))
                    })?;
                    feedback::post(&client, &deployment, &metric, tokio::io::BufReader::new(f))
                        .await?
                }
                None => {
                    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
                    feedback::post(&client, &deployment, &metric, stdin).await?
                }
            };
            Ok(shown(&posted, json, |p| {
                format!(
                    "{} observations of {metric} accepted for {deployment} ({} calls)",
                    p.accepted, p.calls
                )
            }))
        }
        Cmd::Events {
            deployment,
            since,
            limit,
        } => {
            let events = match since {
                Some(_) => client.events(&deployment, since, Some(limit)).await?,
                None => {
                    let mut newest = client.latest_events(&deployment, None, Some(limit)).await?;
                    newest.reverse();
                    newest
                }
            };
            Ok(shown(&events, json, |e| render::events(e)))
        }
    }
}

async fn act(client: &Client, action: Action, r: Reasoned, json: bool) -> Result<String, CliError> {
    let d = client.act(&r.deployment, action, r.reason).await?;
    Ok(shown(&d, json, render::status))
}

async fn deployments(client: &Client, cmd: DeploymentsCmd, json: bool) -> Result<String, CliError> {
    match cmd {
        DeploymentsCmd::List => {
            let list = client.deployments().await?;
            Ok(shown(&list, json, |l| render::deployments(l)))
        }
        DeploymentsCmd::Show { name } => {
            let d = client.deployment(&name).await?;
            Ok(shown(&d, json, render::status))
        }
        DeploymentsCmd::Create {
            name,
            baseline_version,
            baseline_cluster,
            policy,
        } => {
            let policy = match policy {
                Some(p) => Some(
                    serde_json::from_value(json_arg("policy", &p)?)
                        .map_err(|e| CliError::Invalid(format!("--policy: {e}")))?,
                ),
                None => None,
            };
            let body = CreateDeployment {
                name,
                baseline: Target {
                    version: baseline_version,
                    cluster: baseline_cluster,
                },
                policy,
            };
            let d = client.create_deployment(&body).await?;
            Ok(shown(&d, json, render::status))
        }
    }
}

async fn versions(client: &Client, cmd: VersionsCmd, json: bool) -> Result<String, CliError> {
    match cmd {
        VersionsCmd::List { deployment } => {
            let list = client.versions(&deployment).await?;
            Ok(shown(&list, json, |l| render::versions(l)))
        }
        VersionsCmd::Register {
            deployment,
            version,
            cluster,
            metadata,
        } => {
            let metadata = metadata.map(|m| json_arg("metadata", &m)).transpose()?;
            let body = RegisterVersion {
                version,
                cluster,
                metadata,
            };
            let v = client.register_version(&deployment, &body).await?;
            Ok(shown(&vec![v], json, |l| render::versions(l)))
        }
        VersionsCmd::Unbar {
            deployment,
            version,
            reason,
        } => {
            let v = client
                .unbar_version(&deployment, &UnbarVersion { version, reason })
                .await?;
            Ok(shown(&vec![v], json, |l| render::versions(l)))
        }
    }
}

/// A live status view, redrawn in place (or a JSON line per refresh)
/// until Ctrl-C.
async fn watch(
    client: &Client,
    deployment: &str,
    interval: f64,
    json: bool,
) -> Result<String, CliError> {
    let every = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    loop {
        let d = client.deployment(deployment).await?;
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(&d).unwrap_or_default());
        } else {
            // Clear the screen and redraw in place.
            let _ = write!(
                out,
                "\x1b[2J\x1b[H{}\n(refreshing every {interval} s; Ctrl-C to stop)\n",
                render::status(&d)
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
