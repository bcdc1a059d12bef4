//! The coalmine controller (work in progress).
//!
//! It will receive every proxy's statistics over `POST /v1/sync`, judge each
//! canary against its baseline and rewrite the split table. Until it lands,
//! the filter runs in standalone mode with the static split of its plugin
//! configuration.

fn main() {
    eprintln!(
        "coalmine-controller {}: the controller is not available yet; run the filter in standalone mode (no `controller` block)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
