//! The command line: what each `coalmine` command takes.

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "coalmine",
    version,
    about = "Operate coalmine canaries: deployments, versions, traffic, health, events."
)]
pub struct Cli {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The controller.
    #[arg(
        long,
        global = true,
        env = "COALMINE_URL",
        default_value = "http://127.0.0.1:8700"
    )]
    pub url: String,
    /// A PEM file of CA certificates to trust besides the system's roots
    /// (an https:// controller behind a private CA).
    #[arg(long, global = true, env = "COALMINE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Operator token (default: COALMINE_TOKEN, then .coalmine/operator-token).
    #[arg(long, global = true, env = "COALMINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// List, create or show deployments.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// List or register model versions.
    #[command(subcommand)]
    Versions(VersionsCmd),
    /// Start a canary.
    #[command(subcommand)]
    Canary(CanaryCmd),
    /// Copy a share of the baseline's requests to a version that never
    /// answers users, and compare its answers with theirs.
    #[command(subcommand)]
    Shadow(ShadowCmd),
    /// Set the canary's share by hand.
    #[command(subcommand)]
    Traffic(TrafficCmd),
    /// Stop automatic steps (rollback stays armed).
    Pause(Reasoned),
    /// Restart automatic steps.
    Resume(Reasoned),
    /// Make the canary the baseline.
    Promote(Reasoned),
    /// Roll the canary back (or, after a promotion, return to the pinned version).
    Rollback(Reasoned),
    /// Per-role numbers, verdict, recommendation and reasons.
    Status { deployment: String },
    /// The timeline: its newest events, oldest of them first.
    Events {
        deployment: String,
        /// Instead, the events after this id, oldest first.
        #[arg(long)]
        since: Option<i64>,
        /// How many (1-10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Post feedback (labels, outcomes) read as JSON lines,
    /// `{"version": "v2", "value": 1}` each, from stdin or a file.
    Feedback {
        deployment: String,
        /// The metric, as the deployment's policy declares it.
        #[arg(long)]
        metric: String,
        /// Read this file instead of stdin.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Feedback-only token (default: COALMINE_FEEDBACK_TOKEN, else the operator token).
        #[arg(long, env = "COALMINE_FEEDBACK_TOKEN", hide_env_values = true)]
        feedback_token: Option<String>,
    },
    /// A live status view, refreshed in place until interrupted.
    Watch {
        deployment: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// Shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum DeploymentsCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        baseline_version: String,
        #[arg(long)]
        baseline_cluster: String,
        /// Policy JSON, or @file.json.
        #[arg(long)]
        policy: Option<String>,
    },
    Show {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VersionsCmd {
    List {
        deployment: String,
    },
    Register {
        deployment: String,
        version: String,
        #[arg(long)]
        cluster: String,
        /// Metadata JSON object, or @file.json.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Let a rolled-back version be a canary or a shadow again (the
    /// deployment's cooldown still holds).
    Unbar {
        deployment: String,
        version: String,
        /// Why it may be tried again; goes into the timeline.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CanaryCmd {
    Start {
        deployment: String,
        version: String,
        /// Initial share (default: the first step).
        #[arg(long)]
        percent: Option<f64>,
        /// Schedule, e.g. 10,25,50,100.
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<f64>>,
        #[arg(long)]
        bake_seconds: Option<u64>,
        /// A computed ramp instead of --steps and --bake-seconds, as JSON
        /// (or @file.json), e.g.
        /// '{"exponential": {"start": 1, "factor": 2, "every_seconds": 60, "max": 100}}'.
        #[arg(long, conflicts_with_all = ["steps", "bake_seconds"])]
        schedule: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShadowCmd {
    /// Start a shadow, or change the running one's version or share.
    Start {
        deployment: String,
        version: String,
        /// The share of the baseline's requests copied (0 < N ≤ 100; default 100).
        #[arg(long)]
        percent: Option<f64>,
    },
    /// Stop the shadow.
    Stop { deployment: String },
}

#[derive(Subcommand, Debug)]
pub enum TrafficCmd {
    Set {
        deployment: String,
        canary_percent: f64,
    },
}

#[derive(clap::Args, Debug)]
pub struct Reasoned {
    pub deployment: String,
    #[arg(long)]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_start_and_stop_parse() {
        let cli = Cli::try_parse_from([
            "coalmine",
            "shadow",
            "start",
            "heart-prod",
            "v3",
            "--percent",
            "50",
        ])
        .unwrap();
        match cli.command {
            Cmd::Shadow(ShadowCmd::Start {
                deployment,
                version,
                percent,
            }) => assert_eq!(
                (deployment.as_str(), version.as_str(), percent),
                ("heart-prod", "v3", Some(50.0))
            ),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["coalmine", "shadow", "start", "heart-prod", "v3"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Shadow(ShadowCmd::Start { percent: None, .. })
        ));
        let cli = Cli::try_parse_from(["coalmine", "shadow", "stop", "heart-prod"]).unwrap();
        assert!(
            matches!(cli.command, Cmd::Shadow(ShadowCmd::Stop { deployment }) if deployment == "heart-prod")
        );
        assert!(Cli::try_parse_from(["coalmine", "shadow", "start", "heart-prod"]).is_err());
    }
}
