//! The filter's request path without Envoy: the pure work one request costs
//! in the filter, in the filter's order — find the deployment, take the split
//! in force, draw the role, class the outcome, record the statistics, and
//! every thousand requests drain a report as a sync would. (The split table
//! is taken in from shared data on the sync tick, not per request.)
//!
//! `coalmine-request-path N` runs N requests. `make bench` counts its
//! instructions under callgrind for N and 2N; the difference divided by N is
//! the per-request cost, free of start-up work. The host calls themselves
//! (headers, properties, metrics) are Envoy's side and are not counted here.

use coalmine_protocol::Outcome;
use coalmine_protocol::PluginConfig;
use coalmine_protocol::active::ActiveSplits;
use coalmine_protocol::outputs::Seen;
use coalmine_protocol::routing::{find_match, point_from_draw, role_at};
use coalmine_protocol::stats::{FinishedRequest, PendingReports};
use std::hint::black_box;

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("usage: coalmine-request-path <requests>"))?;
    let plugin = coalmine_e2e::EnvoyConfig::shipped("envoy.yaml")?.shipped_plugin_config()?;
    let config = PluginConfig::parse(plugin.to_string().as_bytes())?;
    let splits = ActiveSplits::from_static(&config.deployments);
    let mut pending = PendingReports::default();
    // A fixed xorshift stream stands in for the host's entropy.
    let mut draw: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut reports = 0usize;
    for i in 0..n {
        let path: &[u8] = black_box(b"/predict/heart");
        let authority: &[u8] = black_box(b"models.example.com");
        let Some(index) = find_match(
            config.deployments.iter().map(|d| &d.matcher),
            path,
            Some(authority),
        ) else {
            continue;
        };
        let Some(split) = splits.get(index).cloned() else {
            continue;
        };
        draw ^= draw << 13;
        draw ^= draw >> 7;
        draw ^= draw << 17;
        let role = role_at(point_from_draw(draw), split.effective_bps());
        let outcome = Outcome::classify(black_box(200), black_box(b"via_upstream"));
        if let Some(target) = split.target(role) {
            let request = FinishedRequest {
                outcome,
                latency_us: 1_500 + (draw % 2_000),
                outputs: Seen::NotRead,
            };
            pending.record(index, role, &target.version, &[], request);
        }
        if i % 1_000 == 999 {
            reports += pending
                .drain(
                    |d| {
                        config
                            .deployments
                            .get(d)
                            .map(|d| (d.name.as_str(), &[][..]))
                    },
                    |_, _, _| true,
                )
                .len();
        }
    }
    println!("{n} requests, {reports} reports");
    Ok(())
}
