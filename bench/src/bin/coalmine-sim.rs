//! `coalmine-sim`: how often the policy rolls back or holds a healthy canary,
//! and how fast it catches bad ones, with and without the significance
//! guard: errors and latency, what the models answer (the demo's real
//! models, trained here, give the answers' distributions), and delayed
//! labels fed back as accuracy; and how long a healthy canary takes to be
//! promoted on the default steps and on the exponential ramp.
//!
//! `make bench-decisions` runs it in full and writes target/bench/decisions.json;
//! `--quick` (in `make test`) runs fewer and fails when a goal is missed.

use anyhow::{Result, bail};
use clap::Parser;
use coalmine_bench::heart::heart_models;
use coalmine_decide::policy::{Policy, Significance};
use coalmine_decide::sim::{
    Detection, Promotion, Scenario, detection, held_longer_than, promotion, rollback_rate, run_many,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Simulate canary decisions: A/A false rollbacks and holds, detection times.")]
struct Args {
    /// A/A runs per policy (10 simulated minutes each).
    #[arg(long, default_value_t = 1000)]
    aa_runs: u64,
    /// Runs per detection scenario and policy.
    #[arg(long, default_value_t = 200)]
    detection_runs: u64,
    #[arg(long, default_value = "target/bench/decisions.json")]
    out: PathBuf,
    /// 200 A/A runs and 30 per detection scenario; exit 1 when a goal is missed.
    #[arg(long)]
    quick: bool,
    /// Only this section: errors, outputs, feedback, ramp or watch.
    #[arg(long, value_parser = ["errors", "outputs", "feedback", "ramp", "watch"])]
    only: Option<String>,
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

/// One section's run: its report and goals, its detections added.
type Section<'a> = dyn FnMut(&mut Vec<Detection>) -> Result<(Value, Vec<Goal>)> + 'a;

/// A goal and whether this run met it.
struct Goal {
    what: String,
    met: bool,
}

/// What every section runs with.
struct Sim {
    aa_runs: u64,
    detection_runs: u64,
    threads: usize,
    guard: Policy,
    naive: Policy,
}

impl Sim {
    fn alpha(&self) -> f64 {
        self.guard.significance.alpha().unwrap_or(0.0)
    }

    /// Detection statistics of `s` under both policies.
    fn detect(&self, s: &Scenario, out: &mut Vec<Detection>) {
        println!("{}: {} runs per policy…", s.name, self.detection_runs);
        for (name, policy) in [("guard", &self.guard), ("naive", &self.naive)] {
            let runs = run_many(s, policy, self.detection_runs, 100_000, self.threads);
            out.push(detection(&s.name, name, &runs));
        }
    }

    /// At most the false rollbacks a test at level α allows in `runs` (with
    /// 99.9 % confidence).
    fn aa_goal(&self, what: &str, rate: f64) -> Goal {
        let bound = binomial_quantile(self.aa_runs, self.alpha(), 0.999);
        let seen = (rate * self.aa_runs as f64).round() as u64;
        Goal {
            what: format!(
                "{what}: {seen} false rollbacks in {} A/A runs ≤ {bound} (α = {})",
                self.aa_runs,
                self.alpha()
            ),
            met: seen <= bound,
        }
    }
}

fn find<'a>(ds: &'a [Detection], scenario: &str, policy: &str) -> Option<&'a Detection> {
    ds.iter()
        .find(|d| d.scenario == scenario && d.policy == policy)
}

/// Errors and latency: A/A false rollbacks, the seed failure and three
/// effects.
fn errors(sim: &Sim, detections: &mut Vec<Detection>) -> (Value, Vec<Goal>) {
    let aa = Scenario::aa();
    println!(
        "A/A: {} runs × {} simulated s per policy ({} threads)…",
        sim.aa_runs, aa.duration_seconds, sim.threads
    );
    let aa_guard = rollback_rate(&run_many(&aa, &sim.guard, sim.aa_runs, 1, sim.threads));
    let aa_naive = rollback_rate(&run_many(&aa, &sim.naive, sim.aa_runs, 1, sim.threads));
    for s in [
        Scenario::seed_demo(),
        Scenario::error_1_to_6pct(),
        Scenario::p95_plus_100ms(),
        Scenario::error_with_steps(),
    ] {
        sim.detect(&s, detections);
    }
    let seed = find(detections, "seed_demo", "guard");
    let goals = vec![
        sim.aa_goal("errors A/A", aa_guard),
        Goal {
            what: format!(
                "the seed failure caught in every run ({:.1} %)",
                seed.map_or(0.0, |d| d.detected_rate * 100.0)
            ),
            met: seed.is_some_and(|d| d.detected_rate >= 1.0),
        },
    ];
    let report = json!({
        "aa": {"runs": sim.aa_runs, "false_rollback_rate": aa_guard, "alpha": sim.alpha(), "scenario": aa},
        "naive_aa": {"runs": sim.aa_runs, "false_rollback_rate": aa_naive},
    });
    (report, goals)
}

/// What the models answer: the same model on both roles (false rollbacks
/// and holds), and the underfit model at 10 % and 20 %.
fn outputs(sim: &Sim, detections: &mut Vec<Detection>) -> Result<(Value, Vec<Goal>)> {
    let models = heart_models()?;
    let aa = Scenario::outputs_aa(&models.production.slots);
    println!(
        "outputs A/A ({} on both roles): {} runs…",
        models.production.name, sim.aa_runs
    );
    let runs = run_many(&aa, &sim.guard, sim.aa_runs, 1, sim.threads);
    let (rollbacks, holds) = (
        rollback_rate(&runs),
        held_longer_than(&runs, aa.bake_seconds),
    );
    let mut goals = vec![
        Goal {
            what: format!(
                "outputs A/A: {:.2} % false rollbacks ≤ 1 %",
                rollbacks * 100.0
            ),
            met: rollbacks <= 0.01,
        },
        Goal {
            what: format!(
                "outputs A/A: {:.2} % holds longer than one bake ({} s) ≤ 5 %",
                holds * 100.0,
                aa.bake_seconds
            ),
            met: holds <= 0.05,
        },
    ];
    for percent in [10.0, 20.0] {
        let s = Scenario::outputs_shift(percent, &models.production.slots, &models.underfit.slots);
        sim.detect(&s, detections);
    }
    let at_20 = find(detections, "outputs_shift_20pct", "guard");
    goals.push(Goal {
        what: format!(
            "the underfit model at 20 % of 100 requests/s caught in median {} ≤ 10 s",
            at_20
                .and_then(|d| d.median_s)
                .map_or("-".into(), |m| format!("{m:.0} s"))
        ),
        met: at_20
            .is_some_and(|d| d.detected_rate >= 0.99 && d.median_s.is_some_and(|m| m <= 10.0)),
    });
    let report = json!({
        "aa": {"runs": sim.aa_runs, "false_rollback_rate": rollbacks, "held_longer_than_one_bake": holds, "scenario": aa},
        "models": models,
    });
    Ok((report, goals))
}

/// Delayed labels: the same accuracy on both roles (false rollbacks), and
/// 0.85 → 0.60 with 10 % of answers labelled 2 s later, at 10 % and 20 %;
/// under the seed's rule (accuracy below 0.85 rolls back, as `min`) and,
/// for comparison, under the canary-vs-baseline delta alone.
fn feedback(sim: &Sim, detections: &mut Vec<Detection>) -> (Value, Vec<Goal>) {
    let with_min = |p: &Policy| {
        let mut p = p.clone();
        if let Some(m) = p.feedback.get_mut("accuracy") {
            m.min = Some(0.85);
        }
        p
    };
    let (seed_guard, seed_naive) = (with_min(&sim.guard), with_min(&sim.naive));
    let aa = Scenario::feedback_aa();
    println!("feedback A/A: {} runs per policy…", sim.aa_runs);
    let rollbacks = rollback_rate(&run_many(&aa, &seed_guard, sim.aa_runs, 1, sim.threads));
    let delta_only = rollback_rate(&run_many(&aa, &sim.guard, sim.aa_runs, 1, sim.threads));
    let mut goals = vec![Goal {
        what: format!(
            "delayed-label A/A: {:.2} % false rollbacks with min 0.85, {:.2} % with the delta alone, ≤ 1 %",
            rollbacks * 100.0,
            delta_only * 100.0
        ),
        met: rollbacks <= 0.01 && delta_only <= 0.01,
    }];
    for percent in [10.0, 20.0] {
        let s = Scenario::accuracy_drop(percent, 0.60);
        println!("{}: {} runs per policy…", s.name, sim.detection_runs);
        for (name, policy) in [
            ("guard", &seed_guard),
            ("naive", &seed_naive),
            ("delta", &sim.guard),
        ] {
            let runs = run_many(&s, policy, sim.detection_runs, 100_000, sim.threads);
            detections.push(detection(&s.name, name, &runs));
        }
    }
    let name = Scenario::accuracy_drop(20.0, 0.60).name;
    let at_20 = find(detections, &name, "guard");
    let delta = find(detections, &name, "delta");
    let median = |d: Option<&Detection>| {
        d.and_then(|d| d.median_s)
            .map_or("-".into(), |m| format!("{m:.0} s"))
    };
    goals.push(Goal {
        what: format!(
            "accuracy 0.85 → 0.60 (10 % labelled after 2 s, 20 % of 100 requests/s) caught in median {} ≤ 30 s under the seed's min 0.85 (the delta alone: {})",
            median(at_20),
            median(delta)
        ),
        met: at_20
            .is_some_and(|d| d.detected_rate >= 0.99 && d.median_s.is_some_and(|m| m <= 30.0)),
    });
    let report = json!({
        "aa": {"runs": sim.aa_runs, "false_rollback_rate": rollbacks,
               "false_rollback_rate_delta_only": delta_only, "scenario": aa},
        "policy": seed_guard.feedback,
    });
    (report, goals)
}

/// Ramps: how long a healthy canary takes to be promoted on the default
/// steps (20 → 50 → 100 %) and on the exponential ramp (1 → 2 → … → 100 %),
/// a minute's bake at each share, under the guard.
fn ramp(sim: &Sim) -> (Value, Vec<Goal>) {
    let runs = sim.detection_runs;
    let promotions: Vec<Promotion> = [Scenario::ramp_steps(), Scenario::ramp_exponential()]
        .iter()
        .map(|s| {
            println!("{}: {runs} runs…", s.name);
            promotion(
                &s.name,
                &run_many(s, &sim.guard, runs, 200_000, sim.threads),
            )
        })
        .collect();
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.0} s"));
    println!(
        "\n{:<36} {:>9} {:>8} {:>8}",
        "healthy canary", "promoted", "median", "p95"
    );
    for p in &promotions {
        println!(
            "{:<36} {:>8.1}% {:>8} {:>8}",
            p.scenario,
            p.promoted_rate * 100.0,
            secs(p.median_s),
            secs(p.p95_s)
        );
    }
    let goals = promotions
        .iter()
        .map(|p| Goal {
            what: format!(
                "a healthy canary on {} promoted in {:.1} % of runs (median {}) ≥ 95 %",
                p.scenario,
                p.promoted_rate * 100.0,
                secs(p.median_s)
            ),
            met: p.promoted_rate >= 0.95,
        })
        .collect();
    (json!({ "promotions": promotions }), goals)
}

/// The post-promotion watch: a promoted version at 1 % errors that jumps
/// to 20 % two minutes after its promotion (time to the revert), and one
/// that stays healthy for the whole 10-minute watch (false reverts).
fn watch(sim: &Sim) -> (Value, Vec<Goal>) {
    use coalmine_decide::sim::{WatchScenario, run_watch_many};
    let runs = (sim.detection_runs / 2).max(10);
    let (bad, good) = (WatchScenario::degrading(), WatchScenario::healthy());
    println!("{} and {}: {runs} runs each…", bad.name, good.name);
    let mut times: Vec<u64> = run_watch_many(&bad, &sim.guard, runs, sim.threads)
        .iter()
        .filter_map(|o| o.reverted_after_s)
        .collect();
    times.sort_unstable();
    let reverted = times.len() as f64 / runs as f64;
    let median = times.get(times.len() / 2).copied();
    let false_reverts = run_watch_many(&good, &sim.guard, runs, sim.threads)
        .iter()
        .filter(|o| o.reverted_after_s.is_some())
        .count() as f64
        / runs as f64;
    let goals = vec![
        Goal {
            what: format!(
                "promoted version 1 % → 20 % errors within its watch: {:.0} % reverted, median {} after it degraded (≤ 90 s)",
                reverted * 100.0,
                median.map_or("-".into(), |m| format!("{m} s"))
            ),
            met: reverted >= 0.99 && median.is_some_and(|m| m <= 90),
        },
        Goal {
            what: format!(
                "healthy promoted version: {:.2} % reverted during a 10-minute watch (≤ 1 %)",
                false_reverts * 100.0
            ),
            met: false_reverts <= 0.01,
        },
    ];
    let report = json!({
        "degrading": {"runs": runs, "reverted_rate": reverted, "median_s": median,
                      "p95_s": times.get((times.len() * 95 / 100).min(times.len().saturating_sub(1))), "scenario": bad},
        "healthy": {"runs": runs, "false_revert_rate": false_reverts, "scenario": good},
    });
    (report, goals)
}

fn print_table(detections: &[Detection]) {
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.0} s"));
    println!(
        "\n{:<36} {:>8} {:>10} {:>8} {:>8} {:>6}",
        "scenario", "policy", "detected", "median", "p95", "runs"
    );
    for d in detections {
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
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.aa_runs = 200;
        args.detection_runs = 30;
    }
    let sim = Sim {
        aa_runs: args.aa_runs,
        detection_runs: args.detection_runs,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        guard: Policy::default(),
        naive: Policy {
            significance: Significance::None,
            ..Policy::default()
        },
    };
    let started = Instant::now();
    let mut detections = Vec::new();
    let runs = |section: &str| args.only.as_deref().is_none_or(|o| o == section);
    let mut goals = Vec::new();
    let mut section = |name: &str, run: &mut Section| -> Result<Value> {
        if !runs(name) {
            return Ok(Value::Null);
        }
        let (report, more) = run(&mut detections)?;
        goals.extend(more);
        Ok(report)
    };
    let errors = section("errors", &mut |d| Ok(errors(&sim, d)))?;
    let outputs = section("outputs", &mut |d| outputs(&sim, d))?;
    let feedback = section("feedback", &mut |d| Ok(feedback(&sim, d)))?;
    let ramp = section("ramp", &mut |_| Ok(ramp(&sim)))?;
    let watch = section("watch", &mut |_| Ok(watch(&sim)))?;
    let elapsed = started.elapsed().as_secs_f64();
    print_table(&detections);
    println!("\ngoals:");
    for g in &goals {
        println!("  {} {}", if g.met { "met    " } else { "NOT MET" }, g.what);
    }
    println!(
        "\n{elapsed:.0} s on {} threads; reproduce with `make bench-decisions`",
        sim.threads
    );
    let report = json!({
        "errors": errors,
        "outputs": outputs,
        "feedback": feedback,
        "ramp": ramp,
        "watch": watch,
        "detections": detections,
        "goals": goals.iter().map(|g| json!({"goal": g.what, "met": g.met})).collect::<Vec<_>>(),
        "policy": sim.guard,
        "seconds": elapsed,
        "threads": sim.threads,
        "command": if args.quick { "coalmine-sim --quick" } else { "make bench-decisions" },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", args.out.display());
    let missed: Vec<&str> = goals
        .iter()
        .filter(|g| !g.met)
        .map(|g| g.what.as_str())
        .collect();
    if args.quick && !missed.is_empty() {
        bail!("goals missed:\n  {}", missed.join("\n  "));
    }
    if args.quick {
        println!("quick check passed: every goal met");
    }
    Ok(())
}
