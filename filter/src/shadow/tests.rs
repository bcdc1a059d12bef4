use super::*;
use coalmine_protocol::PluginConfig;

fn fields() -> Vec<OutputField> {
    let json = r#"{"deployments":[{"name":"d","match":{"path_prefix":"/"},
        "outputs":{"fields":[{"name":"label","pointer":"/label","kind":"class"}]},
        "static":{"baseline":{"version":"v1","cluster":"c1"}}}]}"#;
    let config = PluginConfig::parse(json.as_bytes()).unwrap();
    config.deployments[0].outputs.clone().unwrap().fields
}

fn copy(version: &str, user: Option<&str>) -> ShadowCopy {
    ShadowCopy {
        deployment: 0,
        version: version.into(),
        cluster: "c3".into(),
        headers: vec![],
        body: vec![],
        user: user.map(|l| vec![Said::Label(l.into())]),
    }
}

fn answered(status: u64, body: Option<&str>) -> ShadowAnswer {
    ShadowAnswer {
        status,
        body: body.map(|b| b.as_bytes().to_vec()),
        now_ns: 2_000_000,
    }
}

fn report(s: &mut Shadows, fields: &[OutputField], current: &str) -> Vec<ShadowReport> {
    s.drain(|_| Some(("d", fields)), |_, v| v == current)
}

#[test]
fn each_answer_is_judged_on_what_both_sides_said() {
    let f = fields();
    let mut s = Shadows::default();
    let cases = [
        (Some("a"), answered(200, Some(r#"{"label":"a"}"#))),
        (Some("a"), answered(200, Some(r#"{"label":"b"}"#))),
        (Some("a"), answered(200, Some("<html>"))),
        (Some("a"), answered(200, None)),
        (None, answered(200, Some(r#"{"label":"a"}"#))),
        (Some("a"), answered(500, Some(r#"{"label":"a"}"#))),
        (Some("a"), answered(0, None)),
    ];
    for (token, (user, answer)) in (1u32..).zip(cases) {
        assert!(s.reserve(16));
        s.enqueue(copy("v3", user));
        let c = s.next_to_send().unwrap();
        s.sending(token, c, 1_000_000);
        s.answered(token, answer, &f);
    }
    assert_eq!(s.in_flight(), 0);
    let [r] = &report(&mut s, &f, "v3")[..] else {
        panic!("one report")
    };
    assert_eq!(
        (
            r.counts.success,
            r.counts.bad_output,
            r.counts.server_error,
            r.counts.reset
        ),
        (4, 1, 1, 1)
    );
    assert_eq!((r.agreement[0].compared, r.agreement[0].agreed), (2, 1));
    assert_eq!(r.uncompared, 5);
    let (_, latency) = r.decode().unwrap();
    assert_eq!(latency.max(), latency.highest_equivalent(1_000));
}

#[test]
fn without_outputs_only_outcome_and_latency_count() {
    let mut s = Shadows::default();
    assert!(s.reserve(16));
    s.enqueue(copy("v3", None));
    let c = s.next_to_send().unwrap();
    s.sending(5, c, 0);
    s.answered(5, answered(200, Some("anything")), &[]);
    let r = &report(&mut s, &[], "v3")[0];
    assert_eq!((r.counts.success, r.uncompared), (1, 0));
    assert!(r.agreement.is_empty());
}

#[test]
fn a_former_shadows_tally_goes_once_reported() {
    let f = fields();
    let mut s = Shadows::default();
    s.skipped(0, "v3", &f, ShadowSkip::Busy);
    s.skipped(0, "v4", &f, ShadowSkip::Busy);
    assert_eq!(report(&mut s, &f, "v4").len(), 2);
    s.skipped(0, "v4", &f, ShadowSkip::Busy);
    let again = report(&mut s, &f, "v4");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].version, "v4");
    assert_eq!(s.tallies.len(), 1, "v3's tally is gone, v4's kept");
}

#[test]
fn regular_work_keeps_its_period_on_a_faster_tick() {
    let mut c = Cadence::new(Duration::from_millis(1000));
    assert!(c.due(10_000));
    // A timer firing a little early at the period itself still counts.
    assert!(c.due(10_990));
    // On a 20 ms tick: once per period, a period apart.
    let ticks: Vec<u64> = (1..=500u64).map(|i| 10_990 + i * 20).collect();
    let due: Vec<u64> = ticks.into_iter().filter(|&t| c.due(t)).collect();
    assert_eq!(due.len(), 10, "over 10 s of 20 ms ticks: {due:?}");
    assert!(
        due.windows(2).all(|w| w[1] - w[0] >= 980),
        "a period apart: {due:?}"
    );
    // After a long pause (a stalled worker) it does not catch up in a burst.
    assert!(c.due(60_000));
    assert!(!c.due(60_020));
}

#[test]
fn the_cap_counts_copies_being_taken_waiting_and_under_way() {
    let mut s = Shadows::default();
    assert!(s.reserve(3));
    assert!(s.reserve(3));
    assert!(s.reserve(3));
    assert!(!s.reserve(3), "three taken: the fourth is refused");
    s.release();
    assert!(s.reserve(3), "a slot given back");
    s.enqueue(copy("v3", None));
    let c = s.next_to_send().unwrap();
    s.sending(1, c, 0);
    assert_eq!(s.in_flight(), 3, "one under way, two being taken");
    assert!(!s.reserve(3));
    s.answered(1, answered(200, None), &[]);
    assert!(s.reserve(3));
}

#[test]
fn a_copy_whose_answer_never_comes_is_given_up_as_a_reset() {
    let f = fields();
    let mut s = Shadows::default();
    for token in [1, 2] {
        assert!(s.reserve(16));
        s.enqueue(copy("v3", Some("a")));
        let c = s.next_to_send().unwrap();
        s.sending(token, c, if token == 1 { 0 } else { 5_000_000_000 });
    }
    let timeout = Duration::from_secs(5);
    s.expire(5_900_000_000, timeout, |_| &f);
    assert_eq!(s.in_flight(), 2, "within timeout and grace");
    s.expire(6_100_000_000, timeout, |_| &f);
    assert_eq!(s.in_flight(), 1, "the first given up");
    assert_eq!(s.deployment_of(1), None);
    let r = &report(&mut s, &f, "v3")[0];
    assert_eq!((r.counts.reset, r.uncompared), (1, 1));
}
