//! coalmine's model server: a real model for the demo, tests and benchmarks.
//!
//! - [`model`]: the 13 features and their checks, the logistic regression,
//!   and the JSON artifact (version, encodings, weights, accuracy, SHA-256).
//! - [`train`]: the Cleveland data (rows with missing values dropped
//!   explicitly), a seeded held-out split, batch gradient descent.
//! - [`patients`]: the complete rows of the data as prediction requests.
//! - [`serve`]: `POST /predict`, `GET /healthz`, `GET /model`, and the fault
//!   switches (`POST /admin/faults`, token required).

pub mod model;
pub mod patients;
pub mod serve;
pub mod train;
