use super::*;
use crate::outputs::{FieldKind, OutputField, ScoreBins};

fn fields() -> Vec<OutputField> {
    vec![
        OutputField {
            name: "prediction".into(),
            pointer: "/prediction".into(),
            kind: FieldKind::Class,
        },
        OutputField {
            name: "probability".into(),
            pointer: "/probability".into(),
            kind: FieldKind::Score(ScoreBins {
                min: 0.0,
                max: 1.0,
                bins: 10,
                tolerance: 0.05,
            }),
        },
    ]
}

#[test]
fn classes_agree_when_equal_and_scores_within_the_tolerance() {
    let f = fields();
    let label = |s: &str| Said::Label(s.into());
    assert!(agrees(&f[0], &label("1"), &label("1")));
    assert!(!agrees(&f[0], &label("1"), &label("0")));
    assert!(agrees(&f[1], &Said::Score(0.50), &Said::Score(0.55)));
    assert!(agrees(&f[1], &Said::Score(0.55), &Said::Score(0.50)));
    assert!(!agrees(&f[1], &Said::Score(0.50), &Said::Score(0.5501)));
    // A value of the other kind never agrees.
    assert!(!agrees(&f[0], &label("1"), &Said::Score(1.0)));
    assert!(!agrees(
        &f[1],
        &Said::Score(f64::NAN),
        &Said::Score(f64::NAN)
    ));
}

#[test]
fn a_copy_loses_routing_and_hop_by_hop_headers_and_is_marked() {
    let headers = [
        (":method", "POST"),
        (":path", "/predict/heart"),
        (":authority", "models"),
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("X-Coalmine-Role", "baseline"),
        ("x-coalmine-cluster", "heart-v1"),
        ("x-coalmine-shadow", "0"),
        ("connection", "keep-alive"),
        ("x-user-id", "7"),
    ]
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .to_vec();
    let copy = copy_headers(headers, &["x-coalmine-role", "x-coalmine-cluster"]);
    let names: Vec<&str> = copy.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            ":method",
            ":path",
            ":authority",
            "content-type",
            "x-user-id",
            SHADOW_HEADER
        ]
    );
    assert_eq!(copy.last().map(|(_, v)| v.as_str()), Some("1"));
}

#[test]
fn a_tally_reports_what_it_recorded_and_starts_afresh() {
    let f = fields();
    let mut t = ShadowTally::try_new(f.len()).unwrap();
    assert!(t.is_empty());
    t.record(Outcome::Success, 900, Compared::Fields(&[true, true]));
    t.record(Outcome::Success, 1100, Compared::Fields(&[false, true]));
    t.record(Outcome::ServerError, 50, Compared::Uncompared);
    t.skipped(ShadowSkip::Busy);
    t.skipped(ShadowSkip::TooLarge);
    let r = t.report("heart", "v3", &f);
    assert_eq!(r.counts.success, 2);
    assert_eq!(r.counts.server_error, 1);
    assert_eq!(r.uncompared, 1);
    assert_eq!(
        r.agreement,
        [
            FieldAgreement {
                field: "prediction".into(),
                compared: 2,
                agreed: 1
            },
            FieldAgreement {
                field: "probability".into(),
                compared: 2,
                agreed: 2
            }
        ]
    );
    assert_eq!((r.skipped.busy, r.skipped.too_large), (1, 1));
    let (counts, h) = r.decode().unwrap();
    assert_eq!((counts.total(), h.len()), (3, 3));

    // On the wire and back.
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<ShadowReport>(&json).unwrap(), r);

    t.clear();
    assert!(t.is_empty());
    assert_eq!(t.report("heart", "v3", &f).agreement[0].compared, 0);
}

#[test]
fn reports_that_cannot_be_true_are_refused() {
    let f = fields();
    let mut t = ShadowTally::try_new(f.len()).unwrap();
    t.record(Outcome::Success, 900, Compared::Fields(&[true, true]));
    let good = t.report("heart", "v3", &f);

    let mut more_agreed = good.clone();
    more_agreed.agreement[0].agreed = 2;
    let err = more_agreed.decode().unwrap_err().to_string();
    assert!(err.contains("2 agreed of 1 compared"), "{err}");

    let mut more_compared = good.clone();
    more_compared.agreement[1].compared = 5;
    more_compared.agreement[1].agreed = 5;
    let err = more_compared.decode().unwrap_err().to_string();
    assert!(err.contains("only 1 2xx"), "{err}");

    let mut twice = good.clone();
    twice.agreement[1].field = "prediction".into();
    assert!(twice.decode().unwrap_err().to_string().contains("twice"));

    let mut counts = good.clone();
    counts.counts.reset = 4;
    assert!(matches!(
        counts.decode(),
        Err(ShadowReportError::CountMismatch {
            counts: 5,
            histogram: 1
        })
    ));

    let mut no_version = good;
    no_version.version = String::new();
    assert_eq!(
        no_version.decode().unwrap_err(),
        ShadowReportError::BadId("version")
    );
}

#[test]
fn a_split_table_carries_the_shadow_and_checks_its_target() {
    let table = r#"{"epoch":3,"deployments":[{"name":"d","baseline":{"version":"v1","cluster":"c1"},"canary_bps":0,
        "shadow":{"target":{"version":"v3","cluster":"c3"},"bps":10000}}]}"#;
    let t = crate::SplitTable::decode(table.as_bytes()).unwrap();
    let shadow = t.deployments[0].shadow.as_ref().unwrap();
    assert_eq!(
        (shadow.target.version.as_str(), shadow.bps),
        ("v3", Bps::FULL)
    );
    // A table from a controller without shadows reads as one without.
    let none =
        r#"{"epoch":3,"deployments":[{"name":"d","baseline":{"version":"v1","cluster":"c1"}}]}"#;
    let t = crate::SplitTable::decode(none.as_bytes()).unwrap();
    assert!(t.deployments[0].shadow.is_none());
    let bad = table.replace("\"c3\"", "\"c 3\"");
    let err = crate::SplitTable::decode(bad.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("shadow cluster"), "{err}");
}
