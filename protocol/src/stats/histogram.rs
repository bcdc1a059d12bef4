//! The wire form of a latency histogram: HdrHistogram's V2 encoding, in
//! base64, as reports carry it.
//!
//! Decoding is the controller's first contact with bytes from any proxy, so
//! it accepts only coalmine's own histogram parameters and a payload that is
//! really there: a hostile report cannot make it allocate at will.

use super::{LATENCY_MAX_US, LATENCY_SIGFIG};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};

/// An encoded histogram longer than this is refused before decoding.
pub const MAX_HISTOGRAM_BYTES: usize = 64 * 1024;

/// Why an encoded histogram was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistogramError {
    #[error("latency histogram is not valid base64")]
    Base64,
    #[error("latency histogram is {0} bytes, more than {MAX_HISTOGRAM_BYTES}")]
    TooLarge(usize),
    #[error("latency histogram: {0}")]
    Invalid(String),
}

/// Encodes a latency histogram for a report.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail; an empty string decodes as "empty".
    match V2Serializer::new().serialize(h, &mut bytes) {
        Ok(_) => BASE64.encode(bytes),
        Err(_) => String::new(),
    }
}

/// The V2 header is 40 bytes: cookie, payload length, normalizing offset,
/// significant digits, lowest, highest, int-to-double ratio.
const V2_HEADER: usize = 40;

/// The first four bytes of HdrHistogram's uncompressed V2 encoding (the
/// compressed form, `…9314`, is not coalmine's and is refused).
const V2_COOKIE: u32 = 0x1c84_9313;

/// Decodes a report's histogram, accepting only coalmine's own parameters
/// (1 µs .. 1 h, two significant digits) and a payload that is really there.
pub fn decode_histogram(encoded: &str) -> Result<Histogram<u64>, HistogramError> {
    if encoded.is_empty() {
        return Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
            .map_err(|e| HistogramError::Invalid(e.to_string()));
    }
    if encoded.len() > MAX_HISTOGRAM_BYTES * 4 / 3 + 4 {
        return Err(HistogramError::TooLarge(encoded.len() * 3 / 4));
    }
    let bytes = BASE64.decode(encoded).map_err(|_| HistogramError::Base64)?;
    if bytes.len() > MAX_HISTOGRAM_BYTES {
        return Err(HistogramError::TooLarge(bytes.len()));
    }
    check_header(&bytes)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| HistogramError::Invalid(format!("{e:?}")))
}

/// The V2 header agrees with the bytes sent and with coalmine's parameters.
fn check_header(bytes: &[u8]) -> Result<(), HistogramError> {
    let header = bytes
        .get(..V2_HEADER)
        .ok_or_else(|| HistogramError::Invalid("truncated header".into()))?;
    let be_u32 = |at: usize| {
        header
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes)
    };
    let be_u64 = |at: usize| {
        header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    if be_u32(0) != V2_COOKIE {
        return Err(HistogramError::Invalid(
            "unexpected cookie (want HdrHistogram's uncompressed V2 encoding)".into(),
        ));
    }
    let payload = be_u32(4) as usize;
    if payload != bytes.len() - V2_HEADER {
        return Err(HistogramError::Invalid(format!(
            "payload length {payload} does not match the {} bytes sent",
            bytes.len() - V2_HEADER
        )));
    }
    if be_u32(12) != u32::from(LATENCY_SIGFIG) || be_u64(16) != 1 || be_u64(24) != LATENCY_MAX_US {
        return Err(HistogramError::Invalid(
            "unexpected range or precision (want 1 µs .. 1 h, 2 significant digits)".into(),
        ));
    }
    check_counts(bytes.get(V2_HEADER..).unwrap_or_default())
}

/// No count or run of zeros is 2^56 or more: coalmine's own counts are
/// below 2^40 ([`MAX_REPORT_REQUESTS`](crate::sync::MAX_REPORT_REQUESTS)).
///
/// The payload is LEB128 varints of at most nine bytes, where the ninth
/// byte is taken whole. Eight bytes in a row with the high bit set can only
/// be a nine-byte varint (a shorter one ends on a byte without it), and
/// refusing them keeps away the one value hdrhistogram 7.6's decoder
/// cannot take: 2^64 - 1, which zigzag-decodes to `i64::MIN` and
/// overflows when negated as a run of zeros.
fn check_counts(payload: &[u8]) -> Result<(), HistogramError> {
    let mut run = 0;
    for &b in payload {
        run = if b & 0x80 != 0 { run + 1 } else { 0 };
        if run == 8 {
            return Err(HistogramError::Invalid(
                "a count or run of zeros of 2^56 or more".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use crate::stats::RoleStats;
    use proptest::prelude::*;

    fn stats(latencies: &[u64]) -> RoleStats {
        let mut s = RoleStats::try_new().unwrap();
        for &l in latencies {
            s.record(Outcome::Success, l);
        }
        s
    }

    #[test]
    fn the_encoding_is_compact() {
        let latencies: Vec<u64> = (0..1000).map(|i| 20_000 + (i * 37) % 5_000).collect();
        let encoded = encode_histogram(stats(&latencies).latency_us());
        assert!(encoded.len() < 600, "{} bytes", encoded.len());
    }

    #[test]
    fn hostile_histograms_are_refused() {
        assert_eq!(decode_histogram("!!!"), Err(HistogramError::Base64));
        assert!(matches!(
            decode_histogram("AAAA"),
            Err(HistogramError::Invalid(_))
        ));
        // A valid histogram with another range would allocate at the sender's will.
        let big = Histogram::<u64>::new_with_bounds(1, u64::MAX / 4, 5).unwrap();
        assert!(matches!(
            decode_histogram(&encode_histogram(&big)),
            Err(HistogramError::Invalid(_))
        ));
        // A payload length that promises more than is there.
        let mut bytes = BASE64
            .decode(encode_histogram(stats(&[5]).latency_us()))
            .unwrap();
        bytes[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_histogram(&BASE64.encode(bytes)),
            Err(HistogramError::Invalid(_))
        ));
        let too_long = "A".repeat(MAX_HISTOGRAM_BYTES * 2);
        assert!(matches!(
            decode_histogram(&too_long),
            Err(HistogramError::TooLarge(_))
        ));
        assert_eq!(decode_histogram("").unwrap().len(), 0);
    }

    /// The bytes of a histogram with coalmine's parameters and `payload`.
    fn with_payload(payload: &[u8]) -> String {
        let mut bytes = BASE64
            .decode(encode_histogram(stats(&[]).latency_us()))
            .unwrap();
        bytes.truncate(V2_HEADER);
        bytes[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        BASE64.encode(bytes)
    }

    #[test]
    fn a_nine_byte_count_is_refused_before_the_decoder_sees_it() {
        // Nine 0xFF bytes are the varint 2^64 - 1, which zigzag-decodes to
        // i64::MIN: the decoder negates it as a run of zeros and overflows.
        for payload in [
            &[0xFF; 9][..],
            &[0xFF; 10],
            &[
                0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x02,
            ],
        ] {
            assert!(
                matches!(decode_histogram(&with_payload(payload)), Err(HistogramError::Invalid(m)) if m.contains("2^56")),
                "{payload:?}"
            );
        }
        // The compressed form is not coalmine's: its payload would be inflated
        // to whatever length it claims.
        let mut bytes = BASE64.decode(with_payload(&[0x02])).unwrap();
        bytes[3] = 0x14;
        assert!(matches!(
            decode_histogram(&BASE64.encode(bytes)),
            Err(HistogramError::Invalid(m)) if m.contains("cookie")
        ));
        // Counts up to coalmine's own bound decode as before.
        assert_eq!(
            decode_histogram(&with_payload(&[0x04, 0x02]))
                .unwrap()
                .len(),
            3
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,300}") {
            let _ = decode_histogram(&s);
        }

        #[test]
        fn decode_never_panics_on_mangled_bytes(
            latencies in prop::collection::vec(1u64..10_000_000, 0..50),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        ) {
            let mut bytes = BASE64.decode(encode_histogram(stats(&latencies).latency_us())).unwrap_or_default();
            for (i, b) in flips {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] = b;
                }
            }
            let _ = decode_histogram(&BASE64.encode(bytes));
        }

        #[test]
        fn round_trip_preserves_every_count(latencies in prop::collection::vec(1u64..LATENCY_MAX_US, 0..200)) {
            let s = stats(&latencies);
            let back = decode_histogram(&encode_histogram(s.latency_us())).unwrap();
            prop_assert_eq!(back.len(), s.latency_us().len());
            for q in [0.5, 0.95, 0.99] {
                prop_assert_eq!(back.value_at_quantile(q), s.latency_us().value_at_quantile(q));
            }
        }
    }
}
