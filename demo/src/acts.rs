//! The four acts, each on the real stack, each ending with its timeline
//! and failing unless that timeline is the one the story promises.

use crate::show::{self, heading, step};
use anyhow::{Context, Result, bail, ensure};
use coalmine_client::types::{DeploymentView, RegisterVersion, StartCanary, StoredEvent};
use coalmine_client::{Action, Client};
use coalmine_demo::{Labels, Plan, Traffic};
use coalmine_models_server::patients::Patient;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const DEPLOYMENT: &str = "heart-prod";
const ENVOY_PREDICT: &str = "http://127.0.0.1:10000/predict/heart";
const RPS: u32 = 200;
/// Act 1: one request in this many is malformed.
const MALFORMED_EVERY: usize = 5;
/// From act 2: one answer in this many is confirmed by the patient's
/// record, this long after it was given.
const LABEL_EVERY: usize = 5;
const LABEL_DELAY: Duration = Duration::from_secs(2);

/// What every act works with.
pub(crate) struct Stage {
    /// The controller, with the operator token.
    pub(crate) api: Client,
    /// The controller, with the feedback-only token (the label pipeline).
    pub(crate) pipeline: Client,
    pub(crate) http: reqwest::Client,
    pub(crate) patients: Arc<Vec<Patient>>,
    /// Each model server's `/model`, by version.
    pub(crate) models: HashMap<&'static str, Value>,
    /// The model servers' fault switch token.
    pub(crate) models_admin_token: String,
}

impl Stage {
    fn traffic(&self, malformed_every: Option<usize>, labelled: bool) -> Traffic {
        let plan = Plan {
            url: ENVOY_PREDICT.into(),
            rps: RPS,
            malformed_every,
        };
        let labels = labelled.then(|| Labels {
            api: self.pipeline.clone(),
            deployment: DEPLOYMENT.into(),
            metric: "accuracy".into(),
            every: LABEL_EVERY,
            delay: LABEL_DELAY,
        });
        Traffic::start(plan, self.patients.clone(), labels)
    }

    async fn register(&self, version: &str, cluster: &str, metadata: Value) -> Result<()> {
        let body = RegisterVersion {
            version: version.into(),
            cluster: cluster.into(),
            metadata: Some(metadata),
        };
        self.api.register_version(DEPLOYMENT, &body).await?;
        Ok(())
    }

    /// Starts a canary of `version` at its first step, as soon as the
    /// cooldown after the last rollback allows.
    async fn start_canary(&self, version: &str) -> Result<Instant> {
        let body = StartCanary {
            version: version.into(),
            ..StartCanary::default()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.api.start_canary(DEPLOYMENT, &body).await {
                Ok(_) => return Ok(Instant::now()),
                Err(e) if e.status() == Some(409) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context(format!("starting the canary of {version}")),
            }
        }
    }

    /// Prints a progress line a second until `done` holds (then `linger`
    /// more seconds), at most `limit`; returns when `done` first held.
    async fn watch(
        &self,
        traffic: &Traffic,
        answers: bool,
        limit: Duration,
        linger: Duration,
        done: impl Fn(&DeploymentView) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut done_at = None;
        while started.elapsed() < limit {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let d = self.api.deployment(DEPLOYMENT).await?;
            show::progress(started.elapsed(), &traffic.tally(), &d, answers);
            if done_at.is_none() && done(&d) {
                done_at = Some(started.elapsed());
            }
            if done_at.is_some_and(|at| started.elapsed() >= at + linger) {
                break;
            }
        }
        done_at.with_context(|| format!("the act did not end within {} s", limit.as_secs()))
    }

    async fn last_event_id(&self) -> Result<i64> {
        let events = self.api.events(DEPLOYMENT, None, None).await?;
        Ok(events.last().map_or(0, |e| e.id))
    }

    async fn events_after(&self, id: i64) -> Result<Vec<StoredEvent>> {
        Ok(self.api.events(DEPLOYMENT, Some(id), None).await?)
    }
}

/// The events of `kinds` in order (each repeat of the one before dropped),
/// which must be `expected`.
fn check(events: &[StoredEvent], expected: &[&str]) -> Result<()> {
    let mut story: Vec<&str> = Vec::new();
    for kind in events.iter().map(|e| e.event.kind.as_str()) {
        if expected.contains(&kind) && story.last() != Some(&kind) {
            story.push(kind);
        }
    }
    ensure!(
        story == expected,
        "unexpected timeline: {story:?}, expected {expected:?}"
    );
    Ok(())
}

fn find<'a>(events: &'a [StoredEvent], kind: &str) -> Result<&'a StoredEvent> {
    events
        .iter()
        .find(|e| e.event.kind.as_str() == kind)
        .with_context(|| format!("no {kind} event"))
}

/// Act 1: the fragile v2 answers malformed input with 500s.
pub(crate) async fn crash(s: &Stage) -> Result<String> {
    heading("Act 1: v2 crashes on malformed input, and is rolled back on its errors");
    let after = s.last_event_id().await?;
    step(&format!(
        "v2 gets 20 % of live traffic ({RPS} predictions/s from real patients, 1 in {MALFORMED_EVERY} malformed)"
    ));
    let traffic = s.traffic(Some(MALFORMED_EVERY), false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.start_canary("v2").await?;
    let gone = |d: &DeploymentView| d.canary.is_none();
    let at = s
        .watch(
            &traffic,
            false,
            Duration::from_secs(40),
            Duration::from_secs(2),
            gone,
        )
        .await?;
    drop(traffic);
    let events = s.events_after(after).await?;
    step("health check: CRITICAL");
    show::decided(find(&events, "health_check_failed")?);
    step(&format!(
        "rolled back automatically {:.1} s after the canary started; v2 is marked unhealthy",
        at.as_secs_f64()
    ));
    show::timeline(&events);
    check(
        &events,
        &[
            "canary_started",
            "health_check_failed",
            "auto_rollback_triggered",
            "rolled_back",
        ],
    )?;
    Ok(format!(
        "act 1: v2 rolled back on errors in {:.1} s",
        at.as_secs_f64()
    ))
}

/// Act 2: the same weights without the crash: fast, no errors, wrong.
pub(crate) async fn wrong(s: &Stage) -> Result<String> {
    heading("Act 2: v2.1 is fast, error-free and wrong: caught by its answers and by the labels");
    let admin = s
        .http
        .post("http://127.0.0.1:8502/admin/faults")
        .bearer_auth(&s.models_admin_token)
        .json(&json!({"crash_on_malformed": false}))
        .send()
        .await?;
    ensure!(
        admin.status().is_success(),
        "the fault switch refused: {}",
        admin.status()
    );
    let v2 = &s.models["v2"];
    s.register(
        "v2.1",
        "heart-v2",
        json!({"sha256": v2["sha256"], "test_accuracy": v2["test_accuracy"],
               "change": "input validation: malformed requests get a 400 instead of a crash"}),
    )
    .await?;
    step("v2.1 registered: v2's weights (same sha256) behind input validation; no more 500s");
    step(&format!(
        "from now on only clean patients; 1 answer in {LABEL_EVERY} is confirmed by the patient's record {} s later (POST /feedback, feedback token)",
        LABEL_DELAY.as_secs()
    ));
    let traffic = s.traffic(None, true);
    let after = s.last_event_id().await?;
    s.start_canary("v2.1").await?;
    let gone = |d: &DeploymentView| d.canary.is_none();
    let at = s
        .watch(
            &traffic,
            true,
            Duration::from_secs(60),
            Duration::from_secs(1),
            gone,
        )
        .await?;
    let events = s.events_after(after).await?;
    let held = find(&events, "health_degraded")?;
    step("what it answers: DEGRADED, held at 20 % (it never advances)");
    show::decided(held);
    let failed = find(&events, "health_check_failed")?;
    step("what the labels say: CRITICAL");
    show::decided(failed);
    step(&format!(
        "rolled back automatically {:.1} s after the canary started",
        at.as_secs_f64()
    ));
    show::timeline(&events);
    check(
        &events,
        &[
            "canary_started",
            "health_degraded",
            "health_check_failed",
            "auto_rollback_triggered",
            "rolled_back",
        ],
    )?;
    ensure!(
        held.event.reason.contains(": share of"),
        "the hold was not on the outputs: {}",
        held.event.reason
    );
    ensure!(
        failed.event.reason.contains("accuracy:"),
        "the rollback was not on accuracy: {}",
        failed.event.reason
    );
    let n = &failed.event.numbers;
    ensure!(
        n["canary"]["errors"] == 0,
        "v2.1 erred, so this proves nothing about wrong answers: {}",
        n["canary"]
    );
    let t = traffic.tally();
    ensure!(
        t.labels_refused == 0,
        "labels refused: {:?}",
        t.last_refusal
    );
    Ok(format!(
        "act 2: v2.1 held on its outputs, rolled back on accuracy in {:.1} s",
        at.as_secs_f64()
    ))
}

/// Act 3: a good retrained model, shadowed first, goes all the way.
pub(crate) async fn good(s: &Stage) -> Result<String> {
    heading(
        "Act 3: a good retrained v3, shadowed first, goes 20 → 50 → 100 % and is promoted; v1 pinned",
    );
    let v3 = &s.models["v3"];
    s.register(
        "v3",
        "heart-v3",
        json!({"sha256": v3["sha256"], "test_accuracy": v3["test_accuracy"], "split_seed": 7}),
    )
    .await?;
    let traffic = s.traffic(None, true);
    let after = s.last_event_id().await?;
    let agreement = shadowed(s, "v3").await?;
    step("v3 agrees: its canary starts (which ends the shadow)");
    s.start_canary("v3").await?;
    let promoted = |d: &DeploymentView| d.baseline.version == "v3";
    let at = s
        .watch(
            &traffic,
            true,
            Duration::from_secs(75),
            Duration::ZERO,
            promoted,
        )
        .await?;
    let events = s.events_after(after).await?;
    step(&format!(
        "promoted {:.1} s after the canary started",
        at.as_secs_f64()
    ));
    show::decided(find(&events, "promoted")?);
    show::timeline(&events);
    check(
        &events,
        &[
            "shadow_started",
            "canary_started",
            "shadow_stopped",
            "step_advanced",
            "promoted",
        ],
    )?;
    ensure!(
        events
            .iter()
            .all(|e| e.event.kind.as_str() != "shadow_disagrees"),
        "the shadow v3 was reported disagreeing"
    );
    let steps = events
        .iter()
        .filter(|e| e.event.kind.as_str() == "step_advanced")
        .count();
    ensure!(steps == 2, "{steps} steps, not 20 → 50 → 100");
    let d = s.api.deployment(DEPLOYMENT).await?;
    let pinned = d.pinned.as_ref().map(|p| p.version.as_str());
    ensure!(pinned == Some("v1"), "pinned {pinned:?}, not v1");
    step("versions: v3 serves, v1 is the last known good");
    for v in s.api.versions(DEPLOYMENT).await? {
        println!(
            "    {:<5} state {:<11} healthy {:<5} {}",
            v.version,
            v.state.as_str(),
            v.healthy,
            if v.pinned { "★ pinned" } else { "" }
        );
    }
    Ok(format!(
        "act 3: v3 agreed with v1 on {:.1} % of predictions as a shadow, promoted in {:.1} s, v1 pinned",
        agreement * 100.0,
        at.as_secs_f64()
    ))
}

/// Runs `version` as a shadow of every baseline request until the
/// controller judges its agreement (traffic must be flowing); its
/// prediction agreement. Fails if it disagrees.
async fn shadowed(s: &Stage, version: &str) -> Result<f64> {
    step(&format!(
        "first as a shadow: {version} gets a copy of every v1 request; its answers are compared with v1's and never reach a patient"
    ));
    s.api.start_shadow(DEPLOYMENT, version, Some(100.0)).await?;
    let started = Instant::now();
    let shadow = loop {
        let h = s.api.health(DEPLOYMENT).await?;
        let shadow = h.shadow.filter(|sh| sh.version == version);
        let judged = shadow.as_ref().is_some_and(|sh| {
            sh.verdict.as_str() != "INSUFFICIENT_DATA"
                && sh.fields.iter().all(|f| f.compared >= 200)
        });
        if let (true, Some(shadow)) = (judged, shadow) {
            break shadow;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the shadow {version} was not judged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let rate = |name: &str| {
        shadow
            .fields
            .iter()
            .find(|f| f.field == name)
            .and_then(|f| f.agreement)
            .unwrap_or(0.0)
    };
    let compared = shadow.fields.first().map_or(0, |f| f.compared);
    step(&format!(
        "{version} as a shadow after {:.1} s: agrees with v1 on {:.1} % of {compared} predictions \
         (probabilities within 0.05: {:.1} %), {} errors, p50 {} — {}",
        started.elapsed().as_secs_f64(),
        rate("prediction") * 100.0,
        rate("probability") * 100.0,
        shadow.errors,
        shadow
            .p50_ms
            .map_or_else(|| "–".to_string(), |p| format!("{p:.1} ms")),
        shadow.verdict.as_str()
    ));
    ensure!(
        shadow.verdict.as_str() == "AGREES",
        "the shadow {version} does not agree: {}",
        shadow.verdict.as_str()
    );
    Ok(rate("prediction"))
}

/// Act 4: one call goes back to the pinned version.
pub(crate) async fn revert(s: &Stage) -> Result<String> {
    heading("Act 4: one call reverts to the pinned v1");
    let traffic = s.traffic(None, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = s.last_event_id().await?;
    step("POST /v1/deployments/heart-prod/rollback");
    let asked = Instant::now();
    let reason = Some("reverting to the last known good model".to_string());
    let d = s.api.act(DEPLOYMENT, Action::Rollback, reason).await?;
    ensure!(
        d.baseline.version == "v1",
        "baseline {} after the revert",
        d.baseline.version
    );
    // Settled when a quarter second brings many answers, none from v3.
    let mut seen = traffic.tally().by_version;
    let settled = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = traffic.tally().by_version;
        let new = |v: &str| now.get(v).copied().unwrap_or(0) - seen.get(v).copied().unwrap_or(0);
        if new("v1") >= 20 && new("v3") == 0 {
            break asked.elapsed();
        }
        if asked.elapsed() > Duration::from_secs(10) {
            bail!("v3 still answers 10 s after the revert: {now:?}");
        }
        seen = now;
    };
    let last = traffic.tally();
    println!(
        "    answers by version in this act: {}",
        last.by_version
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    step(&format!(
        "v1 serves everything again (every answer within {:.2} s of the call); v3 marked unhealthy",
        settled.as_secs_f64()
    ));
    let events = s.events_after(after).await?;
    show::timeline(&events);
    check(&events, &["reverted_to_pinned"])?;
    Ok(format!(
        "act 4: reverted to v1 with one call ({:.1} s)",
        settled.as_secs_f64()
    ))
}
