//! The API's own types: what operator calls send and what the controller
//! answers (DESIGN.md, "Controller REST API"). The controller serves these
//! exact types, so a client built on them cannot drift from the server.
//! Policies, verdicts, versions and events are the decision crate's types.

use coalmine_decide::engine::{Event, Millis};
use coalmine_decide::policy::{Policy, Schedule};
use coalmine_decide::verdict::{Health, VerdictKind};
use coalmine_decide::window::RoleWindowStats;
use coalmine_protocol::Target;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/deployments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    pub baseline: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

impl CreateDeployment {
    /// `name`, serving `version` from `cluster`, with `policy` (none: the
    /// seed rules).
    pub fn new(name: &str, version: &str, cluster: &str, policy: Option<Policy>) -> Self {
        CreateDeployment {
            name: name.into(),
            baseline: Target {
                version: version.into(),
                cluster: cluster.into(),
            },
            policy,
        }
    }
}

/// `POST /v1/deployments/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterVersion {
    pub version: String,
    pub cluster: String,
    /// Artifact digest, offline accuracy …: kept with the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Value>,
}

/// `POST /v1/deployments/{name}/unbar`: a rolled-back version may be a
/// canary or a shadow again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UnbarVersion {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[!-~]{1,256}$"))]
    pub version: String,
    /// Why it may be tried again (required; it goes into the timeline).
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub reason: String,
}

/// `POST /v1/deployments/{name}/canary`; what is left out comes from the
/// deployment's policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartCanary {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_seconds: Option<u64>,
    /// A computed ramp instead of `steps` and `bake_seconds` (refused
    /// together with either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// `POST /v1/deployments/{name}/shadow`: start a shadow, or change its
/// version or share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartShadow {
    pub version: String,
    /// The share of the baseline's requests copied to it (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 100))]
    pub percent: Option<f64>,
}

/// `PUT /v1/deployments/{name}/traffic`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetTraffic {
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub canary_percent: f64,
}

/// The optional body of pause, resume, promote and rollback.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A canary in progress, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CanaryView {
    pub version: String,
    pub cluster: String,
    pub percent: f64,
    /// The planned ramp: the shares the canary steps through, in order; a
    /// healthy bake at the last promotes it.
    pub steps: Vec<f64>,
    /// Where the current share is in `steps` (from 0); none when an
    /// operator set a share that is not on the plan.
    #[serde(default)]
    pub step_index: Option<u32>,
    pub next_step_percent: Option<f64>,
    /// The bake at each share.
    pub bake_seconds: u64,
    pub started_at: Millis,
    pub step_since: Millis,
    pub paused: bool,
}

/// A shadow, as the API shows it: a version that gets a copy of a share of
/// the baseline's requests and never answers a user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShadowView {
    pub version: String,
    pub cluster: String,
    /// The share of the baseline's requests copied to it.
    pub percent: f64,
    pub started_at: Millis,
}

/// Where a deployment is in its rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Stable,
    Canary,
    Paused,
    Cooldown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::Canary => "canary",
            Phase::Paused => "paused",
            Phase::Cooldown => "cooldown",
        }
    }
}

/// A deployment: its state, split, versions in play and current verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentView {
    pub name: String,
    pub state: Phase,
    pub baseline: Target,
    pub canary: Option<CanaryView>,
    pub canary_percent: f64,
    /// The shadow, if one runs (it coexists with a canary).
    #[serde(default)]
    pub shadow: Option<ShadowView>,
    pub pinned: Option<Target>,
    pub cooldown_until: Option<Millis>,
    pub versions_in_play: Vec<String>,
    pub epoch: u64,
    pub policy: Policy,
    pub health: Health,
}

/// One point of a deployment's history, for charts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sample {
    pub at: Millis,
    pub canary_percent: f64,
    pub canary_version: Option<String>,
    pub verdict: VerdictKind,
    pub baseline: RoleWindowStats,
    pub canary: RoleWindowStats,
}

/// An event as stored: with its id, deployment and time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredEvent {
    pub id: i64,
    pub deployment: String,
    pub at: Millis,
    #[serde(flatten)]
    pub event: Event,
}

/// What every error answer carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
}

/// The kind of error, for programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    Conflict,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
}

/// Most observations one feedback call may carry.
pub const MAX_FEEDBACK_OBSERVATIONS: usize = 10_000;

/// `POST /v1/deployments/{name}/feedback`: ground truth (or a business
/// outcome) for predictions already served, by the version that served
/// them (the `x-coalmine-version` response header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeedbackBatch {
    /// A metric the deployment's policy declares (e.g. `accuracy`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9_]{1,32}$"))]
    pub metric: String,
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 10_000))]
    pub observations: Vec<FeedbackObservation>,
}

/// One prediction's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeedbackObservation {
    /// The version that served the prediction.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub version: String,
    pub value: FeedbackValue,
}

/// An outcome: 1 (`true`: the diagnosis was right, the user converted) or
/// 0 (`false`). Written as 0 or 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedbackValue(pub bool);

impl Serialize for FeedbackValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(u8::from(self.0))
    }
}

impl<'de> Deserialize<'de> for FeedbackValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(FeedbackValue(b)),
            Value::Number(n) if n.as_f64() == Some(0.0) => Ok(FeedbackValue(false)),
            Value::Number(n) if n.as_f64() == Some(1.0) => Ok(FeedbackValue(true)),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not an outcome; use 0, 1, true or false"
            ))),
        }
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for FeedbackValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
        let values = [
            Value::from(0),
            Value::from(1),
            Value::from(true),
            Value::from(false),
        ];
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Integer, Type::Boolean]))
                .description(Some("0 or 1 (or false or true)"))
                .enum_values(Some(values))
                .build(),
        )
        .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for FeedbackValue {}

/// The answer to a feedback call: how many observations were counted (all
/// of them; a call is taken whole or not at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedbackAccepted {
    pub accepted: u64,
}
