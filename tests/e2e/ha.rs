//! High availability on PostgreSQL, on real processes: a real PostgreSQL,
//! two controllers sharing it, Envoys whose controller cluster lists both
//! with active health checks on `/readyz` (`envoy/envoy-ha.yaml`). The
//! leader is killed, frozen past its lease, and the database restarted
//! under load.

use anyhow::{Context as _, Result, bail, ensure};
use coalmine_client::Action;
use coalmine_client::types::StoredEvent;
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, INTERVAL_MS, Load, Postgres, Upstream,
    canary_traffic_stops, first_canary_response, is_canary, kinds, plugin, poll,
};
use serde_json::json;
use std::time::{Duration, Instant};

/// The proxies' lease: longer than any takeover here.
const LEASE_MS: u64 = 30_000;
/// The leader's lease.
const LEADER_LEASE_MS: u64 = 3_000;

/// Two controllers on one database, the model's two versions, and Envoys
/// syncing with whichever leads.
struct Replicas {
    pg: Postgres,
    controllers: [ControllerProc; 2],
    v1: Upstream,
    v2: Upstream,
}

impl Replicas {
    async fn start(db: &str) -> Result<Replicas> {
        let pg = Postgres::start().await?;
        let url = pg.database(db)?;
        let lease = LEADER_LEASE_MS.to_string();
        let args = ["--leader-lease-ms", lease.as_str()];
        let a = ControllerProc::start_on(&url, LEASE_MS, &args).await?;
        let b = ControllerProc::start_replica(&a, &url, &args).await?;
        Ok(Replicas {
            pg,
            controllers: [a, b],
            v1: Upstream::start("heart-v1").await?,
            v2: Upstream::start("heart-v2").await?,
        })
    }

    /// Waits until exactly one replica is ready (leads); returns its index.
    async fn leader(&self, timeout: Duration) -> Result<usize> {
        poll("one replica to lead", timeout, || async {
            let mut ready = Vec::new();
            for (i, c) in self.controllers.iter().enumerate() {
                // A frozen replica does not answer: it is not ready.
                let now = tokio::time::timeout(Duration::from_millis(500), c.client().readyz());
                if c.pid().is_some() && matches!(now.await, Ok(Ok(()))) {
                    ready.push(i);
                }
            }
            Ok(match ready[..] {
                [one] => Some(one),
                _ => None,
            })
        })
        .await
    }

    async fn envoy(&self, node: &str) -> Result<Envoy> {
        let addrs = [self.controllers[0].addr, self.controllers[1].addr];
        let config = EnvoyConfig::shipped("envoy-ha.yaml")?
            .upstream("heart-v1", self.v1.addr)?
            .upstream("heart-v2", self.v2.addr)?
            .upstreams("coalmine_controller", &addrs)?
            .controller_tls(self.controllers[0].ca_file())?
            .plugin_config(&plugin(LEASE_MS)?)?;
        Envoy::start_as(config, node).await
    }

    /// Once one leads: the canary, `n` proxies, 40 requests/s through
    /// each until their canary traffic flows and the leader has their
    /// reports. Returns the leader, the proxies and their loads.
    async fn canary_under_load(&self, n: usize) -> Result<(usize, Vec<Envoy>, Vec<Load>)> {
        let leader = self.leader(Duration::from_secs(20)).await?;
        self.canary(leader).await?;
        let mut proxies = Vec::new();
        for i in 0..n {
            proxies.push(self.envoy(&format!("proxy-{i}")).await?);
        }
        let loads: Vec<Load> = proxies
            .iter()
            .map(|p| Load::start(p.url("/predict/heart"), 40))
            .collect();
        for load in &loads {
            first_canary_response(load, Instant::now()).await?;
        }
        reports_reach(self, leader, Duration::from_secs(10)).await?;
        Ok((leader, proxies, loads))
    }

    /// heart-prod with a canary of v2 at 20 %, through the leader.
    async fn canary(&self, leader: usize) -> Result<()> {
        let c = &self.controllers[leader];
        c.heart_prod(json!({"check_interval_seconds": 1, "min_requests": 20}))
            .await?;
        c.start_canary(Some(20.0)).await?;
        Ok(())
    }
}

/// Every event once: ids 1, 2, … without a gap or a repeat.
fn contiguous(events: &[StoredEvent]) -> Result<()> {
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = (1..=ids.len() as i64).collect();
    ensure!(ids == expected, "event ids not contiguous: {ids:?}");
    Ok(())
}

fn count(events: &[StoredEvent], kind: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event.kind.as_str() == kind)
        .count()
}

/// Waits until the proxies' reports reach replica `i` (it counts canary
/// requests it was sent since it took over).
async fn reports_reach(r: &Replicas, i: usize, timeout: Duration) -> Result<()> {
    let c = &r.controllers[i];
    poll(
        "the proxies to sync with the new leader",
        timeout,
        || async {
            Ok(match c.client().health("heart-prod").await {
                Ok(h) => (h.canary.requests > 0 && h.baseline.requests > 0).then_some(()),
                Err(_) => None,
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_hands_the_canary_to_the_other_replica() -> Result<()> {
    let mut r = Replicas::start("ha_kill").await?;
    let (first, _proxies, loads) = r.canary_under_load(3).await?;

    // kill -9 the leader.
    r.controllers[first].kill9();
    let killed = Instant::now();
    let other = 1 - first;
    let next = r.leader(Duration::from_millis(LEADER_LEASE_MS * 3)).await?;
    ensure!(next == other, "replica {next} leads, not {other}");
    let takeover = killed.elapsed();
    println!(
        "takeover: replica {other} leads {:.2} s after the leader was killed (leader lease {} ms)",
        takeover.as_secs_f64(),
        LEADER_LEASE_MS
    );
    ensure!(
        takeover <= Duration::from_millis(LEADER_LEASE_MS + 300),
        "took {takeover:?}"
    );
    // The proxies follow it; meanwhile they kept their split.
    reports_reach(&r, other, Duration::from_secs(10)).await?;
    let followed = killed.elapsed();
    println!(
        "proxies syncing with the new leader {:.2} s after the kill",
        followed.as_secs_f64()
    );
    for load in &loads {
        ensure!(
            load.since(killed).iter().any(is_canary),
            "a proxy stopped sending the canary traffic during the takeover"
        );
    }

    // The canary starts failing: the new leader rolls it back.
    r.v2.fail_every(1);
    let failed = Instant::now();
    for load in &loads {
        canary_traffic_stops(load, Duration::from_secs(1), 20, Duration::from_secs(20)).await?;
    }
    println!(
        "the failing canary rolled back by the new leader: every proxy at 0 % after {:.1} s",
        failed.elapsed().as_secs_f64()
    );
    let api = r.controllers[other].client();
    let d = api.deployment("heart-prod").await?;
    ensure!(d.canary.is_none(), "canary still on: {d:?}");
    let events = api.events("heart-prod", None, None).await?;
    println!("timeline: {:?}", kinds(&events));
    contiguous(&events)?;
    for kind in [
        "deployment_created",
        "canary_started",
        "auto_rollback_triggered",
        "rolled_back",
    ] {
        ensure!(count(&events, kind) == 1, "{kind}: {:?}", kinds(&events));
    }
    ensure!(
        count(&events, "version_registered") == 2,
        "{:?}",
        kinds(&events)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_past_its_lease_cannot_write_when_it_wakes() -> Result<()> {
    let mut r = Replicas::start("ha_freeze").await?;
    let (first, _proxies, _loads) = r.canary_under_load(1).await?;

    // Freeze the leader past its lease; the other takes over and acts.
    let old = &r.controllers[first];
    let other = 1 - first;
    old.freeze()?;
    let frozen = Instant::now();
    let next = r.leader(Duration::from_millis(LEADER_LEASE_MS * 3)).await;
    let next = match next {
        Ok(n) => n,
        Err(e) => {
            old.thaw()?;
            bail!("{e}");
        }
    };
    ensure!(next == other, "replica {next} leads");
    println!(
        "replica {other} leads {:.2} s after the leader froze",
        frozen.elapsed().as_secs_f64()
    );
    let api = r.controllers[other].client();
    reports_reach(&r, other, Duration::from_secs(10)).await?;
    api.set_traffic("heart-prod", 5.0).await?;
    api.act(
        "heart-prod",
        Action::Pause,
        Some("held at 5 % by the new leader".into()),
    )
    .await?;
    let before = api.events("heart-prod", None, None).await?;

    // An operator's call reaches the frozen replica; then it wakes.
    let late = {
        let client = old.client().clone();
        tokio::spawn(async move { client.set_traffic("heart-prod", 50.0).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.thaw()?;
    let answer = tokio::time::timeout(Duration::from_secs(10), late)
        .await
        .context("the woken replica's answer")??;
    let refused = answer
        .err()
        .context("the woken replica changed the split")?;
    ensure!(refused.status() == Some(503), "{refused}");
    println!("the woken replica refused the call: {refused}");
    // It follows, naming the leader.
    let leader = r.controllers[other].url("");
    let message = poll(
        "the old leader to follow, naming the new one",
        Duration::from_secs(10),
        || async {
            Ok(match old.client().deployment("heart-prod").await {
                Err(e) if e.status() == Some(503) && e.to_string().contains(&leader) => {
                    Some(e.to_string())
                }
                _ => None,
            })
        },
    )
    .await?;
    println!("the old leader follows: {message}");
    ensure!(
        old.client().readyz().await.is_err(),
        "the old leader is still ready"
    );
    let log = old.log();
    if log.contains("does not hold the leader's lease") {
        println!("the woken replica's write was fenced by the database");
    }

    // Nothing was overwritten: the database holds the new leader's state.
    let d = api.deployment("heart-prod").await?;
    let canary = d.canary.as_ref().context("no canary")?;
    ensure!(canary.paused, "{d:?}");
    ensure!(canary.percent == 5.0, "canary at {}", canary.percent);
    let after = api.events("heart-prod", None, None).await?;
    contiguous(&after)?;
    ensure!(
        after.len() == before.len(),
        "events written after the takeover by the old leader: {:?}",
        kinds(&after[before.len()..])
    );

    // A clean stop (SIGTERM) gives the lease up: the woken replica leads
    // well within a lease.
    r.controllers[other]
        .terminate(Duration::from_secs(15))
        .await?;
    let stopped = Instant::now();
    let next = r.leader(Duration::from_millis(LEADER_LEASE_MS)).await?;
    ensure!(next == first, "replica {next} leads");
    println!(
        "after a clean stop of the leader, replica {first} leads {:.2} s later",
        stopped.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_recovers_without_an_operator() -> Result<()> {
    let mut r = Replicas::start("ha_restart").await?;
    let (_leader, _proxies, loads) = r.canary_under_load(2).await?;

    // The database goes away for longer than the leader's lease.
    r.pg.stop().await?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(LEADER_LEASE_MS + 2 * INTERVAL_MS)).await;
    let down = stopped.elapsed();
    // Meanwhile the proxies keep their split (their own lease is longer),
    // and every request is answered.
    for load in &loads {
        let during = load.since(stopped);
        ensure!(during.iter().any(is_canary), "a proxy dropped the canary");
        ensure!(
            during.iter().all(|s| s.status == 200),
            "requests failed while the database was down"
        );
    }
    r.pg.start_again().await?;
    println!("PostgreSQL was down {:.1} s", down.as_secs_f64());
    let leader = r.leader(Duration::from_secs(20)).await?;
    reports_reach(&r, leader, Duration::from_secs(15)).await?;
    println!(
        "replica {leader} leads again, with reports, {:.1} s after the database came back",
        (stopped.elapsed() - down).as_secs_f64()
    );

    // Decisions resumed: a failing canary is rolled back.
    r.v2.fail_every(1);
    for load in &loads {
        canary_traffic_stops(load, Duration::from_secs(1), 20, Duration::from_secs(20)).await?;
    }
    let api = r.controllers[leader].client();
    let events = api.events("heart-prod", None, None).await?;
    contiguous(&events)?;
    ensure!(count(&events, "rolled_back") == 1, "{:?}", kinds(&events));
    let d = api.deployment("heart-prod").await?;
    ensure!(d.canary.is_none(), "{d:?}");
    Ok(())
}
