//! The `wrk` load generator (Debian's), run as a child process: a fixed
//! number of connections for a fixed time (or until a number of responses),
//! its figures read from a JSON line its Lua `done` hook prints.

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Prints wrk's summary as one JSON line (latencies in µs). With
/// `WRK_LIMIT` set, the (single) thread stops after that many responses.
const SCRIPT: &str = r#"
local limit = tonumber(os.getenv("WRK_LIMIT") or "0")
if limit > 0 then
  local seen = 0
  response = function(status, headers, body)
    seen = seen + 1
    if seen >= limit then wrk.thread:stop() end
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"wrk":1,"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct WrkRun {
    pub requests: u64,
    pub duration_us: u64,
    /// Socket errors and timeouts.
    pub errors: u64,
    pub non_2xx: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl WrkRun {
    pub fn requests_per_s(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// Finds the summary line in wrk's output.
pub fn parse(stdout: &str) -> Result<WrkRun> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("{\"wrk\":"))
        .ok_or_else(|| anyhow!("wrk printed no summary:\n{stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Wrk<'a> {
    pub url: &'a str,
    pub connections: u32,
    pub duration: Duration,
    /// Stop after this many responses (still bounded by `duration`).
    pub limit: Option<u64>,
}

impl Wrk<'_> {
    /// Runs wrk (one thread) and returns its figures.
    pub fn run(&self, script_dir: &Path) -> Result<WrkRun> {
        let script = script_dir.join("coalmine-bench.lua");
        if !script.exists() {
            std::fs::write(&script, SCRIPT)?;
        }
        let secs = self.duration.as_secs().max(1);
        let out = Command::new("wrk")
            .args(["-t1", "--timeout", "5s"])
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{secs}s"))
            .arg("-s")
            .arg(&script)
            .arg(self.url)
            .env("WRK_LIMIT", self.limit.unwrap_or(0).to_string())
            .output()
            .context("running wrk (Debian package `wrk`; `make setup` installs it)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line_among_wrks_own_output() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n\
                   {\"wrk\":1,\"requests\":1000,\"duration_us\":500000,\"errors\":0,\"non_2xx\":2,\"p50_us\":120,\"p99_us\":900}\n";
        let run = parse(out).unwrap();
        assert_eq!(run.requests, 1000);
        assert_eq!(run.non_2xx, 2);
        assert_eq!(run.requests_per_s(), 2000.0);
        assert!(parse("no summary").is_err());
    }
}
