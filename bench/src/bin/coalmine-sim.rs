//! `coalmine-sim`: how often the policy rolls back a healthy canary, and how
//! fast it catches bad ones, with and without the significance guard.
//!
//! `make bench-decisions` runs it in full and writes target/bench/decisions.json;
//! `--quick` (in `make test`) runs fewer and fails when the A/A false
//! rollback rate is beyond its statistical bound or the seed failure is missed.

use anyhow::{Result, bail};
use clap::Parser;
use coalmine_decide::policy::{Policy, Significance};
use coalmine_decide::sim::{Detection, Scenario, detection, rollback_rate, run_many};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Simulate canary decisions: A/A false rollbacks and detection times.")]
struct Args {
    /// A/A runs per policy (10 simulated minutes each).
    #[arg(long, default_value_t = 1000)]
    aa_runs: u64,
    /// Runs per detection scenario and policy.
    #[arg(long, default_value_t = 200)]
    detection_runs: u64,
    #[arg(long, default_value = "target/bench/decisions.json")]
    out: PathBuf,
    /// 200 A/A runs and 30 per detection scenario; exit 1 beyond the bounds.
    #[arg(long)]
    quick: bool,
}

/// The smallest k with P(Binomial(n, p) ≤ k) ≥ q.
fn binomial_quantile(n: u64, p: f64, q: f64) -> u64 {
    let (mut cdf, mut pmf) = (0.0, (1.0 - p).powf(n as f64));
    for k in 0..=n {
        cdf += pmf;
        if cdf >= q {
            return k;
        }
        pmf *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
    }
    n
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.aa_runs = 200;
        args.detection_runs = 30;
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let guard = Policy::default();
    let alpha = match guard.significance {
        Significance::Alpha(a) => a,
        Significance::None => 0.0,
    };
    let naive = Policy {
        significance: Significance::None,
        ..Policy::default()
    };
    let started = Instant::now();

    let aa = Scenario::aa();
    println!(
        "A/A: {} runs × {} simulated s per policy ({threads} threads)…",
        args.aa_runs, aa.duration_seconds
    );
    let aa_guard = rollback_rate(&run_many(&aa, &guard, args.aa_runs, 1, threads));
    let aa_naive = rollback_rate(&run_many(&aa, &naive, args.aa_runs, 1, threads));

    let mut detections: Vec<Detection> = Vec::new();
    for s in [
        Scenario::seed_demo(),
        Scenario::error_1_to_6pct(),
        Scenario::p95_plus_100ms(),
        Scenario::error_with_steps(),
    ] {
        println!("{}: {} runs per policy…", s.name, args.detection_runs);
        for (name, policy) in [("guard", &guard), ("naive", &naive)] {
            detections.push(detection(
                &s.name,
                name,
                &run_many(&s, policy, args.detection_runs, 100_000, threads),
            ));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.0} s"));
    println!(
        "\n{:<36} {:>8} {:>10} {:>8} {:>8} {:>6}",
        "scenario", "policy", "detected", "median", "p95", "runs"
    );
    println!(
        "{:<36} {:>8} {:>9.2}% {:>8} {:>8} {:>6}",
        "aa (false rollbacks)",
        "guard",
        aa_guard * 100.0,
        "",
        "",
        args.aa_runs
    );
    println!(
        "{:<36} {:>8} {:>9.2}% {:>8} {:>8} {:>6}",
        "aa (false rollbacks)",
        "naive",
        aa_naive * 100.0,
        "",
        "",
        args.aa_runs
    );
    for d in &detections {
        println!(
            "{:<36} {:>8} {:>9.1}% {:>8} {:>8} {:>6}",
            d.scenario,
            d.policy,
            d.detected_rate * 100.0,
            secs(d.median_s),
            secs(d.p95_s),
            d.runs
        );
    }
    println!("\n{elapsed:.0} s on {threads} threads; reproduce with `make bench-decisions`");

    let report = json!({
        "aa": {"runs": args.aa_runs, "false_rollback_rate": aa_guard, "alpha": alpha, "scenario": aa},
        "naive_aa": {"runs": args.aa_runs, "false_rollback_rate": aa_naive},
        "detections": detections,
        "policy": guard,
        "seconds": elapsed,
        "threads": threads,
        "command": if args.quick { "coalmine-sim --quick" } else { "make bench-decisions" },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", args.out.display());

    if args.quick {
        let bound = binomial_quantile(args.aa_runs, alpha, 0.999);
        let false_rollbacks = (aa_guard * args.aa_runs as f64).round() as u64;
        if false_rollbacks > bound {
            bail!(
                "{false_rollbacks} false rollbacks in {} A/A runs: above the bound {bound} for α = {alpha}",
                args.aa_runs
            );
        }
        let seed = detections
            .iter()
            .find(|d| d.scenario == "seed_demo" && d.policy == "guard");
        if seed.is_none_or(|d| d.detected_rate < 1.0) {
            bail!("the seed failure was not always caught: {seed:?}");
        }
        println!(
            "quick check passed: {false_rollbacks} false rollbacks ≤ {bound}; the seed failure caught in every run"
        );
    }
    Ok(())
}
