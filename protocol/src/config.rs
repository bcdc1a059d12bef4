//! The filter's plugin configuration (DESIGN.md, "The filter's plugin
//! configuration").
//!
//! [`PluginConfig::parse`] turns the JSON Envoy or Istio hands the filter into
//! typed, validated structs. Unknown fields are errors, and every error names
//! the field it is about (`deployments[0].static.canary_percent: …`), so the
//! one log line the filter writes when it refuses a configuration says
//! exactly what to fix.

use crate::routing::{RequestMatch, sticky_seed};
use crate::secret::Secret;
use crate::split::{Bps, DeploymentSplit, Target, check_token};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A refused configuration: the field's path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// `None`: standalone mode, every deployment routes by its static split.
    pub controller: Option<ControllerConfig>,
    pub headers: HeaderNames,
    pub deployments: Vec<Deployment>,
}

/// How the filter reaches the controller.
#[derive(Clone, PartialEq)]
pub struct ControllerConfig {
    /// The Envoy cluster the sync calls go to.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// Sent as `Authorization: Bearer …`; never printed.
    pub token: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub lease: Duration,
}

impl fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Header names the filter sets (lower case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub role: String,
    pub cluster: String,
    pub version: String,
    pub respond_with_role: bool,
    /// Lets testers choose a role; off unless configured with a secret.
    pub tester_override: Option<TesterOverride>,
}

/// A request header through which a tester who knows the secret chooses the
/// role of a request: `<header>: canary:<secret>` (or `baseline:<secret>`).
/// The header is removed before the request goes upstream, whatever it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TesterOverride {
    pub header: String,
    pub secret: Secret,
}

/// Shortest tester override secret accepted.
pub const MIN_TESTER_SECRET_LEN: usize = 16;

/// One deployment as this proxy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    pub name: String,
    pub matcher: RequestMatch,
    /// Lower-case header whose value keeps a user on one role.
    pub sticky_header: Option<String>,
    /// The split used without a controller, or until its first answer.
    pub static_split: Option<DeploymentSplit>,
    /// Salt for sticky hashing, derived from the name.
    pub sticky_seed: u64,
}

// ---- the JSON shape --------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    controller: Option<RawController>,
    #[serde(default)]
    headers: RawHeaders,
    deployments: Vec<RawDeployment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    cluster: String,
    #[serde(default = "default_authority")]
    authority: String,
    #[serde(default = "default_sync_path")]
    path: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_lease_ms")]
    lease_ms: u64,
}

fn default_authority() -> String {
    "coalmine-controller".into()
}
fn default_sync_path() -> String {
    crate::sync::SYNC_PATH.into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_lease_ms() -> u64 {
    30_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHeaders {
    role: String,
    cluster: String,
    version: String,
    respond_with_role: bool,
    tester_override: Option<RawTesterOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTesterOverride {
    header: String,
    secret: String,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders {
            role: "x-coalmine-role".into(),
            cluster: "x-coalmine-cluster".into(),
            version: "x-coalmine-version".into(),
            respond_with_role: true,
            tester_override: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    sticky_header: Option<String>,
    #[serde(default, rename = "static")]
    static_split: Option<RawStatic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    path_prefix: String,
    #[serde(default)]
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    baseline: Target,
    #[serde(default)]
    canary: Option<Target>,
    #[serde(default)]
    canary_percent: f64,
}

// ---- validation ------------------------------------------------------------

/// Shortest sync interval accepted: faster adds load without faster decisions.
pub const MIN_INTERVAL_MS: u64 = 100;

impl PluginConfig {
    /// Parses and validates the plugin configuration.
    pub fn parse(json: &[u8]) -> Result<PluginConfig, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "configuration",
                "is empty; coalmine needs at least a `deployments` list",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "configuration".to_string()
            } else {
                path
            };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        raw.validate()
    }
}

impl RawConfig {
    fn validate(self) -> Result<PluginConfig, ConfigError> {
        let headers = self.headers.validate()?;
        let controller = self.controller.map(RawController::validate).transpose()?;
        if self.deployments.is_empty() {
            return Err(ConfigError::new(
                "deployments",
                "must list at least one deployment",
            ));
        }
        let mut deployments: Vec<Deployment> = Vec::with_capacity(self.deployments.len());
        for (i, raw) in self.deployments.into_iter().enumerate() {
            let field = format!("deployments[{i}]");
            let d = raw.validate(&field, controller.is_some(), &headers)?;
            if deployments.iter().any(|other| other.name == d.name) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!(
                        "{:?} is used by an earlier deployment; names must be unique",
                        d.name
                    ),
                ));
            }
            deployments.push(d);
        }
        Ok(PluginConfig {
            controller,
            headers,
            deployments,
        })
    }
}

impl RawController {
    fn validate(self) -> Result<ControllerConfig, ConfigError> {
        let f = |name: &str| format!("controller.{name}");
        if self.cluster.trim().is_empty() {
            return Err(ConfigError::new(
                f("cluster"),
                "must name the Envoy cluster of the controller",
            ));
        }
        check_token("authority", &self.authority)
            .map_err(|m| ConfigError::new(f("authority"), m))?;
        check_path(&self.path).map_err(|m| ConfigError::new(f("path"), m))?;
        if let Some(token) = &self.token {
            check_token("token", token).map_err(|_| {
                ConfigError::new(f("token"), "must be non-empty visible ASCII without spaces")
            })?;
        }
        if !(MIN_INTERVAL_MS..=60_000).contains(&self.interval_ms) {
            return Err(ConfigError::new(
                f("interval_ms"),
                format!(
                    "must be between {MIN_INTERVAL_MS} and 60000, got {}",
                    self.interval_ms
                ),
            ));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                f("timeout_ms"),
                format!("must be between 10 and 60000, got {}", self.timeout_ms),
            ));
        }
        if self.lease_ms < 2 * self.interval_ms || self.lease_ms > 3_600_000 {
            return Err(ConfigError::new(
                f("lease_ms"),
                format!(
                    "must be at least twice interval_ms ({}) and at most 3600000, got {}",
                    2 * self.interval_ms,
                    self.lease_ms
                ),
            ));
        }
        Ok(ControllerConfig {
            cluster: self.cluster,
            authority: self.authority,
            path: self.path,
            token: self.token,
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            lease: Duration::from_millis(self.lease_ms),
        })
    }
}

impl RawHeaders {
    fn validate(self) -> Result<HeaderNames, ConfigError> {
        let names = [
            ("role", &self.role),
            ("cluster", &self.cluster),
            ("version", &self.version),
        ];
        let tester_header = self.tester_override.as_ref().map(|t| &t.header);
        let names: Vec<(&str, &String)> = names
            .into_iter()
            .chain(tester_header.map(|h| ("tester_override.header", h)))
            .collect();
        for &(key, name) in &names {
            check_header_name(name).map_err(|m| ConfigError::new(format!("headers.{key}"), m))?;
        }
        for (i, (key, name)) in names.iter().enumerate() {
            if names.iter().take(i).any(|(_, earlier)| earlier == name) {
                return Err(ConfigError::new(
                    format!("headers.{key}"),
                    format!(
                        "{name:?} is used for two purposes; role, cluster, version and tester override headers must differ"
                    ),
                ));
            }
        }
        let tester_override = match self.tester_override {
            None => None,
            Some(t) => {
                check_token("secret", &t.secret)
                    .ok()
                    .filter(|()| t.secret.len() >= MIN_TESTER_SECRET_LEN)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "headers.tester_override.secret",
                            format!(
                                "must be {MIN_TESTER_SECRET_LEN} to 256 visible ASCII characters without spaces"
                            ),
                        )
                    })?;
                Some(TesterOverride {
                    header: t.header,
                    secret: Secret::new(t.secret),
                })
            }
        };
        Ok(HeaderNames {
            role: self.role,
            cluster: self.cluster,
            version: self.version,
            respond_with_role: self.respond_with_role,
            tester_override,
        })
    }
}

impl RawDeployment {
    fn validate(
        self,
        field: &str,
        has_controller: bool,
        headers: &HeaderNames,
    ) -> Result<Deployment, ConfigError> {
        check_deployment_name(&self.name)
            .map_err(|m| ConfigError::new(format!("{field}.name"), m))?;
        check_path(&self.matcher.path_prefix)
            .map_err(|m| ConfigError::new(format!("{field}.match.path_prefix"), m))?;
        let host = match self.matcher.host {
            None => None,
            Some(h) => {
                check_token("host", &h)
                    .map_err(|m| ConfigError::new(format!("{field}.match.host"), m))?;
                Some(h.to_ascii_lowercase())
            }
        };
        if let Some(sticky) = &self.sticky_header {
            check_header_name(sticky)
                .map_err(|m| ConfigError::new(format!("{field}.sticky_header"), m))?;
            if [&headers.role, &headers.cluster, &headers.version].contains(&sticky) {
                return Err(ConfigError::new(
                    format!("{field}.sticky_header"),
                    format!(
                        "{sticky:?} is one of coalmine's own headers, which the filter overwrites"
                    ),
                ));
            }
        }
        let static_split = match self.static_split {
            Some(raw) => Some(raw.validate(&format!("{field}.static"), &self.name)?),
            None if !has_controller => {
                return Err(ConfigError::new(
                    format!("{field}.static"),
                    "is required when there is no `controller` block (standalone mode)",
                ));
            }
            None => None,
        };
        Ok(Deployment {
            sticky_seed: sticky_seed(&self.name),
            name: self.name,
            matcher: RequestMatch {
                path_prefix: self.matcher.path_prefix,
                host,
            },
            sticky_header: self.sticky_header,
            static_split,
        })
    }
}

impl RawStatic {
    fn validate(self, field: &str, name: &str) -> Result<DeploymentSplit, ConfigError> {
        self.baseline
            .check()
            .map_err(|m| ConfigError::new(format!("{field}.baseline"), m))?;
        if let Some(canary) = &self.canary {
            canary
                .check()
                .map_err(|m| ConfigError::new(format!("{field}.canary"), m))?;
            if canary.cluster == self.baseline.cluster {
                return Err(ConfigError::new(
                    format!("{field}.canary.cluster"),
                    "is the baseline's cluster; a canary must be served by its own cluster",
                ));
            }
        }
        let canary_bps = Bps::parse_percent(self.canary_percent)
            .map_err(|m| ConfigError::new(format!("{field}.canary_percent"), m))?;
        if canary_bps > Bps::ZERO && self.canary.is_none() {
            return Err(ConfigError::new(
                format!("{field}.canary"),
                "is required when canary_percent is above 0",
            ));
        }
        Ok(DeploymentSplit {
            name: name.to_string(),
            baseline: self.baseline,
            canary: self.canary,
            canary_bps,
        })
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must start with '/', got {path:?}"));
    }
    check_token("path", path)
}

/// Lower-case HTTP token characters (RFC 9110), as Envoy stores header names.
fn check_header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid header name; use lower-case letters, digits and '-'"
        ))
    }
}

/// Deployment names appear in metric names and labels: 1–63 characters of
/// `a-z`, `0-9`, `-` and `_`, starting with a letter or digit (the API's
/// schema says so as `^[a-z0-9][a-z0-9_-]{0,62}$`).
pub fn check_deployment_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid deployment name; use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn design_example() -> Value {
        json!({
          "controller": {
            "cluster": "coalmine_controller",
            "authority": "coalmine-controller",
            "path": "/v1/sync",
            "token": "s3cret",
            "interval_ms": 1000,
            "timeout_ms": 500,
            "lease_ms": 30000
          },
          "headers": {
            "role": "x-coalmine-role",
            "cluster": "x-coalmine-cluster",
            "respond_with_role": true
          },
          "deployments": [
            {
              "name": "heart-prod",
              "match": { "path_prefix": "/predict/heart" },
              "sticky_header": "x-user-id",
              "static": {
                "baseline": { "version": "v1", "cluster": "heart-v1" },
                "canary":   { "version": "v2", "cluster": "heart-v2" },
                "canary_percent": 20
              }
            }
          ]
        })
    }

    fn parse(v: &Value) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(v.to_string().as_bytes())
    }

    fn field_of(v: &Value) -> String {
        parse(v).expect_err("should be refused").field
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(&design_example()).unwrap();
        let ctl = c.controller.as_ref().unwrap();
        assert_eq!(ctl.interval, Duration::from_secs(1));
        assert_eq!(ctl.lease, Duration::from_secs(30));
        assert!(
            !format!("{ctl:?}").contains("s3cret"),
            "token must not be printed"
        );
        assert_eq!(c.headers.version, "x-coalmine-version");
        let d = &c.deployments[0];
        assert_eq!(d.sticky_header.as_deref(), Some("x-user-id"));
        let s = d.static_split.as_ref().unwrap();
        assert_eq!(s.canary_bps, Bps::new(2000).unwrap());
        assert_eq!(s.canary.as_ref().unwrap().cluster, "heart-v2");
    }

    #[test]
    fn defaults_fill_a_minimal_standalone_config() {
        let c = PluginConfig::parse(
            br#"{"deployments":[{"name":"d","match":{"path_prefix":"/"},"static":{"baseline":{"version":"v1","cluster":"c1"}}}]}"#,
        )
        .unwrap();
        assert!(c.controller.is_none());
        assert_eq!(c.headers.role, "x-coalmine-role");
        assert!(c.headers.respond_with_role);
        assert_eq!(
            c.deployments[0].static_split.as_ref().unwrap().canary_bps,
            Bps::ZERO
        );
    }

    type Mutation = Box<dyn Fn(&mut Value)>;

    #[test]
    fn a_tester_override_is_off_unless_configured_with_a_secret() {
        let off = parse(&design_example()).unwrap();
        assert_eq!(off.headers.tester_override, None);
        let mut v = design_example();
        v["headers"]["tester_override"] =
            json!({"header": "x-coalmine-tester", "secret": "0123456789abcdef"});
        let on = parse(&v).unwrap();
        let t = on.headers.tester_override.clone().unwrap();
        assert_eq!(t.header, "x-coalmine-tester");
        assert!(t.secret.matches(b"0123456789abcdef"));
        assert!(
            !format!("{on:?}").contains("0123456789abcdef"),
            "the secret is never printed"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "deployments[0].static.canary_percent",
                Box::new(|v| v["deployments"][0]["static"]["canary_percent"] = json!(150)),
            ),
            (
                "deployments[0].static.canary_percent",
                Box::new(|v| v["deployments"][0]["static"]["canary_percent"] = json!("20")),
            ),
            (
                "deployments[0].match.colour",
                Box::new(|v| v["deployments"][0]["match"]["colour"] = json!("red")),
            ),
            (
                "deployments[0].match.path_prefix",
                Box::new(|v| v["deployments"][0]["match"]["path_prefix"] = json!("predict")),
            ),
            (
                "deployments[0].name",
                Box::new(|v| v["deployments"][0]["name"] = json!("Heart Prod")),
            ),
            (
                "deployments[0].sticky_header",
                Box::new(|v| v["deployments"][0]["sticky_header"] = json!("X-User")),
            ),
            (
                "deployments[0].sticky_header",
                Box::new(|v| v["deployments"][0]["sticky_header"] = json!("x-coalmine-role")),
            ),
            (
                "deployments[0].static.canary.cluster",
                Box::new(|v| {
                    v["deployments"][0]["static"]["canary"]["cluster"] = json!("heart-v1")
                }),
            ),
            (
                "deployments[0].static.baseline",
                Box::new(|v| v["deployments"][0]["static"]["baseline"]["cluster"] = json!("")),
            ),
            (
                "deployments[0].static.canary",
                Box::new(|v| {
                    v["deployments"][0]["static"]
                        .as_object_mut()
                        .unwrap()
                        .remove("canary");
                }),
            ),
            (
                "controller.interval_ms",
                Box::new(|v| v["controller"]["interval_ms"] = json!(5)),
            ),
            (
                "controller.interval_ms",
                Box::new(|v| v["controller"]["interval_ms"] = json!(-1)),
            ),
            (
                "controller.lease_ms",
                Box::new(|v| v["controller"]["lease_ms"] = json!(1500)),
            ),
            (
                "controller.timeout_ms",
                Box::new(|v| v["controller"]["timeout_ms"] = json!(0)),
            ),
            (
                "controller.cluster",
                Box::new(|v| v["controller"]["cluster"] = json!(" ")),
            ),
            (
                "controller.path",
                Box::new(|v| v["controller"]["path"] = json!("v1/sync")),
            ),
            (
                "controller.token",
                Box::new(|v| v["controller"]["token"] = json!("two words")),
            ),
            (
                "controller.tokn",
                Box::new(|v| v["controller"]["tokn"] = json!("x")),
            ),
            (
                "headers.cluster",
                Box::new(|v| v["headers"]["cluster"] = json!("x-coalmine-role")),
            ),
            (
                "headers.role",
                Box::new(|v| v["headers"]["role"] = json!("x role")),
            ),
            (
                "headers.tester_override.secret",
                Box::new(|v| {
                    v["headers"]["tester_override"] =
                        json!({"header": "x-coalmine-tester", "secret": "short"})
                }),
            ),
            (
                "headers.tester_override.header",
                Box::new(|v| {
                    v["headers"]["tester_override"] =
                        json!({"header": "x-coalmine-role", "secret": "0123456789abcdef"})
                }),
            ),
            (
                "headers.tester_override.secet",
                Box::new(|v| {
                    v["headers"]["tester_override"] = json!({"header": "x-t", "secet": "x"})
                }),
            ),
            ("deployments", Box::new(|v| v["deployments"] = json!([]))),
            ("extra", Box::new(|v| v["extra"] = json!(1))),
            (
                "deployments[1].name",
                Box::new(|v| {
                    let d = v["deployments"][0].clone();
                    v["deployments"].as_array_mut().unwrap().push(d);
                }),
            ),
        ];
        for (want, mutate) in cases {
            let mut v = design_example();
            mutate(&mut v);
            let err = parse(&v).expect_err(&format!("{want} should be refused: {v}"));
            assert_eq!(err.field, want, "{err}");
            assert!(err.to_string().starts_with(want), "{err}");
        }
    }

    #[test]
    fn unknown_fields_are_named_in_the_message() {
        let mut v = design_example();
        v["deployments"][0]["match"]["colour"] = json!("red");
        let err = parse(&v).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn standalone_needs_a_static_split() {
        let mut v = design_example();
        v.as_object_mut().unwrap().remove("controller");
        v["deployments"][0]
            .as_object_mut()
            .unwrap()
            .remove("static");
        assert_eq!(field_of(&v), "deployments[0].static");
        // With a controller, a deployment may wait for its first table.
        let mut v = design_example();
        v["deployments"][0]
            .as_object_mut()
            .unwrap()
            .remove("static");
        assert!(parse(&v).unwrap().deployments[0].static_split.is_none());
    }

    #[test]
    fn not_json_is_refused() {
        for bad in [&b""[..], b"   ", b"{", b"[]", b"\xff\xfe", b"null"] {
            let err = PluginConfig::parse(bad).unwrap_err();
            assert!(!err.field.is_empty() && !err.message.is_empty(), "{err:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = PluginConfig::parse(&bytes);
        }

        #[test]
        fn any_percent_is_accepted_exactly_when_in_range(p in -1000.0f64..1000.0) {
            let mut v = design_example();
            v["deployments"][0]["static"]["canary_percent"] = json!(p);
            prop_assert_eq!(parse(&v).is_ok(), (0.0..=100.0).contains(&p));
        }
    }
}
