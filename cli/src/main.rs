//! `coalmine`: the operator CLI (see `coalmine --help`).

use clap::Parser;
use coalmine_cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match run(Cli::parse()).await {
        Ok(out) => {
            if !out.is_empty() {
                println!("{}", out.trim_end());
            }
        }
        Err(e) => {
            eprintln!("coalmine: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
