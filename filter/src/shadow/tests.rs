use super::*;
use coalmine_protocol::PluginConfig;

fn fields() -> Vec<OutputField> {
    let json = r#"{"deployments":[{"name":"d","match":{"path_prefix":"/"},
        "outputs":{"fields":[{"name":"label","pointer":"/label","kind":"class"}]},
        "static":{"baseline":{"version":"v1","cluster":"c1"}}}]}"#;
    let config = PluginConfig::parse(json.as_bytes()).unwrap();
    config.deployments[0].outputs.clone().unwrap().fields
}

fn copy(version: &str, user: Option<&str>) -> Copy {
    Copy {
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
        s.enqueue(copy("v3", user), 16, &f);
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
    s.enqueue(copy("v3", None), 16, &[]);
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
    // On a 20 ms tick: once per period.
    let due = (0..100u64).filter(|i| c.due(11_000 + i * 20)).count();
    assert_eq!(due, 2, "over 2 s of 20 ms ticks");
}
