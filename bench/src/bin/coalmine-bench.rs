//! `make bench` (and, with `--smoke`, `make test-bench`): see the
//! coalmine-bench crate's documentation for what is measured and how.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "coalmine's performance benchmarks, side by side in one run")]
struct Args {
    /// Seconds instead of minutes: checks the harness, not the figures.
    #[arg(long)]
    smoke: bool,
    /// Where to write the figures.
    #[arg(long, default_value = "target/bench/perf.json")]
    out: PathBuf,
    /// Markdown file whose generated part to replace (e.g. BENCHMARKS.md).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Run only these sections and print their figures (no files written):
    /// profile, calibrate, dataplane, routing, rollback, capacity, compare.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// For `compare`: filter modules (.wasm) to measure side by side in the
    /// shipped config, e.g. builds before and after a change.
    #[arg(long = "module")]
    modules: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.only.is_empty() {
        return coalmine_bench::run_only(args.smoke, &args.only, &args.modules).await;
    }
    coalmine_bench::run(args.smoke, &args.out, args.markdown.as_deref()).await?;
    Ok(())
}
