//! The split table: for each deployment, the baseline and canary targets and
//! the share of traffic the canary receives.
//!
//! The controller owns the table; the filter routes by it. Shares are integer
//! basis points so both sides agree exactly, on every platform.

use crate::shadow::ShadowSplit;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which side of a canary comparison served a request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Baseline,
    Canary,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Baseline, Role::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Baseline => "baseline",
            Role::Canary => "canary",
        }
    }

    /// A dense index (0 or 1) for per-role arrays.
    pub fn index(self) -> usize {
        match self {
            Role::Baseline => 0,
            Role::Canary => 1,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A share of traffic in basis points: 0 ..= 10 000 (100 %).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u16", into = "u16")]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = u16, maximum = 10_000)
)]
pub struct Bps(u16);

impl Bps {
    pub const ZERO: Bps = Bps(0);
    pub const FULL: Bps = Bps(10_000);

    /// `None` when `bps` is above 10 000.
    pub const fn new(bps: u16) -> Option<Bps> {
        if bps <= Self::FULL.0 {
            Some(Bps(bps))
        } else {
            None
        }
    }

    /// A percentage (0 ..= 100, up to two decimals are kept) as basis points;
    /// `None` for anything outside that range, NaN included.
    pub fn from_percent(percent: f64) -> Option<Bps> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        // In range, so the rounded value fits a u16 exactly.
        Bps::new((percent * 100.0).round() as u16)
    }

    /// [`Bps::from_percent`] with the one sentence every caller reports
    /// (the plugin configuration, the API, the engine).
    pub fn parse_percent(percent: f64) -> Result<Bps, String> {
        Bps::from_percent(percent)
            .ok_or_else(|| format!("must be between 0 and 100, got {percent}"))
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    pub fn as_percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl TryFrom<u16> for Bps {
    type Error = String;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Bps::new(value).ok_or_else(|| format!("{value} basis points is more than 10000 (100 %)"))
    }
}

impl From<Bps> for u16 {
    fn from(value: Bps) -> u16 {
        value.0
    }
}

impl fmt::Display for Bps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", self.as_percent())
    }
}

/// One model version as the proxy reaches it: the version label and the
/// Envoy cluster that serves it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[!-~]{1,256}$"))]
    pub version: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[!-~]{1,256}$"))]
    pub cluster: String,
}

impl Target {
    /// Both fields become request and response header values, so they must
    /// be non-empty visible ASCII without spaces (Istio cluster names such as
    /// `outbound|8080|v2|heart.default.svc.cluster.local` qualify).
    pub fn check(&self) -> Result<(), String> {
        check_token("version", &self.version)?;
        check_token("cluster", &self.cluster)
    }
}

pub(crate) fn check_token(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > 256 {
        return Err(format!("{what} is longer than 256 bytes"));
    }
    if let Some(bad) = value.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!(
            "{what} {value:?} contains byte 0x{bad:02x}; only visible ASCII without spaces is allowed"
        ));
    }
    Ok(())
}

/// How one deployment is split right now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct DeploymentSplit {
    pub name: String,
    pub baseline: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Target>,
    #[serde(default)]
    pub canary_bps: Bps,
    /// A version that gets copies of the baseline's requests and never
    /// answers a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSplit>,
}

impl DeploymentSplit {
    /// The target serving `role`; the canary role without a canary has none.
    pub fn target(&self, role: Role) -> Option<&Target> {
        match role {
            Role::Baseline => Some(&self.baseline),
            Role::Canary => self.canary.as_ref(),
        }
    }

    /// The canary share that is actually routable: zero without a canary.
    pub fn effective_bps(&self) -> Bps {
        if self.canary.is_some() {
            self.canary_bps
        } else {
            Bps::ZERO
        }
    }
}

/// Every deployment's split, stamped with the controller's epoch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct SplitTable {
    pub epoch: u64,
    pub deployments: Vec<DeploymentSplit>,
}

/// Why a split table was refused.
#[derive(Debug, thiserror::Error)]
pub enum SplitTableError {
    #[error("split table is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("split table deployment {name:?}: {message}")]
    Invalid { name: String, message: String },
    /// The value in proxy shared data is not in the stored form.
    #[error("stored split table: {0}")]
    Stored(&'static str),
}

impl SplitTable {
    pub fn get(&self, name: &str) -> Option<&DeploymentSplit> {
        self.deployments.iter().find(|d| d.name == name)
    }

    /// Decodes and checks a table (as stored in proxy shared data or sent by
    /// the controller). A table that fails here is never routed by.
    pub fn decode(bytes: &[u8]) -> Result<SplitTable, SplitTableError> {
        let table: SplitTable = serde_json::from_slice(bytes)?;
        table.validate()?;
        Ok(table)
    }

    /// Checks every target can be routed to (header-safe names).
    pub fn validate(&self) -> Result<(), SplitTableError> {
        for d in &self.deployments {
            let invalid = |message: String| SplitTableError::Invalid {
                name: d.name.clone(),
                message,
            };
            d.baseline
                .check()
                .map_err(|m| invalid(format!("baseline {m}")))?;
            if let Some(canary) = &d.canary {
                canary.check().map_err(|m| invalid(format!("canary {m}")))?;
            }
            if let Some(shadow) = &d.shadow {
                shadow
                    .target
                    .check()
                    .map_err(|m| invalid(format!("shadow {m}")))?;
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_converts_to_basis_points() {
        assert_eq!(Bps::from_percent(20.0), Some(Bps(2000)));
        assert_eq!(Bps::from_percent(12.345), Some(Bps(1235)));
        assert_eq!(Bps::from_percent(100.0), Some(Bps::FULL));
        assert_eq!(Bps::from_percent(0.0), Some(Bps::ZERO));
        assert_eq!(Bps::from_percent(100.01), None);
        assert_eq!(Bps::from_percent(-0.5), None);
        assert_eq!(Bps::from_percent(f64::NAN), None);
        assert_eq!(Bps::from_percent(f64::INFINITY), None);
    }

    #[test]
    fn table_round_trips_and_refuses_bad_targets() {
        let table = SplitTable {
            epoch: 7,
            deployments: vec![DeploymentSplit {
                name: "heart-prod".into(),
                baseline: Target {
                    version: "v1".into(),
                    cluster: "heart-v1".into(),
                },
                canary: Some(Target {
                    version: "v2".into(),
                    cluster: "outbound|8080|v2|heart.default.svc.cluster.local".into(),
                }),
                canary_bps: Bps(2000),
                shadow: None,
            }],
        };
        assert_eq!(SplitTable::decode(&table.encode()).unwrap(), table);

        let bad = br#"{"epoch":1,"deployments":[{"name":"d","baseline":{"version":"v 1","cluster":"c"}}]}"#;
        let err = SplitTable::decode(bad).unwrap_err().to_string();
        assert!(err.contains("baseline version"), "{err}");

        let too_much = br#"{"epoch":1,"deployments":[{"name":"d","baseline":{"version":"v1","cluster":"c"},"canary_bps":10001}]}"#;
        assert!(SplitTable::decode(too_much).is_err());
    }

    #[test]
    fn canary_share_needs_a_canary() {
        let d = DeploymentSplit {
            name: "d".into(),
            baseline: Target {
                version: "v1".into(),
                cluster: "c1".into(),
            },
            canary: None,
            canary_bps: Bps(5000),
            shadow: None,
        };
        assert_eq!(d.effective_bps(), Bps::ZERO);
        assert!(d.target(Role::Canary).is_none());
    }
}
