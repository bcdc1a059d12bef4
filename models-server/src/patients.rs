//! Real patients as prediction requests: the complete rows of the UCI
//! Cleveland data (`data/uci-heart-cleveland/cleveland.tsv`), each as the
//! JSON body `POST /predict` takes (the 13 features by name), with the
//! diagnosis the data records (ground truth, for feedback). The demo, the
//! end-to-end tests and the benchmarks send these.

use serde_json::{Map, Value, json};
use std::path::Path;

/// The data file, relative to the repository root.
pub const DATA_FILE: &str = "data/uci-heart-cleveland/cleveland.tsv";

/// A patient: the request a client sends, and what the data records.
#[derive(Clone, Debug, PartialEq)]
pub struct Patient {
    pub request: Value,
    /// Heart disease present (`diagnosis > 0`): what a right prediction says.
    pub disease: bool,
}

/// The prediction requests of every row without a missing value (`?`).
pub fn requests(text: &str) -> Vec<Value> {
    patients(text).into_iter().map(|p| p.request).collect()
}

/// Every row without a missing value (`?`), with its diagnosis.
pub fn patients(text: &str) -> Vec<Patient> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let mut out = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.contains(&"?") || cells.len() != header.len() {
            continue;
        }
        let mut row = Map::new();
        for (name, cell) in header.iter().zip(&cells).take(13) {
            row.insert(
                name.to_string(),
                json!(cell.parse::<f64>().unwrap_or_default()),
            );
        }
        let diagnosis = cells.get(13).and_then(|c| c.parse::<f64>().ok());
        out.push(Patient {
            request: Value::Object(row),
            disease: diagnosis.is_some_and(|d| d > 0.0),
        });
    }
    out
}

/// [`requests`] of the data file under the repository root `root`.
pub fn load_requests(root: &Path) -> std::io::Result<Vec<Value>> {
    Ok(requests(&std::fs::read_to_string(root.join(DATA_FILE))?))
}

/// [`patients`] of the data file under the repository root `root`.
pub fn load_patients(root: &Path) -> std::io::Result<Vec<Patient>> {
    Ok(patients(&std::fs::read_to_string(root.join(DATA_FILE))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_rows_become_requests() {
        let text = "age\tsex\tchest_pain_type\tresting_BP\tserum_cholesterol\tfasting_blood_sugar\tresting_ecg\tmax_HR\texercice_angina\tST_depression_exercice\texercice_ST_segment\tvessels_coloured_fluoroscopy\tthalessemia\tdiagnosis\n\
                    63\t1\t1\t145\t233\t1\t2\t150\t0\t2.3\t3\t0\t6\t0\n\
                    67\t1\t4\t160\t286\t0\t2\t108\t1\t1.5\t2\t?\t3\t2\n";
        let r = requests(text);
        assert_eq!(r.len(), 1, "the row with a missing value is left out");
        assert_eq!(r[0]["age"], json!(63.0));
        assert_eq!(r[0]["ST_depression_exercice"], json!(2.3));
        assert!(r[0].get("diagnosis").is_none());
        assert_eq!(r[0].as_object().unwrap().len(), 13);
        assert!(!patients(text)[0].disease);
    }

    #[test]
    fn the_shipped_data_has_297_complete_patients() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert_eq!(load_requests(&root).unwrap().len(), 297);
        let sick = load_patients(&root)
            .unwrap()
            .iter()
            .filter(|p| p.disease)
            .count();
        assert_eq!(
            sick, 137,
            "the data records 137 of the 297 with heart disease"
        );
    }
}
