//! Training: the Cleveland data, a seeded held-out split, and batch gradient
//! descent with L2. The same data, seed and options give the same weights.

use crate::model::{Encoding, FEATURES, FORMAT, Input, Model, Training};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// One patient: the 13 features and whether disease is present.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub input: Input,
    pub disease: bool,
}

/// The data set as loaded.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub rows: Vec<Row>,
    /// Rows with a missing value (`?`), left out of training and testing.
    pub dropped_missing: usize,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("the header must name the 13 features and `diagnosis`; column {column} is {found:?}")]
    Header { column: usize, found: String },
    #[error("line {line}: {message}")]
    Row { line: usize, message: String },
    #[error("no complete rows")]
    Empty,
}

/// Parses the tab-separated Cleveland file (header line, 14 columns).
pub fn load(text: &str) -> Result<Dataset, DataError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or(DataError::Empty)?;
    let names: Vec<&str> = header.split('\t').map(str::trim).collect();
    let expected: Vec<&str> = FEATURES
        .iter()
        .map(|(n, _)| *n)
        .chain(["diagnosis"])
        .collect();
    for (column, want) in expected.iter().enumerate() {
        let found = names.get(column).copied().unwrap_or_default();
        if found != *want {
            return Err(DataError::Header {
                column: column + 1,
                found: found.to_string(),
            });
        }
    }
    let mut rows = Vec::new();
    let mut dropped_missing = 0;
    for (i, line) in lines {
        let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cells.len() != 14 {
            return Err(DataError::Row {
                line: i + 1,
                message: format!("{} columns instead of 14", cells.len()),
            });
        }
        if cells.contains(&"?") {
            dropped_missing += 1;
            continue;
        }
        let mut values = [0.0; 14];
        for (slot, (cell, name)) in values.iter_mut().zip(cells.iter().zip(&expected)) {
            *slot = cell.parse().map_err(|_| DataError::Row {
                line: i + 1,
                message: format!("{name} is {cell:?}, not a number"),
            })?;
        }
        let mut input = [0.0; 13];
        input.copy_from_slice(&values[..13]);
        rows.push(Row {
            input,
            disease: values[13] > 0.0,
        });
    }
    if rows.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(Dataset {
        rows,
        dropped_missing,
        sha256: format!("{:x}", Sha256::digest(text.as_bytes())),
    })
}

/// Training options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub version: String,
    pub seed: u64,
    /// Share of rows held out for the test accuracy.
    pub test_share: f64,
    pub underfit: bool,
}

impl Options {
    pub fn new(version: &str, underfit: bool) -> Options {
        Options {
            version: version.to_string(),
            seed: 42,
            test_share: 0.25,
            underfit,
        }
    }
}

/// Categorical features with more than two values are one-hot encoded.
const ONE_HOT: [&str; 4] = [
    "chest_pain_type",
    "resting_ecg",
    "exercice_ST_segment",
    "thalessemia",
];
/// The underfit model sees only these, briefly and heavily regularised.
const UNDERFIT_FEATURES: [&str; 3] = ["age", "resting_BP", "serum_cholesterol"];

fn encodings(train: &[Row], underfit: bool) -> Vec<Encoding> {
    let mut out = Vec::new();
    for (i, (name, domain)) in FEATURES.iter().enumerate() {
        if underfit && !UNDERFIT_FEATURES.contains(name) {
            continue;
        }
        if ONE_HOT.contains(name) {
            if let crate::model::Domain::OneOf(values) = domain {
                for &value in *values {
                    out.push(Encoding::OneHot {
                        feature: name.to_string(),
                        value,
                    });
                }
            }
            continue;
        }
        let n = train.len() as f64;
        let mean = train.iter().map(|r| r.input[i]).sum::<f64>() / n;
        let var = train
            .iter()
            .map(|r| (r.input[i] - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = if var > 0.0 { var.sqrt() } else { 1.0 };
        out.push(Encoding::Standardized {
            feature: name.to_string(),
            mean,
            std,
        });
    }
    out
}

fn accuracy(model: &Model, rows: &[Row]) -> f64 {
    let right = rows
        .iter()
        .filter(|r| (model.probability(&r.input) >= 0.5) == r.disease)
        .count();
    right as f64 / rows.len().max(1) as f64
}

/// Trains a model on the data set.
pub fn train(data: &Dataset, options: &Options) -> Model {
    let mut rows = data.rows.clone();
    rows.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed));
    let test_rows = ((rows.len() as f64) * options.test_share).round() as usize;
    let test = rows.split_off(rows.len() - test_rows);
    let train = rows;
    let (epochs, learning_rate, l2) = if options.underfit {
        (15, 0.05, 1.0)
    } else {
        (3000, 0.1, 0.01)
    };

    let mut model = Model {
        format: FORMAT.to_string(),
        version: options.version.clone(),
        target: "diagnosis > 0 (heart disease present)".to_string(),
        features: FEATURES.iter().map(|(n, _)| n.to_string()).collect(),
        encodings: encodings(&train, options.underfit),
        weights: Vec::new(),
        bias: 0.0,
        train_accuracy: 0.0,
        test_accuracy: 0.0,
        training: Training {
            data_sha256: data.sha256.clone(),
            rows: data.rows.len() + data.dropped_missing,
            rows_dropped_missing: data.dropped_missing,
            train_rows: train.len(),
            test_rows: test.len(),
            seed: options.seed,
            epochs,
            learning_rate,
            l2,
            underfit: options.underfit,
        },
        sha256: String::new(),
    };
    model.weights = vec![0.0; model.encodings.len()];
    let encoded: Vec<(Vec<f64>, f64)> = train
        .iter()
        .map(|r| (model.encode(&r.input), f64::from(u8::from(r.disease))))
        .collect();
    let n = encoded.len() as f64;
    for _ in 0..epochs {
        let mut grad = vec![0.0; model.weights.len()];
        let mut grad_bias = 0.0;
        for (x, y) in &encoded {
            let z = x
                .iter()
                .zip(&model.weights)
                .fold(model.bias, |a, (x, w)| a + x * w);
            let err = 1.0 / (1.0 + (-z).exp()) - y;
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += err * xi;
            }
            grad_bias += err;
        }
        for (w, g) in model.weights.iter_mut().zip(&grad) {
            *w -= learning_rate * (g / n + l2 * *w);
        }
        model.bias -= learning_rate * grad_bias / n;
    }
    model.train_accuracy = accuracy(&model, &train);
    model.test_accuracy = accuracy(&model, &test);
    model.seal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Dataset {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/uci-heart-cleveland/cleveland.tsv"
        );
        load(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn missing_values_are_dropped_explicitly() {
        let d = data();
        assert_eq!(d.dropped_missing, 6);
        assert_eq!(d.rows.len(), 297);
    }

    #[test]
    fn v1_is_strong_and_v2_clearly_worse() {
        let d = data();
        let v1 = train(&d, &Options::new("v1", false));
        let v2 = train(&d, &Options::new("v2", true));
        println!(
            "v1 test accuracy {:.3}, v2 {:.3}",
            v1.test_accuracy, v2.test_accuracy
        );
        assert!(v1.test_accuracy >= 0.80, "v1 {}", v1.test_accuracy);
        assert!(
            v2.test_accuracy <= v1.test_accuracy - 0.10,
            "v2 {} vs v1 {}",
            v2.test_accuracy,
            v1.test_accuracy
        );
        assert_eq!((v1.training.train_rows, v1.training.test_rows), (223, 74));
    }

    #[test]
    fn training_is_deterministic_and_the_artifact_round_trips() {
        let d = data();
        let a = train(&d, &Options::new("v1", false));
        let b = train(&d, &Options::new("v1", false));
        assert_eq!(a, b);
        assert_eq!(a.sha256.len(), 64);
        let other_seed = train(
            &d,
            &Options {
                seed: 7,
                ..Options::new("v1", false)
            },
        );
        assert_ne!(a.weights, other_seed.weights);
        let json = serde_json::to_vec_pretty(&a).unwrap();
        assert_eq!(Model::from_json(&json).unwrap(), a);
        // A changed weight no longer matches the digest.
        let mut tampered = a.clone();
        tampered.weights[0] += 1.0;
        let err = Model::from_json(&serde_json::to_vec(&tampered).unwrap()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        assert!(matches!(
            load("a\tb\n"),
            Err(DataError::Header { column: 1, .. })
        ));
        let header: Vec<&str> = FEATURES
            .iter()
            .map(|(n, _)| *n)
            .chain(["diagnosis"])
            .collect();
        let text = format!("{}\n1\t2\n", header.join("\t"));
        assert!(matches!(load(&text), Err(DataError::Row { line: 2, .. })));
        let text = format!("{}\n{}\n", header.join("\t"), ["x"; 14].join("\t"));
        assert!(
            load(&text)
                .unwrap_err()
                .to_string()
                .contains("age is \"x\"")
        );
    }
}
