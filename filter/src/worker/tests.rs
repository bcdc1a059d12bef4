//! The worker's decisions, natively: no Envoy, metrics recorded in memory,
//! request headers from a list that also notes which ones were read (each
//! read is a host call on the request path).

use super::*;
use coalmine_protocol::Bps;
use coalmine_protocol::outputs::{FieldValue, Skip};
use coalmine_protocol::routing::sticky_seed;
use std::cell::RefCell;

mod outputs;
mod shadow;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Request(usize, Role, Outcome, u64),
    Output(usize, Role, usize, FieldValue),
    Skipped(usize, Role, Skip),
    TesterOverride(usize),
    Split(usize, u16, u64),
    SyncFailed,
    LeaseExpired,
    ReportDropped,
}

#[derive(Debug, Default)]
struct Recorded(RefCell<Vec<Event>>);

impl Metrics for Recorded {
    fn request(&mut self, deployment: usize, role: Role, outcome: Outcome, latency_us: u64) {
        let e = Event::Request(deployment, role, outcome, latency_us);
        self.0.borrow_mut().push(e);
    }
    fn output(&mut self, deployment: usize, role: Role, field: usize, value: &FieldValue) {
        let e = Event::Output(deployment, role, field, value.clone());
        self.0.borrow_mut().push(e);
    }
    fn output_skipped(&mut self, deployment: usize, role: Role, skip: Skip) {
        self.0
            .borrow_mut()
            .push(Event::Skipped(deployment, role, skip));
    }
    fn tester_override(&mut self, deployment: usize) {
        self.0.borrow_mut().push(Event::TesterOverride(deployment));
    }
    fn split(&self, deployment: usize, canary_bps: u16, epoch: u64) {
        let e = Event::Split(deployment, canary_bps, epoch);
        self.0.borrow_mut().push(e);
    }
    fn sync_failed(&self) {
        self.0.borrow_mut().push(Event::SyncFailed);
    }
    fn lease_expired(&self) {
        self.0.borrow_mut().push(Event::LeaseExpired);
    }
    fn report_dropped(&self) {
        self.0.borrow_mut().push(Event::ReportDropped);
    }
}

const SECRET: &str = "0123456789abcdef";

/// `heart` (sticky, a canary at `percent`) and `fraud` (no canary); with
/// `tester`, the override header is configured.
fn config(percent: f64, tester: bool) -> PluginConfig {
    let tester = if tester {
        format!(r#","tester_override":{{"header":"x-coalmine-tester","secret":"{SECRET}"}}"#)
    } else {
        String::new()
    };
    let json = format!(
        r#"{{"headers":{{"respond_with_role":true{tester}}},"deployments":[
          {{"name":"heart","match":{{"path_prefix":"/predict/heart"}},"sticky_header":"x-user-id",
            "static":{{"baseline":{{"version":"v1","cluster":"heart-v1"}},
                       "canary":{{"version":"v2","cluster":"heart-v2"}},"canary_percent":{percent}}}}},
          {{"name":"fraud","match":{{"path_prefix":"/fraud"}},
            "static":{{"baseline":{{"version":"f1","cluster":"fraud-v1"}}}}}}]}}"#
    );
    PluginConfig::parse(json.as_bytes()).unwrap()
}

fn worker(percent: f64, tester: bool) -> Worker<Recorded> {
    let w = Worker::new(config(percent, tester), Recorded::default()).unwrap();
    w.metrics.0.take();
    w
}

fn events(w: &Worker<Recorded>) -> Vec<Event> {
    w.metrics.0.take()
}

/// Routes a request with these headers; the decision and the names read.
fn route(w: &mut Worker<Recorded>, headers: &[(&str, &str)]) -> (Decision, Vec<String>) {
    let mut read = vec![];
    let decision = w.route(|name| {
        read.push(name.to_string());
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes().to_vec())
    });
    (decision, read)
}

fn role_of(w: &mut Worker<Recorded>, headers: &[(&str, &str)]) -> Option<Role> {
    route(w, headers).0.routed.map(|r| r.role)
}

fn edits(w: &Worker<Recorded>, d: &Decision) -> Vec<(String, Option<String>)> {
    w.request_edits(d)
        .map(|e| match e {
            HeaderEdit::Set(n, v) => (n.to_string(), Some(v.to_string())),
            HeaderEdit::Remove(n) => (n.to_string(), None),
        })
        .collect()
}

fn set(name: &str, value: &str) -> (String, Option<String>) {
    (name.to_string(), Some(value.to_string()))
}

fn removed(name: &str) -> (String, Option<String>) {
    (name.to_string(), None)
}

fn table(epoch: u64, bps: u16) -> SplitTable {
    let mut split = config(0.0, false).deployments[0]
        .static_split
        .clone()
        .unwrap();
    split.canary_bps = Bps::new(bps).unwrap();
    SplitTable {
        epoch,
        deployments: vec![split],
    }
}

fn served(code: u64, duration_ms: u64) -> Finished {
    Finished {
        duration_ns: duration_ms * 1_000_000,
        code,
        details: b"via_upstream".to_vec(),
    }
}

#[test]
fn a_request_of_a_deployment_is_tagged_with_its_role_and_cluster() {
    let mut w = worker(100.0, false);
    let client = [
        (":path", "/predict/heart?x=1"),
        ("x-coalmine-role", "baseline"),
        ("x-coalmine-cluster", "evil"),
    ];
    let (decision, read) = route(&mut w, &client);
    // The client's role and cluster are never read, only overwritten.
    assert_eq!(read, [":path", "x-user-id"]);
    assert_eq!(
        edits(&w, &decision),
        [
            set("x-coalmine-role", "canary"),
            set("x-coalmine-cluster", "heart-v2")
        ]
    );
    let routed = decision.into_routed().unwrap();
    let response: Vec<_> = w.response_headers(&routed).collect();
    assert_eq!(
        response,
        [("x-coalmine-role", "canary"), ("x-coalmine-version", "v2")]
    );
}

#[test]
fn outside_every_deployment_the_role_and_cluster_headers_are_removed() {
    let mut w = worker(100.0, false);
    let (decision, read) = route(
        &mut w,
        &[(":path", "/other"), ("x-coalmine-role", "canary")],
    );
    assert_eq!(read, [":path"]);
    assert!(decision.routed.is_none());
    assert_eq!(
        edits(&w, &decision),
        [removed("x-coalmine-role"), removed("x-coalmine-cluster")]
    );
    // No path at all is outside every deployment too.
    assert!(route(&mut w, &[]).0.routed.is_none());
}

/// With the clients' headers stripped ahead of the filter: a request for
/// the route's default cluster goes out untagged and nothing is removed,
/// a request for any other cluster is tagged as always.
#[test]
fn behind_a_header_strip_only_requests_off_the_default_route_are_tagged() {
    let json = |stripped: bool| {
        format!(
            r#"{{"headers":{{"client_headers_stripped":{stripped}}},"deployments":[
              {{"name":"heart","match":{{"path_prefix":"/predict/heart"}},"default_cluster":"heart-v1",
                "static":{{"baseline":{{"version":"v1","cluster":"heart-v1"}},
                           "canary":{{"version":"v2","cluster":"heart-v2"}},"canary_percent":50}}}}]}}"#
        )
    };
    let e = PluginConfig::parse(json(false).as_bytes()).unwrap_err();
    assert_eq!(e.field, "deployments[0].default_cluster");
    assert!(e.message.contains("client_headers_stripped"), "{e}");
    let config = PluginConfig::parse(json(true).as_bytes()).unwrap();
    let mut w = Worker::new(config, Recorded::default()).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let (decision, _) = route(&mut w, &[(":path", "/predict/heart")]);
        let role = decision.routed.as_ref().unwrap().role;
        let expected = match role {
            Role::Baseline => vec![],
            Role::Canary => vec![
                set("x-coalmine-role", "canary"),
                set("x-coalmine-cluster", "heart-v2"),
            ],
        };
        assert_eq!(edits(&w, &decision), expected);
        // The response names the role and version either way.
        let routed = decision.into_routed().unwrap();
        let response: Vec<_> = w.response_headers(&routed).map(|h| h.0).collect();
        assert_eq!(response, ["x-coalmine-role", "x-coalmine-version"]);
        *seen.entry(role).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Outside the deployment: nothing to remove.
    let (outside, _) = route(&mut w, &[(":path", "/other")]);
    assert!(edits(&w, &outside).is_empty());
    // After a promotion the baseline is another cluster: tagged again.
    w.take_answer(SplitTable {
        epoch: 7,
        deployments: vec![coalmine_protocol::DeploymentSplit {
            name: "heart".into(),
            baseline: coalmine_protocol::Target {
                version: "v2".into(),
                cluster: "heart-v2".into(),
            },
            canary: None,
            canary_bps: Bps::ZERO,
            shadow: None,
        }],
    });
    let (decision, _) = route(&mut w, &[(":path", "/predict/heart")]);
    assert_eq!(
        edits(&w, &decision),
        [
            set("x-coalmine-role", "baseline"),
            set("x-coalmine-cluster", "heart-v2")
        ]
    );
}

/// A first deployment matching every path and host takes every request
/// the filter sees without reading its path: the proxy's routes choose
/// which requests reach the filter.
#[test]
fn a_deployment_of_every_request_reads_no_path() {
    let json = r#"{"deployments":[
      {"name":"heart","match":{"path_prefix":"/"},
       "static":{"baseline":{"version":"v1","cluster":"heart-v1"}}},
      {"name":"fraud","match":{"path_prefix":"/fraud"},
       "static":{"baseline":{"version":"f1","cluster":"fraud-v1"}}}]}"#;
    let mut w = Worker::new(
        PluginConfig::parse(json.as_bytes()).unwrap(),
        Recorded::default(),
    )
    .unwrap();
    let (decision, read) = route(&mut w, &[(":path", "/fraud")]);
    assert!(read.is_empty(), "{read:?}");
    assert_eq!(decision.routed.unwrap().deployment, 0);
    // On a host, or after a narrower first deployment, the path is read.
    for first in [
        r#"{"path_prefix":"/","host":"models"}"#,
        r#"{"path_prefix":"/fraud"}"#,
    ] {
        let json = format!(
            r#"{{"deployments":[{{"name":"a","match":{first},
                 "static":{{"baseline":{{"version":"v1","cluster":"c1"}}}}}},
               {{"name":"b","match":{{"path_prefix":"/"}},
                 "static":{{"baseline":{{"version":"v1","cluster":"c2"}}}}}}]}}"#
        );
        let mut w = Worker::new(
            PluginConfig::parse(json.as_bytes()).unwrap(),
            Recorded::default(),
        )
        .unwrap();
        let (decision, read) = route(&mut w, &[(":path", "/x"), (":authority", "other")]);
        assert_eq!(read[0], ":path", "{first}");
        assert_eq!(decision.routed.unwrap().deployment, 1, "{first}");
    }
}

#[test]
fn the_share_decides_between_baseline_and_canary() {
    let mut none = worker(0.0, false);
    let mut all = worker(100.0, false);
    let mut fraud = worker(100.0, false);
    for _ in 0..200 {
        let heart = [(":path", "/predict/heart")];
        assert_eq!(role_of(&mut none, &heart), Some(Role::Baseline));
        assert_eq!(role_of(&mut all, &heart), Some(Role::Canary));
        // No canary: the baseline, whatever the share says.
        assert_eq!(
            role_of(&mut fraud, &[(":path", "/fraud")]),
            Some(Role::Baseline)
        );
    }
    let mut half = worker(50.0, false);
    let canaries = (0..2_000)
        .filter(|_| role_of(&mut half, &[(":path", "/predict/heart")]) == Some(Role::Canary))
        .count();
    // 50 % of 2000 draws: far more than 5 sigma (±112) away is a broken draw.
    assert!((850..=1_150).contains(&canaries), "{canaries}");
}

#[test]
fn a_sticky_user_keeps_a_role_and_a_ramp_only_moves_users_to_the_canary() {
    let mut w = worker(20.0, false);
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let roles = |w: &mut Worker<Recorded>| -> Vec<Role> {
        users
            .iter()
            .map(|u| role_of(w, &[(":path", "/predict/heart"), ("x-user-id", u)]).unwrap())
            .collect()
    };
    let at_20 = roles(&mut w);
    assert_eq!(roles(&mut w), at_20, "the same users, the same roles");
    let seed = sticky_seed("heart");
    for (u, role) in users.iter().zip(&at_20) {
        let expected = role_at(sticky_point(seed, u.as_bytes()), Bps::new(2000).unwrap());
        assert_eq!(*role, expected, "{u}");
    }
    w.take_answer(table(1, 5000));
    let at_50 = roles(&mut w);
    for (before, after) in at_20.iter().zip(&at_50) {
        assert!(
            !(*before == Role::Canary && *after == Role::Baseline),
            "raising the share moved a user back"
        );
    }
    assert!(
        at_50.iter().filter(|r| **r == Role::Canary).count()
            > at_20.iter().filter(|r| **r == Role::Canary).count()
    );
}

#[test]
fn a_tester_with_the_secret_chooses_the_role_and_the_header_never_goes_upstream() {
    let mut w = worker(0.0, true);
    let forced = format!("canary:{SECRET}");
    let request = [(":path", "/predict/heart"), ("x-coalmine-tester", &forced)];
    let (decision, read) = route(&mut w, &request);
    assert_eq!(read, ["x-coalmine-tester", ":path", "x-user-id"]);
    assert_eq!(
        edits(&w, &decision),
        [
            removed("x-coalmine-tester"),
            set("x-coalmine-role", "canary"),
            set("x-coalmine-cluster", "heart-v2")
        ]
    );
    assert!(decision.routed.as_ref().unwrap().forced);

    // A wrong secret chooses nothing; the header is removed all the same,
    // in every deployment and outside them.
    for path in ["/predict/heart", "/other"] {
        let wrong = [(":path", path), ("x-coalmine-tester", "canary:guess")];
        let (decision, _) = route(&mut w, &wrong);
        assert!(decision.routed.as_ref().is_none_or(|r| !r.forced));
        assert_eq!(edits(&w, &decision)[0], removed("x-coalmine-tester"));
    }
    // The canary of a deployment that has none is not forced.
    let fraud = [(":path", "/fraud"), ("x-coalmine-tester", &forced)];
    let routed = route(&mut w, &fraud).0.routed.unwrap();
    assert!(!routed.forced);
    assert_eq!(routed.role, Role::Baseline);
    // Without the header, nothing to remove.
    let (decision, _) = route(&mut w, &[(":path", "/predict/heart")]);
    assert_eq!(edits(&w, &decision).len(), 2);
}

#[test]
fn without_a_tester_override_configured_the_header_is_not_read() {
    let mut w = worker(0.0, false);
    let forced = format!("canary:{SECRET}");
    let request = [(":path", "/predict/heart"), ("x-coalmine-tester", &forced)];
    let (decision, read) = route(&mut w, &request);
    assert!(!read.contains(&"x-coalmine-tester".to_string()));
    assert_eq!(decision.routed.unwrap().role, Role::Baseline);
}

#[test]
fn the_authority_is_read_only_when_a_deployment_matches_on_host() {
    let json =
        br#"{"deployments":[{"name":"h","match":{"path_prefix":"/","host":"models.example.com"},
        "static":{"baseline":{"version":"v1","cluster":"h1"}}}]}"#;
    let config = PluginConfig::parse(json).unwrap();
    let mut w = Worker::new(config, Recorded::default()).unwrap();
    let (decision, read) = route(
        &mut w,
        &[(":path", "/x"), (":authority", "Models.Example.com:8080")],
    );
    assert_eq!(read, [":path", ":authority"]);
    assert!(decision.routed.is_some());
    assert!(
        role_of(
            &mut w,
            &[(":path", "/x"), (":authority", "other.example.com")]
        )
        .is_none()
    );
}

#[test]
fn the_response_names_nothing_when_respond_with_role_is_off() {
    let mut config = config(100.0, false);
    config.headers.respond_with_role = false;
    let mut w = Worker::new(config, Recorded::default()).unwrap();
    let routed = route(&mut w, &[(":path", "/predict/heart")])
        .0
        .into_routed()
        .unwrap();
    assert_eq!(w.response_headers(&routed).count(), 0);
}

#[test]
fn a_finished_request_is_recorded_in_the_report_and_the_metrics() {
    let mut w = worker(100.0, false);
    let routed = route(&mut w, &[(":path", "/predict/heart")])
        .0
        .into_routed()
        .unwrap();
    w.record(&routed, || served(503, 12), Answer::NotRead);
    let reset = || Finished {
        details: b"upstream_reset_before_response_started{connection_termination}".to_vec(),
        ..Finished::default()
    };
    w.record(&routed, reset, Answer::NotRead);
    assert_eq!(
        events(&w),
        [
            Event::Request(0, Role::Canary, Outcome::ServerError, 12_000),
            Event::Request(0, Role::Canary, Outcome::Reset, 0)
        ]
    );
    let reports = w.drain_reports().roles;
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(
        (r.deployment.as_str(), r.role, r.version.as_str()),
        ("heart", Role::Canary, "v2")
    );
    assert_eq!((r.counts.server_error, r.counts.reset), (1, 1));
    assert!(w.drain_reports().roles.is_empty(), "drained once");
}

#[test]
fn a_testers_request_is_counted_apart_and_its_outcome_never_read() {
    let mut w = worker(0.0, true);
    let forced = format!("canary:{SECRET}");
    let request = [(":path", "/predict/heart"), ("x-coalmine-tester", &forced)];
    let routed = route(&mut w, &request).0.into_routed().unwrap();
    let never = || panic!("a tester's request is not classed");
    w.record(&routed, never, Answer::NotRead);
    assert_eq!(events(&w), [Event::TesterOverride(0)]);
    assert!(w.drain_reports().roles.is_empty());
}

#[test]
fn the_workers_own_answer_is_in_force_at_once_and_not_decoded_again() {
    let mut w = worker(0.0, false);
    assert_eq!(w.epoch(), 0);
    let value = w.take_answer(table(5, 10_000)).unwrap();
    assert_eq!(w.epoch(), 5);
    // Split gauges: heart at 100 %; fraud is not in the table: no split.
    assert_eq!(
        events(&w),
        [Event::Split(0, 10_000, 5), Event::Split(1, 0, 5)]
    );
    assert_eq!(
        role_of(&mut w, &[(":path", "/predict/heart")]),
        Some(Role::Canary)
    );
    assert!(route(&mut w, &[(":path", "/fraud")]).0.routed.is_none());
    // The same epoch again changes nothing and writes nothing.
    assert!(w.take_answer(table(5, 10_000)).is_none());
    // Its own value, found in shared data: skipped by its epoch.
    w.take_shared_table(Some(&value), Some(1));
    assert_eq!(events(&w), []);
    // A damaged value leaves the last good table in force.
    let mut damaged = 6u64.to_le_bytes().to_vec();
    damaged.extend_from_slice(b"garbage");
    w.take_shared_table(Some(&damaged), Some(2));
    assert_eq!((w.epoch(), events(&w)), (5, vec![]));
    assert_eq!(
        role_of(&mut w, &[(":path", "/predict/heart")]),
        Some(Role::Canary)
    );
}

#[test]
fn another_workers_table_is_decoded_once_per_change() {
    let mut w = worker(0.0, false);
    let value = encode_split_table(&table(7, 2_500));
    w.take_shared_table(Some(&value), Some(3));
    assert_eq!(
        events(&w),
        [Event::Split(0, 2_500, 7), Event::Split(1, 0, 7)]
    );
    w.take_shared_table(Some(&value), Some(3));
    w.take_shared_table(None, None);
    assert_eq!(events(&w), []);
}

#[test]
fn when_the_lease_runs_out_every_deployment_routes_to_its_baseline() {
    let mut w = worker(100.0, false);
    w.set_lease_expired(true);
    assert_eq!(events(&w), [Event::Split(0, 0, 0), Event::Split(1, 0, 0)]);
    w.set_lease_expired(true);
    assert_eq!(events(&w), [], "no change, no gauges");
    assert_eq!(
        role_of(&mut w, &[(":path", "/predict/heart")]),
        Some(Role::Baseline)
    );
    w.lease_expired();
    w.sync_failed();
    assert_eq!(events(&w), [Event::LeaseExpired, Event::SyncFailed]);
    w.set_lease_expired(false);
    assert_eq!(
        events(&w),
        [Event::Split(0, 10_000, 0), Event::Split(1, 0, 0)]
    );
    assert_eq!(
        role_of(&mut w, &[(":path", "/predict/heart")]),
        Some(Role::Canary)
    );
}
