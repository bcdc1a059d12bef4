//! What the workers of one proxy share through proxy-wasm shared data: every
//! key, and the form of the value stored under it.
//!
//! Each worker syncs with the controller on its own; shared data is how one
//! worker's good answer reaches the others without a call of their own, and
//! how they agree on the lease. Keys are prefixed `coalmine` because Istio
//! sets no vm_id, so every plugin in the proxy shares one namespace.

use crate::split::{SplitTable, SplitTableError};

/// The controller's split table as a worker last received it.
///
/// The value is the table's epoch (8 bytes, little-endian) followed by the
/// table's JSON, so a worker can tell the table it already routes by from
/// the epoch alone and decode only a table it does not have. The name
/// differs from the earlier plain-JSON value's, so two builds of the filter
/// serving side by side during an upgrade never read each other's form.
pub const SPLIT_TABLE_KEY: &str = "coalmine.split_table.v2";

/// Until when the controller's lease runs: ms since the UNIX epoch, 8 bytes
/// little-endian. Any worker's successful sync renews it for all.
pub const LEASE_UNTIL_KEY: &str = "coalmine.lease_until_ms";

/// [`LEASE_EXPIRED`] or [`LEASE_OK`]: written with compare-and-swap, so that
/// exactly one worker per proxy logs each lease transition.
pub const LEASE_STATE_KEY: &str = "coalmine.lease_state";
pub const LEASE_EXPIRED: &[u8] = b"expired";
pub const LEASE_OK: &[u8] = b"ok";

const EPOCH_BYTES: usize = 8;

/// The value stored under [`SPLIT_TABLE_KEY`].
pub fn encode_split_table(table: &SplitTable) -> Vec<u8> {
    let json = table.encode();
    let mut value = Vec::with_capacity(EPOCH_BYTES + json.len());
    value.extend_from_slice(&table.epoch.to_le_bytes());
    value.extend_from_slice(&json);
    value
}

/// The epoch of a stored split table, read without decoding it.
pub fn split_table_epoch(value: &[u8]) -> Option<u64> {
    le_u64(value)
}

/// Decodes and checks a stored split table. A prefix that disagrees with
/// the table's own epoch means the value is damaged: it is refused rather
/// than routed by.
pub fn decode_split_table(value: &[u8]) -> Result<SplitTable, SplitTableError> {
    let (Some(epoch), Some(json)) = (split_table_epoch(value), value.get(EPOCH_BYTES..)) else {
        return Err(SplitTableError::Stored("shorter than its epoch prefix"));
    };
    let table = SplitTable::decode(json)?;
    if table.epoch != epoch {
        return Err(SplitTableError::Stored(
            "the epoch prefix differs from the table's epoch",
        ));
    }
    Ok(table)
}

/// The value stored under [`LEASE_UNTIL_KEY`].
pub fn encode_lease_until(until_ms: u64) -> [u8; 8] {
    until_ms.to_le_bytes()
}

/// What [`LEASE_UNTIL_KEY`] holds, if it holds a time.
pub fn decode_lease_until(value: &[u8]) -> Option<u64> {
    le_u64(value)
}

fn le_u64(value: &[u8]) -> Option<u64> {
    let raw: [u8; 8] = value.get(..EPOCH_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::{Bps, DeploymentSplit, Target};

    fn table(epoch: u64) -> SplitTable {
        SplitTable {
            epoch,
            deployments: vec![DeploymentSplit {
                name: "heart-prod".into(),
                baseline: Target {
                    version: "v1".into(),
                    cluster: "heart-v1".into(),
                },
                canary: None,
                canary_bps: Bps::ZERO,
                shadow: None,
            }],
        }
    }

    #[test]
    fn a_stored_table_names_its_epoch_up_front() {
        let value = encode_split_table(&table(0x0102_0304_0506_0708));
        assert_eq!(split_table_epoch(&value), Some(0x0102_0304_0506_0708));
        assert_eq!(value[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&value[8..], table(0x0102_0304_0506_0708).encode());
        assert_eq!(
            decode_split_table(&value).unwrap(),
            table(0x0102_0304_0506_0708)
        );
    }

    #[test]
    fn damaged_stored_tables_are_refused() {
        assert!(decode_split_table(b"").is_err());
        assert!(decode_split_table(b"1234567").is_err());
        assert_eq!(split_table_epoch(b"1234567"), None);
        // The earlier plain-JSON form is not mistaken for this one.
        assert!(decode_split_table(&table(3).encode()).is_err());
        let mut value = encode_split_table(&table(3));
        value[0] = 4;
        let err = decode_split_table(&value).unwrap_err().to_string();
        assert!(err.contains("epoch prefix differs"), "{err}");
        let mut garbage = 3u64.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"{not json");
        assert!(decode_split_table(&garbage).is_err());
    }

    #[test]
    fn the_lease_is_a_little_endian_time() {
        assert_eq!(
            decode_lease_until(&encode_lease_until(45_000)),
            Some(45_000)
        );
        assert_eq!(decode_lease_until(b"short"), None);
    }
}
