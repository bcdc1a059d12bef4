//! Latency histograms as reports carry them: base64 of HdrHistogram's V2
//! encoding. Any string, and any bytes encoded as base64, either decode into
//! a histogram within coalmine's bounds or are refused; nothing panics and
//! nothing allocates without bound.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use coalmine_protocol::stats::{decode_histogram, encode_histogram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&BASE64.encode(data));
});

fn check(encoded: &str) {
    if let Ok(h) = decode_histogram(encoded) {
        let again = decode_histogram(&encode_histogram(&h));
        assert_eq!(again.map(|a| a.len()).ok(), Some(h.len()));
    }
}
