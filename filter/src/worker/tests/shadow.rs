//! Copies to a shadow: which requests are copied, what a copy carries,
//! how its answer is compared with the user's, and the bounds.

use super::*;
use crate::shadow::ShadowAnswer;
use coalmine_protocol::shadow::{SHADOW_HEADER, ShadowSplit};

/// `heart` reading two fields of `sample` % of its answers, with a canary
/// at `percent` and (once [`shadowed`]) v3 as its shadow.
fn shadow_worker(percent: f64, sample: f64, limits: &str) -> Worker<Recorded> {
    let json = format!(
        r#"{{"headers":{{"tester_override":{{"header":"x-coalmine-tester","secret":"{SECRET}"}}}},
            "shadow":{{{limits}}},
            "deployments":[{{"name":"heart","match":{{"path_prefix":"/predict/heart"}},
            "static":{{"baseline":{{"version":"v1","cluster":"heart-v1"}},
                       "canary":{{"version":"v2","cluster":"heart-v2"}},"canary_percent":{percent}}},
            "outputs":{{"fields":[{{"name":"prediction","pointer":"/prediction","kind":"class"}},
              {{"name":"probability","pointer":"/probability","kind":"score","min":0,"max":1}}],
              "sample_percent":{sample}}}}}]}}"#
    );
    let config = PluginConfig::parse(json.as_bytes()).unwrap();
    let mut w = Worker::new(config, Recorded::default()).unwrap();
    shadowed(&mut w, percent, 10_000);
    w.metrics.0.take();
    w
}

/// Puts in force a table with v3 as the shadow of `shadow_bps`.
fn shadowed(w: &mut Worker<Recorded>, percent: f64, shadow_bps: u16) {
    let mut split = w.config.deployments[0].static_split.clone().unwrap();
    split.canary_bps = Bps::from_percent(percent).unwrap();
    split.shadow = Some(ShadowSplit {
        target: Target {
            version: "v3".into(),
            cluster: "heart-v3".into(),
        },
        bps: Bps::new(shadow_bps).unwrap(),
    });
    w.take_answer(SplitTable {
        epoch: w.epoch() + 1,
        deployments: vec![split],
    });
}

fn request(w: &mut Worker<Recorded>, extra: &[(&str, &str)]) -> Routed {
    let mut headers = vec![(":path", "/predict/heart")];
    headers.extend_from_slice(extra);
    route(w, &headers).0.into_routed().unwrap()
}

fn body(b: &str) -> Answer {
    Answer::Body(b.as_bytes().to_vec())
}

fn user_headers() -> Vec<(String, String)> {
    [
        (":method", "POST"),
        (":path", "/predict/heart"),
        (":authority", "models"),
        ("content-length", "2"),
        ("x-coalmine-role", "baseline"),
        ("x-coalmine-cluster", "heart-v1"),
        ("x-user-id", "7"),
    ]
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .to_vec()
}

/// The user's request answered `user`, copied; the copy Envoy would send.
fn copied(w: &mut Worker<Recorded>, user: &str) -> crate::shadow::ShadowCopy {
    let r = request(w, &[]);
    assert!(w.copies(&r));
    let said = w.record(&r, || served(200, 3), body(user));
    w.copy(
        &r,
        Taken::Whole(b"{}".to_vec()),
        || Some(user_headers()),
        said,
    );
    let (copy, timeout) = w.next_copy().unwrap();
    assert_eq!(timeout, std::time::Duration::from_millis(5_000));
    copy
}

fn answer(status: u64, b: &str, now_ms: u64) -> ShadowAnswer {
    ShadowAnswer {
        status,
        body: Some(b.as_bytes().to_vec()),
        now_ns: now_ms * 1_000_000,
    }
}

#[test]
fn only_the_baselines_requests_are_copied_never_a_testers() {
    let mut w = shadow_worker(0.0, 100.0, "");
    assert!(w.shadow_in_force());
    let r = request(&mut w, &[]);
    assert!(w.copies(&r));
    let tester = format!("baseline:{SECRET}");
    let r = request(&mut w, &[("x-coalmine-tester", &tester)]);
    assert!(!w.copies(&r));

    let mut all_canary = shadow_worker(100.0, 100.0, "");
    let r = request(&mut all_canary, &[]);
    assert!(!all_canary.copies(&r));

    let mut none = shadow_worker(0.0, 100.0, "");
    shadowed(&mut none, 0.0, 0);
    assert!(!none.shadow_in_force());
    let r = request(&mut none, &[]);
    assert!(!none.copies(&r));
}

#[test]
fn a_copy_carries_the_users_request_unmarked_by_routing_and_marked_as_a_copy() {
    let mut w = shadow_worker(0.0, 100.0, "");
    let copy = copied(&mut w, r#"{"prediction":1,"probability":0.7}"#);
    assert_eq!(copy.cluster, "heart-v3");
    assert_eq!(copy.version, "v3");
    assert_eq!(copy.body, b"{}");
    let names: Vec<&str> = copy.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [":method", ":path", ":authority", "x-user-id", SHADOW_HEADER]
    );
}

#[test]
fn the_shadows_answer_is_compared_with_the_users_field_by_field() {
    let mut w = shadow_worker(0.0, 100.0, "");
    let agreeing = copied(&mut w, r#"{"prediction":1,"probability":0.70}"#);
    w.copy_sent(agreeing, Some(7), 1_000_000);
    let differing = copied(&mut w, r#"{"prediction":1,"probability":0.70}"#);
    w.copy_sent(differing, Some(8), 1_000_000);
    let failing = copied(&mut w, r#"{"prediction":0,"probability":0.20}"#);
    w.copy_sent(failing, Some(9), 1_000_000);
    assert_eq!(w.copy_answer_limit(7), Some(64 * 1024));
    assert_eq!(w.copy_answer_limit(70), None, "not a copy: the sync's");

    w.copy_answered(7, answer(200, r#"{"prediction":1,"probability":0.73}"#, 3));
    w.copy_answered(8, answer(200, r#"{"prediction":0,"probability":0.30}"#, 5));
    w.copy_answered(9, answer(503, "overloaded", 2));
    assert_eq!(w.copy_answer_limit(7), None, "answered once");

    let reports = w.drain_reports();
    let user = &reports.roles[0];
    assert_eq!(
        user.counts.success, 3,
        "the users' answers are counted as ever"
    );
    let [s] = &reports.shadow[..] else {
        panic!("one shadow report: {:?}", reports.shadow)
    };
    assert_eq!((s.deployment.as_str(), s.version.as_str()), ("heart", "v3"));
    assert_eq!((s.counts.success, s.counts.server_error), (2, 1));
    assert_eq!(s.uncompared, 1);
    let agreement: Vec<(&str, u64, u64)> = s
        .agreement
        .iter()
        .map(|f| (f.field.as_str(), f.compared, f.agreed))
        .collect();
    assert_eq!(agreement, [("prediction", 2, 1), ("probability", 2, 1)]);
    let (_, latency) = s.decode().unwrap();
    assert_eq!(latency.max(), latency.highest_equivalent(4_000));
    assert!(w.drain_reports().shadow.is_empty(), "drained once");
}

#[test]
fn answers_read_only_to_compare_are_not_counted_as_outputs() {
    let mut w = shadow_worker(0.0, 0.0, "");
    let r = request(&mut w, &[]);
    assert!(w.outputs_to_read(&r).is_some(), "read for the comparison");
    let said = w.record(
        &r,
        || served(200, 3),
        body(r#"{"prediction":1,"probability":0.7}"#),
    );
    assert!(said.is_some());
    let not_json = w.record(&r, || served(200, 3), body("not json"));
    assert!(not_json.is_none());
    assert_eq!(
        events(&w),
        [
            Event::Request(0, Role::Baseline, Outcome::Success, 3000),
            Event::Request(0, Role::Baseline, Outcome::Success, 3000),
        ],
        "no output counted, no bad output outside the sampled share"
    );
}

#[test]
fn copies_beyond_the_bound_are_not_even_taken() {
    let mut w = shadow_worker(0.0, 100.0, r#""max_in_flight":2"#);
    let routed: Vec<Routed> = (0..3).map(|_| request(&mut w, &[])).collect();
    let copies: Vec<bool> = routed.iter().map(|r| w.copies(r)).collect();
    assert_eq!(
        copies,
        [true, true, false],
        "the third has no slot: no body kept"
    );
    // A request that went away before it was done gives its slot back.
    w.drop_copy(&routed[0]);
    let r = request(&mut w, &[]);
    assert!(w.copies(&r));
    // Copies waiting and under way hold their slots.
    let whole = || Taken::Whole(Vec::new());
    w.copy(&routed[1], whole(), || Some(user_headers()), None);
    w.copy(&r, whole(), || Some(user_headers()), None);
    let sent = w.next_copy().unwrap().0;
    w.copy_sent(sent, Some(1), 0);
    let next = request(&mut w, &[]);
    assert!(!w.copies(&next), "one waiting and one under way: full");
    let s = &w.drain_reports().shadow[0];
    assert_eq!(s.skipped.busy, 2);
    assert!(s.decode().is_ok());
}

#[test]
fn copies_too_large_incomplete_or_unsendable_are_counted_and_free_their_slot() {
    let mut w = shadow_worker(0.0, 100.0, r#""max_in_flight":1"#);
    let whole = || Taken::Whole(Vec::new());
    for (taken, headers) in [
        (Taken::TooLarge, Some(user_headers())),
        (Taken::Incomplete, Some(user_headers())),
        // A header value that is not UTF-8 cannot be sent.
        (whole(), None),
    ] {
        let r = request(&mut w, &[]);
        assert!(w.copies(&r), "the slot was given back");
        let mut read = false;
        w.copy(
            &r,
            taken,
            || {
                read = true;
                headers
            },
            None,
        );
        assert!(w.next_copy().is_none());
        assert_eq!(
            read,
            w.drain_reports().shadow[0].skipped.refused == 1,
            "headers are read only for a whole request"
        );
    }
    let r = request(&mut w, &[]);
    w.copy(&r, whole(), || Some(user_headers()), None);
    let refused = w.next_copy().unwrap().0;
    w.copy_sent(refused, None, 0);
    let s = &w.drain_reports().shadow[0];
    assert_eq!(s.skipped.refused, 1, "Envoy refused the call");
    let r = request(&mut w, &[]);
    assert!(w.copies(&r), "a refused call frees its slot");
}
