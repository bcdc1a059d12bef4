//! The model: a logistic regression over the 13 heart-disease features.
//!
//! Inputs are checked field by field (every error names the field); numeric
//! features are standardised with the training set's mean and deviation,
//! categorical ones one-hot encoded. The artifact is plain JSON and carries
//! everything needed to predict, plus what it was trained on and how well it
//! did on held-out data.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What a feature may hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// A number in `[min, max]`.
    Range(f64, f64),
    /// One of these values.
    OneOf(&'static [f64]),
}

/// The 13 input features, by their data set names, and what they may hold.
pub const FEATURES: [(&str, Domain); 13] = [
    ("age", Domain::Range(1.0, 120.0)),
    ("sex", Domain::OneOf(&[0.0, 1.0])),
    ("chest_pain_type", Domain::OneOf(&[1.0, 2.0, 3.0, 4.0])),
    ("resting_BP", Domain::Range(50.0, 250.0)),
    ("serum_cholesterol", Domain::Range(50.0, 700.0)),
    ("fasting_blood_sugar", Domain::OneOf(&[0.0, 1.0])),
    ("resting_ecg", Domain::OneOf(&[0.0, 1.0, 2.0])),
    ("max_HR", Domain::Range(40.0, 250.0)),
    ("exercice_angina", Domain::OneOf(&[0.0, 1.0])),
    ("ST_depression_exercice", Domain::Range(0.0, 10.0)),
    ("exercice_ST_segment", Domain::OneOf(&[1.0, 2.0, 3.0])),
    (
        "vessels_coloured_fluoroscopy",
        Domain::OneOf(&[0.0, 1.0, 2.0, 3.0]),
    ),
    ("thalessemia", Domain::OneOf(&[3.0, 6.0, 7.0])),
];

/// A checked input: the 13 features in [`FEATURES`] order.
pub type Input = [f64; 13];

/// An input that cannot be used, and which field is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

fn input_error(field: &str, message: impl Into<String>) -> InputError {
    InputError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks a JSON object of the 13 named features.
pub fn parse_input(value: &Value) -> Result<Input, InputError> {
    let Some(object) = value.as_object() else {
        return Err(input_error(
            "body",
            "must be a JSON object of the 13 named features",
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !FEATURES.iter().any(|(n, _)| n == k))
    {
        return Err(input_error(unknown, "is not a feature of this model"));
    }
    let mut input = [0.0; 13];
    for (slot, (name, domain)) in input.iter_mut().zip(FEATURES.iter()) {
        let v = object
            .get(*name)
            .ok_or_else(|| input_error(name, "is missing"))?;
        let x = v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| input_error(name, format!("must be a number, got {v}")))?;
        match domain {
            Domain::Range(lo, hi) if !(*lo..=*hi).contains(&x) => {
                return Err(input_error(
                    name,
                    format!("must be between {lo} and {hi}, got {x}"),
                ));
            }
            Domain::OneOf(values) if !values.contains(&x) => {
                let allowed: Vec<String> = values.iter().map(f64::to_string).collect();
                return Err(input_error(
                    name,
                    format!("must be one of {}, got {x}", allowed.join(", ")),
                ));
            }
            _ => {}
        }
        *slot = x;
    }
    Ok(input)
}

/// How one feature enters the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum Encoding {
    /// `(x - mean) / std`.
    Standardized {
        feature: String,
        mean: f64,
        std: f64,
    },
    /// 1 when the feature equals `value`, else 0.
    OneHot { feature: String, value: f64 },
}

impl Encoding {
    fn feature(&self) -> &str {
        match self {
            Encoding::Standardized { feature, .. } | Encoding::OneHot { feature, .. } => feature,
        }
    }

    fn apply(&self, x: f64) -> f64 {
        match self {
            Encoding::Standardized { mean, std, .. } => (x - mean) / std,
            Encoding::OneHot { value, .. } => f64::from(u8::from(x == *value)),
        }
    }
}

/// How a model was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub data_sha256: String,
    pub rows: usize,
    pub rows_dropped_missing: usize,
    pub train_rows: usize,
    pub test_rows: usize,
    pub seed: u64,
    pub epochs: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub underfit: bool,
}

/// The artifact `train` writes and `serve` loads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub version: String,
    pub target: String,
    /// The 13 input features the server accepts.
    pub features: Vec<String>,
    pub encodings: Vec<Encoding>,
    pub weights: Vec<f64>,
    pub bias: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub training: Training,
    /// SHA-256 of the artifact with this field empty.
    pub sha256: String,
}

pub const FORMAT: &str = "coalmine-logistic-regression/1";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not a model artifact: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format {0:?} is not {FORMAT:?}")]
    Format(String),
    #[error("the artifact is inconsistent: {0}")]
    Inconsistent(String),
    #[error(
        "the artifact's sha256 {stated} does not match its content ({actual}); it was changed after training"
    )]
    Digest { stated: String, actual: String },
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    /// The encoded feature vector of an input.
    pub fn encode(&self, input: &Input) -> Vec<f64> {
        self.encodings
            .iter()
            .map(|e| {
                let i = FEATURES
                    .iter()
                    .position(|(n, _)| *n == e.feature())
                    .unwrap_or(0);
                e.apply(input.get(i).copied().unwrap_or(0.0))
            })
            .collect()
    }

    /// P(disease present).
    pub fn probability(&self, input: &Input) -> f64 {
        let z = self
            .encode(input)
            .iter()
            .zip(&self.weights)
            .fold(self.bias, |acc, (x, w)| acc + x * w);
        sigmoid(z)
    }

    /// The digest of the artifact's content (with `sha256` empty).
    pub fn digest(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.sha256 = String::new();
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        format!("{:x}", Sha256::digest(bytes))
    }

    pub fn seal(mut self) -> Model {
        self.sha256 = self.digest();
        self
    }

    /// Loads and checks an artifact.
    pub fn from_json(bytes: &[u8]) -> Result<Model, ModelError> {
        let m: Model = serde_json::from_slice(bytes)?;
        if m.format != FORMAT {
            return Err(ModelError::Format(m.format));
        }
        if m.weights.len() != m.encodings.len() {
            return Err(ModelError::Inconsistent(format!(
                "{} weights for {} encoded features",
                m.weights.len(),
                m.encodings.len()
            )));
        }
        if let Some(e) = m
            .encodings
            .iter()
            .find(|e| !FEATURES.iter().any(|(n, _)| *n == e.feature()))
        {
            return Err(ModelError::Inconsistent(format!(
                "unknown feature {:?}",
                e.feature()
            )));
        }
        let actual = m.digest();
        if actual != m.sha256 {
            return Err(ModelError::Digest {
                stated: m.sha256,
                actual,
            });
        }
        Ok(m)
    }

    /// What `GET /model` shows.
    pub fn metadata(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn example() -> Value {
        json!({
            "age": 63, "sex": 1, "chest_pain_type": 1, "resting_BP": 145, "serum_cholesterol": 233,
            "fasting_blood_sugar": 1, "resting_ecg": 2, "max_HR": 150, "exercice_angina": 0,
            "ST_depression_exercice": 2.3, "exercice_ST_segment": 3, "vessels_coloured_fluoroscopy": 0,
            "thalessemia": 6
        })
    }

    #[test]
    fn a_good_input_parses_in_feature_order() {
        let input = parse_input(&example()).unwrap();
        assert_eq!(input[0], 63.0);
        assert_eq!(input[9], 2.3);
        assert_eq!(input[12], 6.0);
    }

    type Mutation = Box<dyn Fn(&mut Value)>;

    #[test]
    fn every_malformed_input_names_its_field() {
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "age",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("age");
                }),
            ),
            ("age", Box::new(|v| v["age"] = json!("sixty"))),
            ("age", Box::new(|v| v["age"] = json!(-3))),
            ("sex", Box::new(|v| v["sex"] = json!(2))),
            (
                "chest_pain_type",
                Box::new(|v| v["chest_pain_type"] = json!(0)),
            ),
            ("resting_BP", Box::new(|v| v["resting_BP"] = json!(null))),
            ("thalessemia", Box::new(|v| v["thalessemia"] = json!(5))),
            ("max_HR", Box::new(|v| v["max_HR"] = json!([150]))),
            (
                "ST_depression_exercice",
                Box::new(|v| v["ST_depression_exercice"] = json!(11)),
            ),
            ("colour", Box::new(|v| v["colour"] = json!("red"))),
        ];
        for (field, mutate) in cases {
            let mut v = example();
            mutate(&mut v);
            let err = parse_input(&v).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        assert_eq!(parse_input(&json!([1, 2])).unwrap_err().field, "body");
    }
}
