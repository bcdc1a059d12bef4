use super::body::Skip;
use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

fn class(name: &str, pointer: &str) -> OutputField {
    OutputField {
        name: name.into(),
        pointer: pointer.into(),
        kind: FieldKind::Class,
    }
}

fn score(name: &str, pointer: &str, min: f64, max: f64, bins: u16) -> OutputField {
    OutputField {
        name: name.into(),
        pointer: pointer.into(),
        kind: FieldKind::Score(ScoreBins {
            min,
            max,
            bins,
            tolerance: 0.05,
        }),
    }
}

fn heart() -> Vec<OutputField> {
    vec![
        class("prediction", "/prediction"),
        score("probability", "/probability", 0.0, 1.0, 10),
    ]
}

#[test]
fn an_answer_gives_a_value_per_field() {
    let body = br#"{"prediction": 1, "probability": 0.83, "model": "v2"}"#;
    assert_eq!(
        read(body, &heart()),
        Ok(vec![FieldValue::Label("1".into()), FieldValue::Slot(9)])
    );
    let labels = [
        (json!("disease"), "disease"),
        (json!(true), "true"),
        (json!(-3), "-3"),
        (json!(18_446_744_073_709_551_615u64), "18446744073709551615"),
    ];
    for (v, want) in labels {
        let body = json!({"prediction": v, "probability": 0.1}).to_string();
        assert_eq!(
            read(body.as_bytes(), &heart()).unwrap()[0],
            FieldValue::Label(want.into())
        );
    }
}

#[test]
fn pointers_follow_rfc_6901() {
    let body = br#"{"out": [{"a/b": {"m~n": "x"}}], "": 7}"#;
    let fields = [
        class("deep", "/out/0/a~1b/m~0n"),
        class("empty_key", "/"),
        class("whole", ""),
    ];
    let got = read(body, &fields[..2]).unwrap();
    assert_eq!(
        got,
        [FieldValue::Label("x".into()), FieldValue::Label("7".into())]
    );
    // The whole answer is an object: not a label.
    assert_eq!(read(body, &fields[2..]), Err(BadOutput::WrongKind(0)));
}

#[test]
fn unusable_answers_say_why() {
    let cases: [(&[u8], BadOutput); 9] = [
        (b"", BadOutput::NotJson),
        (b"   ", BadOutput::NotJson),
        (b"<html>oops</html>", BadOutput::NotJson),
        (
            br#"{"prediction": 1, "probability": 0.5"#,
            BadOutput::NotJson,
        ),
        (br#"{"probability": 0.5}"#, BadOutput::Missing(0)),
        (br#"{"prediction": 1}"#, BadOutput::Missing(1)),
        (
            br#"{"prediction": 0.5, "probability": 0.5}"#,
            BadOutput::WrongKind(0),
        ),
        (
            br#"{"prediction": [1], "probability": 0.5}"#,
            BadOutput::WrongKind(0),
        ),
        (
            br#"{"prediction": 1, "probability": "0.5"}"#,
            BadOutput::WrongKind(1),
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            read(body, &heart()),
            Err(want.clone()),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let null = br#"{"prediction": null, "probability": 0.5}"#;
    assert_eq!(read(null, &heart()), Err(BadOutput::WrongKind(0)));
}

#[test]
fn long_labels_are_cut_at_a_character_boundary() {
    let long = "é".repeat(40); // 80 bytes
    let label = label_of(&json!(long)).unwrap();
    assert!(
        label.len() <= MAX_LABEL_BYTES && label.len() == 64,
        "{}",
        label.len()
    );
    assert!(long.starts_with(&label));
    assert_eq!(metric_label("a.b c/é-_9"), "a_b_c__-_9");
}

#[test]
fn scores_fall_in_equal_bins_with_one_below_and_one_above() {
    let b = ScoreBins {
        min: 0.0,
        max: 1.0,
        bins: 10,
        tolerance: 0.05,
    };
    let slots: Vec<usize> = [-0.1, 0.0, 0.05, 0.1, 0.5, 0.99, 1.0, 1.01, 1e300]
        .iter()
        .map(|&x| b.slot(x))
        .collect();
    assert_eq!(slots, [0, 1, 1, 2, 6, 10, 10, 11, 11]);
    assert_eq!(b.slots(), 12);
    assert_eq!(
        (
            b.slot_label(0),
            b.slot_label(1),
            b.slot_label(10),
            b.slot_label(11)
        ),
        ("below".into(), "01".into(), "10".into(), "above".into())
    );
    assert_eq!(b.slot_range(0), "< 0");
    assert_eq!(b.slot_range(4), "[0.3, 0.4)");
    assert_eq!(b.slot_range(10), "[0.9, 1]");
    assert_eq!(b.slot_range(11), "> 1");
}

#[test]
fn names_and_pointers_are_checked() {
    assert!(check_field_name("probability_2").is_ok());
    for bad in ["", "Prediction", "a.b", "a-b", &"x".repeat(33)] {
        assert!(check_field_name(bad).is_err(), "{bad}");
    }
    for ok in ["", "/", "/a/0", "/a~0b/c~1d"] {
        assert!(check_pointer(ok).is_ok(), "{ok}");
    }
    for bad in ["a", "/a~", "/a~2", &format!("/{}", "x".repeat(300))] {
        assert!(check_pointer(bad).is_err(), "{bad}");
    }
}

#[test]
fn only_plain_2xx_answers_within_the_limit_are_collected() {
    let start = |status: &[u8], enc: Option<&[u8]>, len: Option<&[u8]>| {
        BodyCollector::for_response(Some(status), enc, len, 100).map(|_| ())
    };
    assert_eq!(start(b"200", None, None), Ok(()));
    assert_eq!(start(b"201", Some(b"identity"), Some(b"100")), Ok(()));
    assert_eq!(start(b"200", Some(b" Identity "), None), Ok(()));
    assert_eq!(start(b"404", None, None), Err(None));
    assert_eq!(start(b"500", None, None), Err(None));
    assert_eq!(start(b"2", None, None), Err(None));
    assert_eq!(start(b"200", Some(b"gzip"), None), Err(Some(Skip::Encoded)));
    assert_eq!(
        start(b"200", Some(b"br"), Some(b"5")),
        Err(Some(Skip::Encoded))
    );
    assert_eq!(start(b"200", None, Some(b"101")), Err(Some(Skip::TooLarge)));
    // A length that does not parse is found out while collecting.
    assert_eq!(start(b"200", None, Some(b"lots")), Ok(()));
    assert_eq!(
        BodyCollector::for_response(None, None, None, 100).map(|_| ()),
        Err(None)
    );
}

#[test]
fn a_body_is_collected_chunk_by_chunk_and_dropped_past_the_limit() {
    let mut c = BodyCollector::new(10);
    assert!(c.wants(4));
    assert_eq!(c.push(Some(b"{\"a\""), 4, false), Collected::Partial);
    assert_eq!(
        c.push(Some(b":1}"), 3, true),
        Collected::Done(b"{\"a\":1}".to_vec())
    );

    let mut c = BodyCollector::new(10);
    assert_eq!(c.push(Some(b"0123456"), 7, false), Collected::Partial);
    assert_eq!(c.push(Some(b"7890"), 4, false), Collected::Partial);
    assert!(!c.wants(5), "nothing more is copied once over the limit");
    assert_eq!(c.push(None, 5, true), Collected::Skipped(Skip::TooLarge));

    // An empty body ends collected, and is then not JSON.
    let mut c = BodyCollector::new(10);
    assert!(!c.wants(0));
    assert_eq!(c.push(None, 0, true), Collected::Done(Vec::new()));
}

#[test]
fn a_tally_tracks_sixteen_labels_per_field_and_counts_the_rest_as_other() {
    let fields = heart();
    let mut t = OutputTally::new(&fields);
    for i in 0..20 {
        t.record(&[FieldValue::Label(format!("l{i}")), FieldValue::Slot(3)]);
    }
    t.record(&[FieldValue::Label("l0".into()), FieldValue::Slot(0)]);
    t.skipped(Skip::Encoded);
    let (reports, skips) = t.report(&fields);
    let FieldCounts::Class { labels, other } = &reports[0].counts else {
        panic!("{reports:?}")
    };
    assert_eq!((labels.len(), labels["l0"], *other), (16, 2, 4));
    assert_eq!(reports[1].field, "probability");
    let FieldCounts::Score { counts, min, max } = &reports[1].counts else {
        panic!()
    };
    assert_eq!(
        (counts.len(), counts[3], counts[0], *min, *max),
        (12, 20, 1, 0.0, 1.0)
    );
    assert_eq!(
        skips,
        Skips {
            too_large: 0,
            encoded: 1
        }
    );

    // After a report the counts start afresh, the tracked labels stay.
    t.clear();
    assert!(t.report(&fields).0.is_empty());
    t.record(&[FieldValue::Label("l19".into()), FieldValue::Slot(1)]);
    let (reports, _) = t.report(&fields);
    let FieldCounts::Class { labels, other } = &reports[0].counts else {
        panic!()
    };
    assert!(labels.is_empty() && *other == 1, "l19 was never tracked");
}

fn class_counts(pairs: &[(&str, u64)], other: u64) -> FieldCounts {
    FieldCounts::Class {
        labels: pairs.iter().map(|&(l, n)| (l.to_string(), n)).collect(),
        other,
    }
}

#[test]
fn counts_merge_by_label_or_slot_and_stay_bounded() {
    let mut a = class_counts(&[("0", 3), ("1", 1)], 0);
    assert!(a.merge(&class_counts(&[("1", 2), ("2", 5)], 1), 2));
    assert_eq!(a, class_counts(&[("0", 3), ("1", 3)], 6));
    assert_eq!(a.total(), 12);
    let score = |counts: Vec<u64>| FieldCounts::Score {
        min: 0.0,
        max: 1.0,
        counts,
    };
    let mut s = score(vec![1, 2, 3]);
    assert!(s.merge(&score(vec![1, 1, 1]), 16));
    assert_eq!(s, score(vec![2, 3, 4]));
    assert!(!s.merge(&score(vec![1, 1, 1, 1]), 16), "another shape");
    assert!(!s.merge(&a, 16), "another kind");
    assert_eq!(s, score(vec![2, 3, 4]));
    assert_eq!(s.emptied(), score(vec![0, 0, 0]));
}

#[test]
fn reports_hold_to_the_limits() {
    let many: BTreeMap<String, u64> = (0..17).map(|i| (format!("l{i}"), 1)).collect();
    assert!(
        FieldCounts::Class {
            labels: many,
            other: 0
        }
        .check()
        .is_err()
    );
    let long = class_counts(&[(&"x".repeat(65), 1)], 0);
    assert!(long.check().is_err());
    for (min, max, n) in [
        (1.0, 0.0, 12),
        (0.0, f64::INFINITY, 12),
        (0.0, 1.0, 2),
        (0.0, 1.0, 103),
    ] {
        let s = FieldCounts::Score {
            min,
            max,
            counts: vec![0; n],
        };
        assert!(s.check().is_err(), "{s:?}");
    }
    assert!(class_counts(&[("a", 1)], 0).check().is_ok());
}

proptest! {
    #[test]
    fn reading_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = read(&body, &heart());
    }

    #[test]
    fn reading_never_panics_on_json(v in arb_json()) {
        let fields = [class("a", "/a"), score("b", "/b/0", -1.0, 1.0, 3), class("c", "")];
        let _ = read(v.to_string().as_bytes(), &fields);
    }

    #[test]
    fn every_score_has_a_slot_and_slots_rise_with_it(
        min in -1e6f64..1e6, span in 1e-3f64..1e6, bins in 1u16..=100,
        x in -1e7f64..1e7, y in -1e7f64..1e7,
    ) {
        let b = ScoreBins { min, max: min + span, bins , tolerance: 0.05, };
        let (sx, sy) = (b.slot(x), b.slot(y));
        prop_assert!(sx < b.slots() && sy < b.slots());
        if x <= y {
            prop_assert!(sx <= sy);
        }
        if x >= b.min && x <= b.max {
            prop_assert!((1..=usize::from(bins)).contains(&sx));
        }
    }

    #[test]
    fn chunking_does_not_change_the_body(
        body in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        limit in 1usize..400,
    ) {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        at.push(0);
        at.push(body.len());
        at.sort_unstable();
        let mut c = BodyCollector::new(limit);
        let mut last = Collected::Partial;
        let pieces: Vec<&[u8]> = at.windows(2).map(|w| &body[w[0]..w[1]]).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let copy = c.wants(piece.len()).then_some(*piece);
            last = c.push(copy, piece.len(), i + 1 == pieces.len());
        }
        if body.len() <= limit {
            prop_assert_eq!(last, Collected::Done(body));
        } else {
            prop_assert_eq!(last, Collected::Skipped(Skip::TooLarge));
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        "[a-z0-9é~/]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
