//! `coalmine feedback`: JSON lines in, feedback calls out. Lines are sent
//! as they come, in calls of at most 10 000 observations, and at least
//! every second while more trickle in, so a pipeline can pipe its labels
//! straight through. A bad line stops the run: what was read before it is
//! still posted, and the message says up to which line everything was
//! counted, so the run can resume after it.

use crate::error::CliError;
use coalmine_client::types::{FeedbackBatch, FeedbackObservation, MAX_FEEDBACK_OBSERVATIONS};
use coalmine_client::{Client, ClientError};
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
    /// The last input line whose observation (and every one before it) was
    /// counted.
    pub through_line: u64,
}

/// The observations read but not sent yet, with their input lines.
struct Pending {
    batch: FeedbackBatch,
    lines: Vec<u64>,
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
    let mut pending = Pending {
        batch: FeedbackBatch {
            metric: metric.to_string(),
            observations: Vec::new(),
        },
        lines: Vec::new(),
    };
    let mut number = 0u64;
    loop {
        let next = if pending.lines.is_empty() {
            lines.next_line().await
        } else {
            match tokio::time::timeout(LINGER, lines.next_line()).await {
                Ok(line) => line,
                Err(_) => {
                    send(client, deployment, &mut pending, &mut posted).await?;
                    continue;
                }
            }
        };
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                send(client, deployment, &mut pending, &mut posted).await?;
                return Err(stopped(
                    &posted,
                    format!("cannot read input after line {number}: {e}"),
                ));
            }
        };
        number += 1;
        if line.trim().is_empty() {
            // Nothing to count: done with once everything before it is.
            if pending.lines.is_empty() {
                posted.through_line = number;
            }
            continue;
        }
        match serde_json::from_str::<FeedbackObservation>(&line) {
            Ok(observation) => {
                pending.batch.observations.push(observation);
                pending.lines.push(number);
            }
            Err(e) => {
                send(client, deployment, &mut pending, &mut posted).await?;
                let why =
                    format!("line {number}: {e} (expected {{\"version\": \"v2\", \"value\": 1}})");
                return Err(stopped(&posted, why));
            }
        }
        if pending.lines.len() == MAX_FEEDBACK_OBSERVATIONS {
            send(client, deployment, &mut pending, &mut posted).await?;
        }
    }
    send(client, deployment, &mut pending, &mut posted).await?;
    posted.through_line = number;
    Ok(posted)
}

/// Posts what is pending (if anything) as one call.
async fn send(
    client: &Client,
    deployment: &str,
    pending: &mut Pending,
    posted: &mut Posted,
) -> Result<(), CliError> {
    let (Some(&first), Some(&last)) = (pending.lines.first(), pending.lines.last()) else {
        return Ok(());
    };
    match client.feedback(deployment, &pending.batch).await {
        Ok(answer) => {
            posted.accepted += answer.accepted;
            posted.calls += 1;
            posted.through_line = last;
            pending.batch.observations.clear();
            pending.lines.clear();
            Ok(())
        }
        Err(e) => {
            let outcome = match &e {
                // Sent, perhaps counted: only the controller knows.
                ClientError::Unreachable { .. } | ClientError::Decode(_) => {
                    "this call's outcome is unknown"
                }
                _ => "nothing of this call was counted",
            };
            let at = refused_line(&e, &pending.lines)
                .map(|l| format!(" (input line {l})"))
                .unwrap_or_default();
            let done = (posted.accepted, posted.through_line);
            Err(CliError::from(e).map_message(|m| {
                format!(
                    "{m}{at}; lines {first}-{last} were one call and {outcome}; {} observations accepted before it, every line through {} counted",
                    done.0, done.1
                )
            }))
        }
    }
}

/// The input line of the observation a refusal names (`observations[i]`
/// or `/observations/i`).
fn refused_line(e: &ClientError, lines: &[u64]) -> Option<u64> {
    let ClientError::Api { message, .. } = e else {
        return None;
    };
    let rest = ["observations[", "/observations/"]
        .iter()
        .find_map(|p| message.split_once(p).map(|(_, r)| r))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    lines.get(digits.parse::<usize>().ok()?).copied()
}

fn stopped(posted: &Posted, why: String) -> CliError {
    CliError::Invalid(format!(
        "{why}; stopped: {} observations accepted, every line through {} counted, nothing after",
        posted.accepted, posted.through_line
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_traced_to_its_input_line() {
        let lines = [3, 4, 7];
        let api = |m: &str| ClientError::Api {
            status: 400,
            message: m.into(),
        };
        let e = api("observations[2]: version \"v9\" is not registered for heart-prod");
        assert_eq!(refused_line(&e, &lines), Some(7));
        let e = api("invalid JSON body: /observations/1/value: 2 is not one of [0,1,true,false]");
        assert_eq!(refused_line(&e, &lines), Some(4));
        assert_eq!(
            refused_line(&api("metric \"x\" is not declared"), &lines),
            None
        );
        assert_eq!(refused_line(&api("observations[9]: …"), &lines), None);
    }
}
