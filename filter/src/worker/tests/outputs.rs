//! Reading answers: only the sampled share, never a tester's request; what
//! an answer read counts, or makes a bad output.

use super::*;

/// `heart` at `percent` reading the prediction and the probability of
/// `sample` of its answers.
fn reading_worker(percent: f64, sample: f64) -> Worker<Recorded> {
    let json = format!(
        r#"{{"deployments":[{{"name":"heart","match":{{"path_prefix":"/predict/heart"}},
            "static":{{"baseline":{{"version":"v1","cluster":"heart-v1"}},
                       "canary":{{"version":"v2","cluster":"heart-v2"}},"canary_percent":{percent}}},
            "outputs":{{"fields":[{{"name":"prediction","pointer":"/prediction","kind":"class"}},
              {{"name":"probability","pointer":"/probability","kind":"score","min":0,"max":1,"bins":10}}],
              "sample_percent":{sample}}}}}]}}"#
    );
    let config = PluginConfig::parse(json.as_bytes()).unwrap();
    let w = Worker::new(config, Recorded::default()).unwrap();
    w.metrics.0.take();
    w
}

fn routed(w: &mut Worker<Recorded>) -> Routed {
    route(w, &[(":path", "/predict/heart")])
        .0
        .into_routed()
        .unwrap()
}

#[test]
fn an_answer_read_counts_its_outputs_or_is_a_bad_output() {
    let mut w = reading_worker(100.0, 100.0);
    let r = routed(&mut w);
    assert!(w.outputs_to_read(&r).is_some());
    let body = |b: &str| Answer::Body(b.as_bytes().to_vec());
    w.record(
        &r,
        || served(200, 3),
        body(r#"{"prediction":1,"probability":0.72}"#),
    );
    w.record(&r, || served(200, 3), body("not json"));
    w.record(&r, || served(200, 3), body(r#"{"prediction":1}"#));
    w.record(&r, || served(200, 3), Answer::Skipped(Skip::Encoded));
    w.record(&r, || served(500, 3), body("an error page"));
    let canary = Role::Canary;
    assert_eq!(
        events(&w),
        [
            Event::Request(0, canary, Outcome::Success, 3000),
            Event::Output(0, canary, 0, FieldValue::Label("1".into())),
            Event::Output(0, canary, 1, FieldValue::Slot(8)),
            Event::Request(0, canary, Outcome::BadOutput, 3000),
            Event::Request(0, canary, Outcome::BadOutput, 3000),
            Event::Request(0, canary, Outcome::Success, 3000),
            Event::Skipped(0, canary, Skip::Encoded),
            Event::Request(0, canary, Outcome::ServerError, 3000),
        ]
    );
    let reports = w.drain_reports().roles;
    let c = &reports[0];
    assert_eq!(
        (c.counts.success, c.counts.bad_output, c.counts.server_error),
        (2, 2, 1)
    );
    assert_eq!(c.outputs.len(), 2);
    assert_eq!(c.outputs[0].counts.total(), 1);
    assert_eq!(c.outputs_skipped.encoded, 1);
    assert!(c.decode().is_ok(), "a report the controller accepts");
}

#[test]
fn only_the_sampled_share_is_read_and_never_a_testers_request() {
    let mut w = reading_worker(50.0, 10.0);
    let read = (0..4000)
        .filter(|_| {
            let r = routed(&mut w);
            w.outputs_to_read(&r).is_some()
        })
        .count();
    assert!((300..500).contains(&read), "{read} of 4000 at 10 %");
    let mut none = reading_worker(50.0, 0.0);
    assert!((0..100).all(|_| {
        let r = routed(&mut none);
        none.outputs_to_read(&r).is_none()
    }));
    // A deployment without outputs never reads (the other tests' config).
    let mut plain = worker(50.0, true);
    let r = route(&mut plain, &[(":path", "/predict/heart")])
        .0
        .into_routed()
        .unwrap();
    assert!(plain.outputs_to_read(&r).is_none());
    let forced = format!("canary:{SECRET}");
    let json = PluginConfig::parse(
        br#"{"headers":{"tester_override":{"header":"x-t","secret":"0123456789abcdef"}},"deployments":[{"name":"heart","match":{"path_prefix":"/"},"static":{"baseline":{"version":"v1","cluster":"c1"},"canary":{"version":"v2","cluster":"c2"}},"outputs":{"fields":[{"name":"p","pointer":"/p","kind":"class"}]}}]}"#,
    )
    .unwrap();
    let mut w = Worker::new(json, Recorded::default()).unwrap();
    let r = route(&mut w, &[(":path", "/"), ("x-t", &forced)])
        .0
        .into_routed()
        .unwrap();
    assert!(w.outputs_to_read(&r).is_none());
}
