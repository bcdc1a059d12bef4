//! High availability on PostgreSQL: two release controllers on one real
//! PostgreSQL with a deployment and its canary; the leader is killed
//! (SIGKILL) at a random moment of its renewal cycle; the takeover time is
//! from the kill until the other replica answers `/readyz` 200 (it holds
//! the lease and has loaded the state). The killed one is started again
//! (it follows) before the next kill, so the replicas take turns. Then the
//! controller's sync capacity on PostgreSQL, measured as on SQLite
//! (`capacity.rs`).

use super::capacity::{self, Capacity};
use super::stats::{quantile, round};
use super::{Bench, DEPLOYMENT};
use anyhow::{Result, anyhow, bail};
use coalmine_e2e::{ControllerProc, Postgres};
use rand::Rng;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The controller's default `--leader-lease-ms`.
const DEFAULT_LEADER_LEASE_MS: u64 = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    pub leader_lease_ms: u64,
    pub kills: usize,
    pub takeover_s: Vec<f64>,
    pub takeover_median_s: f64,
    pub takeover_max_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ha {
    pub takeover: Takeover,
    pub capacity_postgres: Capacity,
}

/// Which replica answers `/readyz` 200, if exactly one does (a call that
/// does not answer within 200 ms counts as not ready).
async fn ready(controllers: &[ControllerProc]) -> Option<usize> {
    let mut ready = Vec::new();
    for (i, c) in controllers.iter().enumerate() {
        let answer = tokio::time::timeout(Duration::from_millis(200), c.client().readyz()).await;
        if c.pid().is_some() && matches!(answer, Ok(Ok(()))) {
            ready.push(i);
        }
    }
    match ready[..] {
        [one] => Some(one),
        _ => None,
    }
}

async fn leader(controllers: &[ControllerProc], timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(i) = ready(controllers).await {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            bail!("no single leader within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn takeover(b: &Bench, pg: &Postgres) -> Result<Takeover> {
    let (lease_ms, kills) = if b.smoke {
        (1_000, 2)
    } else {
        (DEFAULT_LEADER_LEASE_MS, 10)
    };
    let url = pg.database("bench_takeover")?;
    let bin = b.bin("coalmine-controller")?;
    let lease = lease_ms.to_string();
    let args = ["--leader-lease-ms", lease.as_str()];
    let mut controllers = Vec::new();
    for _ in 0..2 {
        controllers
            .push(ControllerProc::start_from_on(bin.clone(), None, &url, 30_000, &args).await?);
    }
    let first = leader(&controllers, Duration::from_secs(20)).await?;
    b.canary(&controllers[first], 20.0, true).await?;
    let mut rng = rand::rng();
    let mut times = Vec::new();
    for kill in 0..kills {
        let now = leader(&controllers, Duration::from_millis(lease_ms * 3)).await?;
        // Somewhere in the leader's renewal cycle (every lease / 4).
        let offset = rng.random_range(0..lease_ms / 4);
        tokio::time::sleep(Duration::from_millis(offset)).await;
        controllers[now].kill9();
        let killed = Instant::now();
        let next = leader(&controllers, Duration::from_millis(lease_ms * 3)).await?;
        let took = killed.elapsed().as_secs_f64();
        if next == now {
            bail!("the killed replica leads");
        }
        let state = controllers[next].client().deployment(DEPLOYMENT).await?;
        if state.canary.is_none() {
            bail!("the new leader lost the canary: {state:?}");
        }
        b.progress(&format!(
            "takeover {}/{kills}: replica {next} leads {took:.2} s after the kill (leader lease {lease_ms} ms)",
            kill + 1
        ));
        times.push(round(took, 3));
        controllers[now].restart().await?;
    }
    Ok(Takeover {
        leader_lease_ms: lease_ms,
        kills,
        takeover_median_s: round(quantile(&times, 0.5).unwrap_or(f64::NAN), 3),
        takeover_max_s: times.iter().copied().fold(0.0, f64::max),
        takeover_s: times,
    })
}

pub async fn run(b: &Bench) -> Result<Ha> {
    let pg = Postgres::start().await?;
    let takeover = takeover(b, &pg).await?;
    let url = pg.database("bench_capacity")?;
    let capacity_postgres = capacity::run(b, Some(&url)).await?;
    if capacity_postgres.steps.is_empty() {
        return Err(anyhow!("no capacity step ran on PostgreSQL"));
    }
    Ok(Ha {
        takeover,
        capacity_postgres,
    })
}

impl Ha {
    /// The section of BENCHMARKS.md, with the capacity on SQLite beside.
    pub fn markdown(&self, sqlite: &Capacity) -> String {
        let t = &self.takeover;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\n### High availability on PostgreSQL\n\nTwo controllers on one PostgreSQL (Debian's, on loopback), a deployment with a canary; the leader killed (SIGKILL) {} times at a random moment of its renewal cycle, `--leader-lease-ms {}`; takeover: from the kill until the other replica answers `/readyz` 200, holding the lease with the state loaded. Median {} s, max {} s ({}).",
            t.kills,
            t.leader_lease_ms,
            t.takeover_median_s,
            t.takeover_max_s,
            t.takeover_s
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let p = &self.capacity_postgres;
        let _ = writeln!(
            o,
            "\nSync capacity, measured as above: {} reports/s on SQLite, {} on PostgreSQL (a sync writes nothing to the database: reports are counted in memory; only decisions are stored).\n",
            sqlite.controller_reports_per_s, p.controller_reports_per_s
        );
        let _ = writeln!(
            o,
            "| reports/s | SQLite p99 | PostgreSQL p99 | SQLite CPU per report | PostgreSQL CPU per report |\n|---|---|---|---|---|"
        );
        for s in &sqlite.steps {
            let Some(q) = p
                .steps
                .iter()
                .find(|q| q.target_reports_per_s == s.target_reports_per_s)
            else {
                continue;
            };
            let _ = writeln!(
                o,
                "| {} | {:.2} ms | {:.2} ms | {:.0} µs | {:.0} µs |",
                s.target_reports_per_s,
                s.p99_ms,
                q.p99_ms,
                s.controller_cpu_us_per_report,
                q.controller_cpu_us_per_report
            );
        }
        o
    }
}
