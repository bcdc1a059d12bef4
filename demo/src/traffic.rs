//! Live predictions from real patients, and the clinic that later confirms
//! some of the diagnoses.
//!
//! [`Traffic`] posts the data set's patients to a prediction URL at a fixed
//! rate (optionally one in so many malformed), counting answers by the role
//! and version that served them. With [`Labels`], one answered request in
//! `every` is checked against the patient's recorded diagnosis and the
//! outcome (1: the prediction was right) posted to the controller as
//! feedback `delay` later, with the version from the `x-coalmine-version`
//! header — what a real labelling pipeline does, minutes or days later.

use coalmine_client::Client;
use coalmine_client::types::{
    FeedbackBatch, FeedbackObservation, FeedbackValue, MAX_FEEDBACK_OBSERVATIONS,
};
use coalmine_models_server::patients::Patient;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How often due labels are posted (in one call).
const POST_EVERY: Duration = Duration::from_millis(250);

/// Feedback from the patients' records.
#[derive(Clone, Debug)]
pub struct Labels {
    /// The controller, with a feedback (or operator) token.
    pub api: Client,
    pub deployment: String,
    pub metric: String,
    /// One answered request in this many is labelled.
    pub every: usize,
    /// How long after the answer its label arrives.
    pub delay: Duration,
}

/// What the traffic saw so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    /// Answers by `x-coalmine-role` ("none" without the header).
    pub by_role: BTreeMap<String, u64>,
    /// Answers by `x-coalmine-version` ("none" without the header).
    pub by_version: BTreeMap<String, u64>,
    /// 5xx answers by role.
    pub errors_by_role: BTreeMap<String, u64>,
    pub client_errors: u64,
    /// Requests that got no answer at all.
    pub failed: u64,
    /// Labels posted, by version: (labels, right).
    pub labels_by_version: BTreeMap<String, (u64, u64)>,
    /// Labels the controller refused, and its last message.
    pub labels_refused: u64,
    pub last_refusal: Option<String>,
}

impl Tally {
    pub fn role(&self, role: &str) -> u64 {
        self.by_role.get(role).copied().unwrap_or(0)
    }

    pub fn errors(&self, role: &str) -> u64 {
        self.errors_by_role.get(role).copied().unwrap_or(0)
    }
}

/// How the traffic is made.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where predictions are posted (e.g. Envoy's `/predict/heart`).
    pub url: String,
    pub rps: u32,
    /// One request in this many is malformed (none: all clean).
    pub malformed_every: Option<usize>,
}

/// Traffic running in the background until dropped.
#[derive(Debug)]
pub struct Traffic {
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A labelled answer, due at `at`.
type Due = (Instant, FeedbackObservation);

impl Traffic {
    /// Starts posting `patients` in turn as `plan` says, labelling answers
    /// as `labels` says.
    pub fn start(plan: Plan, patients: Arc<Vec<Patient>>, labels: Option<Labels>) -> Traffic {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let queue: Arc<Mutex<VecDeque<Due>>> = Arc::default();
        let mut tasks = vec![tokio::spawn(send(
            plan,
            patients,
            labels.clone(),
            tally.clone(),
            queue.clone(),
        ))];
        if let Some(l) = labels {
            tasks.push(tokio::spawn(post_labels(l, tally.clone(), queue)));
        }
        Traffic { tally, tasks }
    }

    /// What was seen so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A malformed variant of a request: a field missing or of the wrong type.
pub fn malform(mut row: Value, i: usize) -> Value {
    if let Some(o) = row.as_object_mut() {
        if i.is_multiple_of(2) {
            o.remove("max_HR");
        } else {
            o.insert("age".into(), json!("sixty-three"));
        }
    }
    row
}

async fn send(
    plan: Plan,
    patients: Arc<Vec<Patient>>,
    labels: Option<Labels>,
    tally: Arc<Mutex<Tally>>,
    queue: Arc<Mutex<VecDeque<Due>>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.rps.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for i in 0usize.. {
        tick.tick().await;
        let Some(patient) = patients.get(i % patients.len().max(1)).cloned() else {
            return;
        };
        let malformed = plan
            .malformed_every
            .is_some_and(|n| i % n.max(1) == n.max(1) - 1);
        let body = if malformed {
            malform(patient.request.clone(), i)
        } else {
            patient.request.clone()
        };
        let labelled = labels
            .as_ref()
            .filter(|l| !malformed && i % l.every.max(1) == 0)
            .map(|l| l.delay);
        let request = client.post(&plan.url).json(&body);
        let (tally, queue) = (tally.clone(), queue.clone());
        tokio::spawn(async move {
            let answer = answer(request).await;
            if let (Some(delay), Some(a)) = (labelled, &answer)
                && let (Some(version), Some(prediction)) = (&a.version, a.prediction)
                && (200..300).contains(&a.status)
            {
                let right = prediction == u8::from(patient.disease);
                let observation = FeedbackObservation {
                    version: version.clone(),
                    value: FeedbackValue(right),
                };
                if let Ok(mut q) = queue.lock() {
                    q.push_back((Instant::now() + delay, observation));
                }
            }
            if let Ok(mut t) = tally.lock() {
                count(&mut t, answer.as_ref());
            }
        });
    }
}

/// What one answer said.
struct Answer {
    status: u16,
    role: String,
    version: Option<String>,
    prediction: Option<u8>,
}

async fn answer(request: reqwest::RequestBuilder) -> Option<Answer> {
    let resp = request.send().await.ok()?;
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, role, version) = (
        resp.status().as_u16(),
        header("x-coalmine-role").unwrap_or_else(|| "none".into()),
        header("x-coalmine-version"),
    );
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let prediction = body["prediction"]
        .as_u64()
        .and_then(|p| u8::try_from(p).ok());
    Some(Answer {
        status,
        role,
        version,
        prediction,
    })
}

fn count(t: &mut Tally, answer: Option<&Answer>) {
    t.sent += 1;
    let Some(a) = answer else {
        t.failed += 1;
        return;
    };
    *t.by_role.entry(a.role.clone()).or_default() += 1;
    let version = a.version.clone().unwrap_or_else(|| "none".into());
    *t.by_version.entry(version).or_default() += 1;
    if a.status >= 500 {
        *t.errors_by_role.entry(a.role.clone()).or_default() += 1;
    } else if a.status >= 400 {
        t.client_errors += 1;
    }
}

/// Every [`POST_EVERY`], posts the labels that are due in one call.
async fn post_labels(labels: Labels, tally: Arc<Mutex<Tally>>, queue: Arc<Mutex<VecDeque<Due>>>) {
    let mut tick = tokio::time::interval(POST_EVERY);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due: Vec<FeedbackObservation> = match queue.lock() {
            Ok(mut q) => {
                let mut due = Vec::new();
                while due.len() < MAX_FEEDBACK_OBSERVATIONS
                    && q.front().is_some_and(|(at, _)| *at <= now)
                {
                    due.extend(q.pop_front().map(|(_, o)| o));
                }
                due
            }
            Err(_) => return,
        };
        if due.is_empty() {
            continue;
        }
        let batch = FeedbackBatch {
            metric: labels.metric.clone(),
            observations: due,
        };
        let result = labels.api.feedback(&labels.deployment, &batch).await;
        let Ok(mut t) = tally.lock() else { return };
        match result {
            Ok(_) => {
                for o in &batch.observations {
                    let entry = t.labels_by_version.entry(o.version.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += u64::from(o.value.0);
                }
            }
            Err(e) => {
                t.labels_refused += batch.observations.len() as u64;
                t.last_refusal = Some(e.to_string());
            }
        }
    }
}
