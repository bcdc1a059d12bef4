//! The plugin configuration's JSON shape, as Envoy or Istio hands it over,
//! and its validation into the typed configuration: defaults filled in,
//! every value checked, every error naming its field.

use super::outputs::RawOutputs;
use super::{
    ConfigError, ControllerConfig, Deployment, HeaderNames, MIN_INTERVAL_MS, MIN_TESTER_SECRET_LEN,
    PluginConfig, ShadowLimits, TesterOverride, check_deployment_name,
};
use crate::outputs::MAX_BODY_BYTES;
use crate::routing::{RequestMatch, sticky_seed};
use crate::secret::Secret;
use crate::split::{Bps, DeploymentSplit, Target, check_token};
use serde::Deserialize;
use std::time::Duration;

// ---- the JSON shape --------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    controller: Option<RawController>,
    #[serde(default)]
    headers: RawHeaders,
    deployments: Vec<RawDeployment>,
    #[serde(default)]
    shadow: RawShadow,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShadow {
    max_in_flight: u64,
    timeout_ms: u64,
    max_body_bytes: u64,
}

impl Default for RawShadow {
    fn default() -> RawShadow {
        let d = ShadowLimits::default();
        RawShadow {
            max_in_flight: d.max_in_flight as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            max_body_bytes: d.max_body_bytes as u64,
        }
    }
}

impl RawShadow {
    fn validate(self) -> Result<ShadowLimits, ConfigError> {
        let within = |name: &str, value: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&value) {
                Ok(value)
            } else {
                Err(ConfigError::new(
                    format!("shadow.{name}"),
                    format!("must be between {lo} and {hi}, got {value}"),
                ))
            }
        };
        // Each bound fits a usize on wasm32 too.
        Ok(ShadowLimits {
            max_in_flight: within("max_in_flight", self.max_in_flight, 1, 1024)? as usize,
            timeout: Duration::from_millis(within("timeout_ms", self.timeout_ms, 10, 60_000)?),
            max_body_bytes: within(
                "max_body_bytes",
                self.max_body_bytes,
                0,
                MAX_BODY_BYTES as u64,
            )? as usize,
        })
    }
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
    client_headers_stripped: bool,
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
            client_headers_stripped: false,
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
    #[serde(default)]
    default_cluster: Option<String>,
    #[serde(default, rename = "static")]
    static_split: Option<RawStatic>,
    #[serde(default)]
    outputs: Option<RawOutputs>,
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

impl RawConfig {
    pub(super) fn validate(self) -> Result<PluginConfig, ConfigError> {
        let headers = self.headers.validate()?;
        let controller = self.controller.map(RawController::validate).transpose()?;
        let shadow = self.shadow.validate()?;
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
            shadow,
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
            client_headers_stripped: self.client_headers_stripped,
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
        if let Some(cluster) = &self.default_cluster {
            check_token("cluster", cluster)
                .map_err(|m| ConfigError::new(format!("{field}.default_cluster"), m))?;
            if !headers.client_headers_stripped {
                return Err(ConfigError::new(
                    format!("{field}.default_cluster"),
                    "needs `headers.client_headers_stripped: true`: a request the filter leaves untagged must not carry a cluster header a client sent",
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
        let outputs = self
            .outputs
            .map(|o| o.validate(&format!("{field}.outputs")))
            .transpose()?;
        Ok(Deployment {
            sticky_seed: sticky_seed(&self.name),
            name: self.name,
            matcher: RequestMatch {
                path_prefix: self.matcher.path_prefix,
                host,
            },
            sticky_header: self.sticky_header,
            default_cluster: self.default_cluster,
            static_split,
            outputs,
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
            shadow: None,
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
