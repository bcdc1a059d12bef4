//! The policy's significance guard as JSON: `"none"` or `{"alpha": 0.01}`.

use serde::{Deserialize, Serialize};
use serde_json::json;

/// The statistical guard on CRITICAL breaches and promotions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Significance {
    /// The bare seed rules: thresholds on the observed numbers.
    #[default]
    None,
    /// Anytime-valid tests at this level (see `significance`).
    Alpha(f64),
}

impl Significance {
    /// The level of the guard's tests, if it is on.
    pub fn alpha(self) -> Option<f64> {
        match self {
            Significance::None => None,
            Significance::Alpha(a) => Some(a),
        }
    }
}

impl Serialize for Significance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Significance::None => s.serialize_str("none"),
            Significance::Alpha(a) => json!({ "alpha": a }).serialize(s),
        }
    }
}

/// As JSON: `"none"` or `{"alpha": 0.01}`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Significance {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["none"])),
            )
            .item(
                ObjectBuilder::new()
                    .property("alpha", ObjectBuilder::new().schema_type(Type::Number))
                    .required("alpha")
                    .additional_properties(Some(
                        utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                    )),
            )
            .description(Some(
                "The statistical guard: \"none\" (the bare thresholds) or {\"alpha\": level}",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Significance {}

impl<'de> Deserialize<'de> for Significance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Alpha {
            alpha: f64,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Alpha(Alpha),
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "none" => Ok(Significance::None),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown significance {n:?}; use \"none\" or {{\"alpha\": 0.01}}"
            ))),
            Raw::Alpha(a) => Ok(Significance::Alpha(a.alpha)),
        }
    }
}
