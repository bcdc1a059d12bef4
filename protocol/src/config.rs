//! The filter's plugin configuration (DESIGN.md, "The filter's plugin
//! configuration").
//!
//! [`PluginConfig::parse`] turns the JSON Envoy or Istio hands the filter into
//! typed, validated structs. Unknown fields are errors, and every error names
//! the field it is about (`deployments[0].static.canary_percent: …`), so the
//! one log line the filter writes when it refuses a configuration says
//! exactly what to fix.
//!
//! Here: the typed configuration the filter runs with. `raw`: the JSON
//! shape as Envoy hands it over, and its validation into these types.

use crate::outputs::Outputs;
use crate::routing::RequestMatch;
use crate::secret::Secret;
use crate::split::DeploymentSplit;
use std::fmt;
use std::time::Duration;

mod outputs;
mod raw;

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
    /// How copies to a shadow version are bounded.
    pub shadow: ShadowLimits,
}

/// The bounds on a worker's copies to shadow versions (the `shadow` block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowLimits {
    /// Copies under way at once per worker; further ones are skipped and
    /// counted (`busy`).
    pub max_in_flight: usize,
    /// A copy's answer is awaited this long (Envoy then answers it with a
    /// 504, counted as the shadow's `5xx`).
    pub timeout: Duration,
    /// Requests with a larger body are not copied (counted `too_large`).
    pub max_body_bytes: usize,
}

impl Default for ShadowLimits {
    fn default() -> ShadowLimits {
        ShadowLimits {
            max_in_flight: 32,
            timeout: Duration::from_millis(5_000),
            max_body_bytes: 64 * 1024,
        }
    }
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
    /// A filter ahead of coalmine removes the role and cluster headers
    /// clients send (the shipped configs' `coalmine.strip_client_headers`),
    /// so the filter need not remove them itself.
    pub client_headers_stripped: bool,
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
    /// The cluster the proxy's route sends this deployment's requests to
    /// when they carry no cluster header. Requests the filter sends there
    /// go out untagged: no header change, so Envoy keeps the route it chose
    /// (only with `client_headers_stripped`).
    pub default_cluster: Option<String>,
    /// The split used without a controller, or until its first answer.
    pub static_split: Option<DeploymentSplit>,
    /// Salt for sticky hashing, derived from the name.
    pub sticky_seed: u64,
    /// Which outputs of the answers are read (none: bodies are never read).
    pub outputs: Option<Outputs>,
}

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
        let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
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

/// A short name that becomes a metric label (an output field, a feedback
/// metric): 1–32 characters of `a-z`, `0-9` and `_`; `kind` names it in
/// the error.
pub fn check_label_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid {kind} name; use 1-32 characters of a-z, 0-9 and '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Bps;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn design_example() -> Value {
        json!({
          "controller": {
            "cluster": "coalmine_controller",
            "authority": "coalmine-controller",
            "path": crate::sync::SYNC_PATH,
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

    fn with_outputs(outputs: Value) -> Value {
        let mut v = design_example();
        v["deployments"][0]["outputs"] = outputs;
        v
    }

    fn heart_outputs() -> Value {
        json!({
          "fields": [
            { "name": "prediction",  "pointer": "/prediction",  "kind": "class" },
            { "name": "probability", "pointer": "/probability", "kind": "score", "min": 0, "max": 1, "bins": 10 }
          ],
          "sample_percent": 100,
          "max_body_bytes": 65536
        })
    }

    #[test]
    fn the_design_outputs_example_parses_and_defaults_fill_the_rest() {
        use crate::outputs::{FieldKind, ScoreBins};
        let c = parse(&with_outputs(heart_outputs())).unwrap();
        let o = c.deployments[0].outputs.as_ref().unwrap();
        assert_eq!((o.sample, o.max_body_bytes), (Bps::FULL, 65536));
        assert_eq!(o.fields[0].kind, FieldKind::Class);
        assert_eq!(
            o.fields[1].kind,
            FieldKind::Score(ScoreBins {
                min: 0.0,
                max: 1.0,
                bins: 10,
                tolerance: 0.05,
            })
        );
        let minimal = json!({"fields": [{"name": "p", "pointer": "/p", "kind": "score", "min": -1, "max": 1}]});
        let c = parse(&with_outputs(minimal)).unwrap();
        let o = c.deployments[0].outputs.as_ref().unwrap();
        assert_eq!((o.sample, o.max_body_bytes), (Bps::FULL, 64 * 1024));
        assert!(matches!(o.fields[0].kind, FieldKind::Score(b) if b.bins == 10));
        assert!(
            parse(&design_example()).unwrap().deployments[0]
                .outputs
                .is_none()
        );
    }

    #[test]
    fn invalid_outputs_are_refused_naming_the_field() {
        let at = "deployments[0].outputs";
        let cases: Vec<(String, Mutation)> = vec![
            (
                format!("{at}.fields"),
                Box::new(|o| o["fields"] = json!([])),
            ),
            (
                format!("{at}.fields[0].name"),
                Box::new(|o| o["fields"][0]["name"] = json!("Pred")),
            ),
            (
                format!("{at}.fields[1].name"),
                Box::new(|o| o["fields"][1]["name"] = json!("prediction")),
            ),
            (
                format!("{at}.fields[0].pointer"),
                Box::new(|o| o["fields"][0]["pointer"] = json!("prediction")),
            ),
            (
                format!("{at}.fields[0].pointer"),
                Box::new(|o| o["fields"][0]["pointer"] = json!("/a~2")),
            ),
            (
                format!("{at}.fields[0].kind"),
                Box::new(|o| o["fields"][0]["kind"] = json!("label")),
            ),
            (
                format!("{at}.fields[0].bins"),
                Box::new(|o| o["fields"][0]["bins"] = json!(4)),
            ),
            (
                format!("{at}.fields[1].min"),
                Box::new(|o| {
                    o["fields"][1].as_object_mut().unwrap().remove("min");
                }),
            ),
            (
                format!("{at}.fields[1].max"),
                Box::new(|o| o["fields"][1]["max"] = json!(0)),
            ),
            (
                format!("{at}.fields[1].bins"),
                Box::new(|o| o["fields"][1]["bins"] = json!(0)),
            ),
            (
                format!("{at}.fields[1].bins"),
                Box::new(|o| o["fields"][1]["bins"] = json!(101)),
            ),
            (
                format!("{at}.fields[1].colour"),
                Box::new(|o| o["fields"][1]["colour"] = json!(1)),
            ),
            (
                format!("{at}.sample_percent"),
                Box::new(|o| o["sample_percent"] = json!(101)),
            ),
            (
                format!("{at}.max_body_bytes"),
                Box::new(|o| o["max_body_bytes"] = json!(0)),
            ),
            (
                format!("{at}.max_body_bytes"),
                Box::new(|o| o["max_body_bytes"] = json!(2_000_000)),
            ),
            (
                format!("{at}.fields"),
                Box::new(|o| {
                    let f = o["fields"][0].clone();
                    o["fields"] = json!(
                        (0..9)
                            .map(|i| {
                                let mut f = f.clone();
                                f["name"] = json!(format!("f{i}"));
                                f
                            })
                            .collect::<Vec<_>>()
                    );
                }),
            ),
        ];
        for (want, mutate) in cases {
            let mut o = heart_outputs();
            mutate(&mut o);
            let err = parse(&with_outputs(o.clone())).expect_err(&format!("{want}: {o}"));
            assert_eq!(err.field, want, "{err}");
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
