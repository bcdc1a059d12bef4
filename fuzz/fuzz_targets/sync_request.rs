//! A sync request as the controller receives it: any bytes. Decoding never
//! panics; a request that passes every check has reports whose histograms
//! hold exactly the requests their counts claim, and taking them into the
//! controller's windows and reading the statistics back never panics or
//! loses a request (counts saturate rather than wrap).
#![no_main]

use coalmine_decide::window::{Reported, Windows};
use coalmine_protocol::sync::SyncRequest;
use coalmine_protocol::{Outcome, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<SyncRequest>(data) else {
        return;
    };
    if req.check().is_err() {
        return;
    }
    let Ok(decoded) = req
        .reports
        .iter()
        .map(|r| r.decode().map(|(counts, h)| (r, counts, h)))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let mut windows = Windows::default();
    for (r, counts, h) in &decoded {
        assert_eq!(counts.total(), h.len());
        let reported = Reported {
            counts,
            latency: h,
            outputs: &r.outputs,
            skipped: r.outputs_skipped,
        };
        windows.add(&r.deployment, r.role, &r.version, 100, &reported);
        windows.add(&r.deployment, r.role, &r.version, 99, &reported);
    }
    for (r, counts, _) in &decoded {
        let stats = windows.stats(
            &r.deployment,
            r.role,
            &r.version,
            100,
            60,
            &[Outcome::ServerError],
        );
        assert!(stats.requests >= counts.total().min(u64::MAX / 2));
        assert!(stats.errors <= stats.requests);
        assert!((0.0..=1.0).contains(&stats.error_rate));
        for counts in stats.outputs.values() {
            assert!(counts.total() <= stats.requests);
        }
        let _ = windows.count_slower(&r.deployment, Role::Canary, &r.version, 100, 60, 1.0);
    }
});
