//! What the benchmark ran on, and how much CPU a process used.

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use std::process::Command;

/// The machine and software of a run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub envoy: String,
    pub rustc: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

impl Machine {
    pub fn describe(envoy: &std::path::Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']))
            })
            .unwrap_or("unknown")
            .to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let envoy_version = first_line(&envoy.display().to_string(), &["--version"]);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: super::stats::round(kib / 1024.0 / 1024.0, 1),
            kernel: first_line("uname", &["-sr"]),
            envoy: envoy_version
                .split_whitespace()
                .find(|w| w.contains("/1."))
                .unwrap_or(&envoy_version)
                .to_string(),
            rustc: first_line("rustc", &["--version"]),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    first_line("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0)
}

/// User plus system CPU time of a process so far, in seconds (all threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_seconds_from_stat(&stat, clock_ticks())
}

/// utime + stime (fields 14 and 15) from a `/proc/<pid>/stat` line; the
/// command name (field 2) may contain spaces, so fields count from its `)`.
pub fn cpu_seconds_from_stat(stat: &str, ticks: f64) -> Result<f64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) is index 11, stime index 12.
    let get = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("unexpected /proc stat: {stat}"))
    };
    Ok((get(11)? + get(12)?) / ticks)
}

pub use coalmine_e2e::rss_bytes;

/// Confines this process (every thread) to `cpus`, a `taskset` list.
pub fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        return Err(anyhow!("taskset -c {cpus} failed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_times_past_a_command_name_with_spaces() {
        let stat = "4242 (envoy worker 0) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_seconds_from_stat(stat, 100.0).unwrap(), 3.0);
        assert!(cpu_seconds_from_stat("garbage", 100.0).is_err());
    }
}
