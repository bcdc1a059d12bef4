//! `make soak` (and, shortened, `make test-soak`): see the `bench::soak`
//! module of coalmine-e2e for what runs and what must hold.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "coalmine under steady load with canary cycles and faults")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Where to write the figures.
    #[arg(long, default_value = "target/bench/soak.json")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let soak = coalmine_bench::soak::run(args.minutes, &args.out).await?;
    println!(
        "\nsoak {:.0} s: {} requests, {} failed ({} by injected faults, {} unexplained); {} cycles, {} controller restarts",
        soak.duration_s,
        soak.requests,
        soak.failed_requests,
        soak.failed_explained_by_faults,
        soak.failed_unexplained,
        soak.cycles.len(),
        soak.controller_restarts
    );
    for (what, t) in [
        ("filter VM memory", &soak.vm_memory),
        ("Envoy RSS", &soak.envoy_rss),
        ("controller RSS", &soak.controller_rss),
    ] {
        println!(
            "{what:<17} first {:>12.0} B, last {:>12.0} B, change {:+.1} %{}",
            t.first_window_mean,
            t.last_window_mean,
            t.change * 100.0,
            if t.flat { "" } else { "  NOT FLAT" }
        );
    }
    println!(
        "events: {} (ids contiguous: {}), missing: {:?}",
        soak.events.total, soak.events.ids_contiguous, soak.events.missing
    );
    if !soak.passed {
        anyhow::bail!("the soak failed; see {}", args.out.display());
    }
    println!("soak passed");
    Ok(())
}
