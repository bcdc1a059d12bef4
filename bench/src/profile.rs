//! Instructions per request of the filter's pure request path, counted by
//! callgrind (deterministic, unlike wall-clock timings on a shared machine).

use super::Bench;
use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use std::process::Command;

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub what: &'static str,
    pub requests: u64,
    pub instructions_per_request: f64,
}

/// The `Collected : N` total callgrind prints on exit.
pub fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let (_, rest) = l.split_once("Collected :")?;
        rest.trim().replace(',', "").parse().ok()
    })
}

fn instructions(bin: &std::path::Path, requests: u64) -> Result<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(bin)
        .arg(requests.to_string())
        .current_dir(coalmine_e2e::workspace_root())
        .output()
        .context("running valgrind (Debian package `valgrind`; `make setup` installs it)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("callgrind failed: {stderr}");
    }
    collected(&stderr).ok_or_else(|| anyhow!("no instruction count from callgrind:\n{stderr}"))
}

pub fn run(b: &Bench) -> Result<Profile> {
    let requests = if b.smoke { 2_000 } else { 100_000 };
    let bin = b.bin("coalmine-request-path")?;
    let once = instructions(&bin, requests)?;
    let twice = instructions(&bin, 2 * requests)?;
    Ok(Profile {
        what: "deployment match, split lookup, role draw, outcome class, statistics, a report drained every 1000 requests",
        requests,
        instructions_per_request: super::stats::round(
            twice.saturating_sub(once) as f64 / requests as f64,
            1,
        ),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_callgrinds_total() {
        let err = "==12== Events    : Ir\n==12== Collected : 1234567\n==12==\n==12== I   refs:      1,234,567\n";
        assert_eq!(super::collected(err), Some(1_234_567));
        assert_eq!(super::collected("nothing"), None);
    }
}
