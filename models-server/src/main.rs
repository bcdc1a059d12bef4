//! The coalmine model server (work in progress).
//!
//! It will train a logistic regression on the UCI Cleveland heart-disease
//! data and serve `POST /predict` with switchable faults, as the baseline and
//! canary behind Envoy in the demo, the tests and the benchmarks.

fn main() {
    eprintln!(
        "coalmine-models-server {}: not available yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
