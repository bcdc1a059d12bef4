//! The demo's models, trained in process on the shipped data, as the
//! decision simulator needs them: what each answers over every complete
//! patient (its distribution of the probability) and how often it is right.

use anyhow::{Context as _, Result};
use coalmine_decide::sim::PROBABILITY;
use coalmine_models_server::model::Model;
use coalmine_models_server::train::{Dataset, Options, load, train};
use serde::Serialize;

/// One model as the simulator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelAnswers {
    pub name: &'static str,
    /// Share of patients per slot of the probability (below, ten bins, above).
    pub slots: Vec<f64>,
    /// Share of patients whose diagnosis it predicts right.
    pub accuracy: f64,
}

/// The production model (v1), the underfit rival (v2) and a good retrain
/// (v1's training with split seed 7).
#[derive(Debug, Clone, Serialize)]
pub struct HeartModels {
    pub production: ModelAnswers,
    pub underfit: ModelAnswers,
    pub retrained: ModelAnswers,
}

fn answers(name: &'static str, model: &Model, data: &Dataset) -> ModelAnswers {
    let mut slots = vec![0.0; PROBABILITY.slots()];
    let mut right = 0usize;
    for row in &data.rows {
        let p = model.probability(&row.input);
        if let Some(s) = slots.get_mut(PROBABILITY.slot(p)) {
            *s += 1.0;
        }
        right += usize::from((p >= 0.5) == row.disease);
    }
    let n = data.rows.len().max(1) as f64;
    slots.iter_mut().for_each(|s| *s /= n);
    ModelAnswers {
        name,
        slots,
        accuracy: right as f64 / n,
    }
}

/// Trains the three models on `data/uci-heart-cleveland/cleveland.tsv`.
pub fn heart_models() -> Result<HeartModels> {
    let path = coalmine_e2e::workspace_root().join(coalmine_models_server::patients::DATA_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let data = load(&text)?;
    let retrain = Options {
        seed: 7,
        ..Options::new("v3", false)
    };
    Ok(HeartModels {
        production: answers("v1", &train(&data, &Options::new("v1", false)), &data),
        underfit: answers(
            "v2 (underfit)",
            &train(&data, &Options::new("v2", true)),
            &data,
        ),
        retrained: answers("v3 (split seed 7)", &train(&data, &retrain), &data),
    })
}
