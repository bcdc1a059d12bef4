use super::*;
use crate::PluginConfig;
use crate::sync::SyncRequest;

fn controller() -> ControllerConfig {
    PluginConfig::parse(
        br#"{"controller":{"cluster":"ctl","path":"/sync","interval_ms":1000,"timeout_ms":500,"lease_ms":30000},
             "deployments":[{"name":"a","match":{"path_prefix":"/a"}}]}"#,
    )
    .unwrap()
    .controller
    .unwrap()
}

fn machine(now_ms: u64) -> SyncLoop {
    SyncLoop::new(&controller(), "p".into(), "i".into(), now_ms)
}

fn response(epoch: u64, lease_ms: u64) -> SyncResponse {
    SyncResponse {
        table: SplitTable {
            epoch,
            deployments: vec![],
        },
        lease_ms,
    }
}

/// What `send` handed to the host.
#[derive(Debug)]
struct Sent {
    path: String,
    request: SyncRequest,
    body: Vec<u8>,
    timeout: Duration,
}

fn send(
    m: &mut SyncLoop,
    call: Call,
    epoch: u64,
    token: Result<u32, &str>,
) -> (Sent, Option<Failure>) {
    let mut sent = None;
    let result = m.send(call, epoch, Vec::new, |r| {
        sent = Some(Sent {
            path: r.path.clone(),
            request: serde_json::from_slice(r.body).unwrap(),
            body: r.body.to_vec(),
            timeout: r.timeout,
        });
        token.map_err(str::to_string)
    });
    (sent.unwrap(), result.err())
}

fn accepted(answer: Answer) -> Accepted {
    match answer {
        Answer::Accepted(a) => a,
        other => panic!("not accepted: {other:?}"),
    }
}

#[test]
fn hold_ends_before_the_next_tick() {
    assert_eq!(hold_ms(1000, 0), 900);
    assert_eq!(hold_ms(1000, 350), 550);
    // Too close to the next tick, or past it: an ordinary call.
    assert_eq!(hold_ms(1000, 850), 0);
    assert_eq!(hold_ms(1000, 5000), 0);
    assert_eq!(hold_ms(100, 0), 0);
    assert_eq!(hold_ms(3_600_000, 0), MAX_WAIT_MS);
}

#[test]
fn a_tick_sends_a_call_held_until_shortly_before_the_next() {
    let mut m = machine(10_000);
    let tick = m.tick(10_000, None);
    assert!(tick.lease.is_none() && tick.lost.is_none());
    let (sent, failure) = send(&mut m, tick.call.unwrap(), 0, Ok(7));
    assert_eq!(failure, None);
    assert_eq!(sent.path, "/sync?wait_ms=900");
    assert_eq!(sent.timeout, Duration::from_millis(500 + 900));
    assert_eq!((sent.request.seq, sent.request.epoch), (1, 0));
    assert_eq!(sent.request.proxy, "p");
}

#[test]
fn a_call_in_flight_is_waited_for_until_it_is_lost() {
    let mut m = machine(10_000);
    let call = m.tick(10_000, None).call.unwrap();
    send(&mut m, call, 0, Ok(7));
    // Timeout + interval + hold = 2400 ms before it counts as lost.
    for now in [11_000, 12_000, 12_399] {
        let tick = m.tick(now, None);
        assert!(tick.call.is_none() && tick.lost.is_none(), "{now}");
    }
    let tick = m.tick(12_400, None);
    assert_eq!(
        tick.lost,
        Some(Failure {
            reason: "no answer".into(),
            first: true,
            dropped_report: false,
        })
    );
    let (again, _) = send(&mut m, tick.call.unwrap(), 0, Ok(8));
    assert_eq!(again.request.seq, 1, "the lost report goes again");
    // The lost call's late answer is not the call in flight.
    assert!(matches!(
        m.answer(7, 12_500, || Ok(response(1, 30_000))),
        Answer::Stale
    ));
    assert!(matches!(
        m.answer(8, 12_500, || Ok(response(1, 30_000))),
        Answer::Accepted(_)
    ));
    assert!(matches!(
        m.answer(8, 12_600, || panic!("answered already")),
        Answer::Stale
    ));
}

#[test]
fn failures_keep_the_report_and_only_the_first_of_a_run_is_news() {
    let mut m = machine(0);
    let call = m.tick(1_000, None).call.unwrap();
    let (first, failure) = send(&mut m, call, 0, Err("cannot call cluster"));
    assert_eq!(
        failure,
        Some(Failure {
            reason: "cannot call cluster".into(),
            first: true,
            dropped_report: false,
        })
    );
    let call = m.tick(2_000, None).call.unwrap();
    let (second, failure) = send(&mut m, call, 3, Ok(1));
    assert_eq!(second.body, first.body, "resent byte for byte");
    assert_eq!(failure, None);
    let refused = m.answer(1, 2_100, || {
        Err(Unanswered {
            reason: "controller answered 503".into(),
            refused_report: false,
        })
    });
    let Answer::Refused(failure) = refused else {
        panic!("{refused:?}")
    };
    assert!(!failure.first, "still the same run of failures");
    assert_eq!(failure.reason, "controller answered 503");

    let call = m.tick(3_000, None).call.unwrap();
    let (third, _) = send(&mut m, call, 3, Ok(2));
    assert_eq!(third.body, first.body);
    let a = accepted(m.answer(2, 3_100, || Ok(response(3, 30_000))));
    assert_eq!(a.restored_seq, Some(1), "restored, said once");
    // Acknowledged: the next report is a new one, with the epoch in force.
    let call = m.tick(4_000, None).call.unwrap();
    let (fourth, _) = send(&mut m, call, 3, Ok(3));
    assert_eq!((fourth.request.seq, fourth.request.epoch), (2, 3));
    let a = accepted(m.answer(3, 4_100, || Ok(response(3, 30_000))));
    assert_eq!(a.restored_seq, None);
    // A new run of failures is news again.
    let call = m.tick(5_000, None).call.unwrap();
    let (_, failure) = send(&mut m, call, 3, Err("down"));
    assert!(failure.unwrap().first);
}

#[test]
fn an_early_answer_is_followed_by_a_held_call_at_most_four_per_tick() {
    let mut m = machine(0);
    let mut call = m.tick(10_000, None).call.unwrap();
    let mut holds = vec![];
    for token in 1..10 {
        let (sent, _) = send(&mut m, call, 0, Ok(token));
        holds.push(sent.path);
        let a = accepted(m.answer(token, 10_000 + 10 * u64::from(token), || {
            Ok(response(u64::from(token), 30_000))
        }));
        match a.again {
            Some(next) => call = next,
            None => break,
        }
    }
    assert_eq!(
        holds,
        [
            "/sync?wait_ms=900",
            "/sync?wait_ms=890",
            "/sync?wait_ms=880",
            "/sync?wait_ms=870"
        ]
    );
    // The next tick starts a fresh allowance.
    let call = m.tick(11_000, None).call.unwrap();
    send(&mut m, call, 4, Ok(20));
    assert!(
        accepted(m.answer(20, 11_010, || Ok(response(5, 30_000))))
            .again
            .is_some()
    );
}

#[test]
fn an_answer_too_close_to_the_next_tick_waits_for_it() {
    let mut m = machine(0);
    let call = m.tick(10_000, None).call.unwrap();
    send(&mut m, call, 0, Ok(1));
    let a = accepted(m.answer(1, 10_850, || Ok(response(1, 30_000))));
    assert!(a.again.is_none());
    assert!(m.tick(11_000, None).call.is_some());
}

#[test]
fn the_lease_expires_without_a_sync_and_an_answer_renews_it() {
    let mut m = machine(0);
    assert_eq!(m.tick(30_000, None).lease, None);
    let tick = m.tick(30_001, None);
    assert_eq!(tick.lease, Some(LeaseChange::Expired));
    send(&mut m, tick.call.unwrap(), 0, Ok(1));
    // The controller's lease is shorter than the configured one: it wins.
    let a = accepted(m.answer(1, 30_500, || Ok(response(2, 10_000))));
    assert_eq!(a.lease_until_ms, 40_500);
    assert_eq!(a.lease, Some(LeaseChange::Renewed));
    assert_eq!(a.table.epoch, 2);
    // Another worker's renewal, seen in shared data on the tick.
    assert_eq!(
        m.tick(40_501, Some(40_500)).lease,
        Some(LeaseChange::Expired)
    );
    assert_eq!(
        m.tick(41_000, Some(60_000)).lease,
        Some(LeaseChange::Renewed)
    );
    // A longer lease from the controller is capped by the configured one.
    let tick = m.tick(45_000, Some(60_000));
    send(&mut m, tick.call.unwrap(), 2, Ok(2));
    let a = accepted(m.answer(2, 45_100, || Ok(response(2, 120_000))));
    assert_eq!(a.lease_until_ms, 75_100);
}

#[test]
fn a_report_the_controller_refuses_is_dropped_not_sent_forever() {
    let mut m = machine(0);
    let call = m.tick(1_000, None).call.unwrap();
    let (first, _) = send(&mut m, call, 0, Ok(1));
    let refused = m.answer(1, 1_100, || {
        parse_answer(Some("400"), || panic!("not read"))
    });
    let Answer::Refused(failure) = refused else {
        panic!("{refused:?}")
    };
    assert!(failure.dropped_report && failure.first, "{failure:?}");
    let call = m.tick(2_000, None).call.unwrap();
    let (next, _) = send(&mut m, call, 0, Ok(2));
    assert_eq!(
        next.request.seq,
        first.request.seq + 1,
        "a new report, not the refused one"
    );
    // The lease is not renewed by a refusal: it runs out unless a report gets through.
    let ok = m.answer(2, 2_100, || Ok(response(1, 30_000)));
    assert!(matches!(ok, Answer::Accepted(_)));
}

#[test]
fn answers_are_parsed_strictly() {
    let good = serde_json::to_vec(&response(4, 30_000)).unwrap();
    assert_eq!(
        parse_answer(Some("200"), || good.clone()).unwrap(),
        response(4, 30_000)
    );
    let unavailable = parse_answer(Some("503"), || panic!("not read")).unwrap_err();
    assert_eq!(unavailable.reason, "controller answered 503");
    assert!(!unavailable.refused_report, "retried");
    let none = parse_answer(None, || panic!("not read")).unwrap_err();
    assert_eq!(none.reason, "no response (timeout or connection failure)");
    for status in ["400", "413", "422"] {
        let refused = parse_answer(Some(status), || panic!("not read")).unwrap_err();
        assert!(refused.refused_report, "{status}");
    }
    let garbage = parse_answer(Some("200"), || b"{not json".to_vec())
        .unwrap_err()
        .reason;
    assert!(
        garbage.starts_with("response does not parse: "),
        "{garbage}"
    );
    // A newer controller's field is ignored, not a failure.
    let newer = br#"{"table":{"epoch":1,"deployments":[],"shard":7},"lease_ms":1000,"surprise":1}"#;
    assert_eq!(
        parse_answer(Some("200"), || newer.to_vec())
            .unwrap()
            .lease_ms,
        1000
    );
    let bad_target = br#"{"table":{"epoch":1,"deployments":[{"name":"d","baseline":{"version":"v 1","cluster":"c"}}]},"lease_ms":1}"#;
    let invalid = parse_answer(Some("200"), || bad_target.to_vec())
        .unwrap_err()
        .reason;
    assert!(invalid.contains("baseline version"), "{invalid}");
}
