//! `coalmine feedback`: JSON lines in, feedback calls out. Lines are sent
//! as they come, in calls of at most 10 000 observations, and at least
//! every second while more trickle in, so a pipeline can pipe its labels
//! straight through. A bad line stops the run; what was sent before it
//! stays counted, and the message says how much that was.

use crate::error::CliError;
use coalmine_client::Client;
use coalmine_client::types::{FeedbackBatch, FeedbackObservation, MAX_FEEDBACK_OBSERVATIONS};
use serde::Serialize;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// How long a partial call waits for more lines.
const LINGER: Duration = Duration::from_secs(1);

/// What was posted.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Posted {
    pub accepted: u64,
    pub calls: u64,
}

/// Reads observations line by line from `input` and posts them.
pub async fn post(
    client: &Client,
    deployment: &str,
    metric: &str,
    input: impl AsyncBufRead + Unpin,
) -> Result<Posted, CliError> {
    let mut lines = input.lines();
    let mut posted = Posted::default();
    let mut batch = FeedbackBatch {
        metric: metric.to_string(),
        observations: Vec::new(),
    };
    let mut number = 0u64;
    loop {
        let next = if batch.observations.is_empty() {
            lines.next_line().await
        } else {
            match tokio::time::timeout(LINGER, lines.next_line()).await {
                Ok(line) => line,
                Err(_) => {
                    send(client, deployment, &mut batch, &mut posted).await?;
                    continue;
                }
            }
        };
        let line = next.map_err(|e| stopped(&posted, format!("cannot read input: {e}")))?;
        let Some(line) = line else { break };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let observation: FeedbackObservation = serde_json::from_str(&line).map_err(|e| {
            stopped(
                &posted,
                format!("line {number}: {e} (expected {{\"version\": \"v2\", \"value\": 1}})"),
            )
        })?;
        batch.observations.push(observation);
        if batch.observations.len() == MAX_FEEDBACK_OBSERVATIONS {
            send(client, deployment, &mut batch, &mut posted).await?;
        }
    }
    if !batch.observations.is_empty() {
        send(client, deployment, &mut batch, &mut posted).await?;
    }
    Ok(posted)
}

async fn send(
    client: &Client,
    deployment: &str,
    batch: &mut FeedbackBatch,
    posted: &mut Posted,
) -> Result<(), CliError> {
    let answer = client.feedback(deployment, batch).await.map_err(|e| {
        let e = CliError::from(e);
        let done = posted.accepted;
        e.map_message(|m| format!("{m} ({done} observations accepted before this call)"))
    })?;
    posted.accepted += answer.accepted;
    posted.calls += 1;
    batch.observations.clear();
    Ok(())
}

fn stopped(posted: &Posted, why: String) -> CliError {
    CliError::Invalid(format!(
        "{why}; stopped ({} observations accepted before it)",
        posted.accepted
    ))
}
