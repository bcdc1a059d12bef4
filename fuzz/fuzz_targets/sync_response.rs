//! What the filter takes from outside on its sync path: the controller's
//! answer (any bytes) and the split table another worker put into shared
//! data (any bytes: an epoch prefix and the table's JSON). Neither panics; a
//! table that validates encodes and decodes back to itself, and a stored
//! table's epoch prefix is the table's own.
#![no_main]

use coalmine_protocol::SplitTable;
use coalmine_protocol::shared::{decode_split_table, encode_split_table, split_table_epoch};
use coalmine_protocol::sync::SyncResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = serde_json::from_slice::<SyncResponse>(data)
        && response.table.validate().is_ok()
    {
        let back = SplitTable::decode(&response.table.encode());
        assert_eq!(back.ok().as_ref(), Some(&response.table));
        let stored = encode_split_table(&response.table);
        assert_eq!(split_table_epoch(&stored), Some(response.table.epoch));
        assert_eq!(decode_split_table(&stored).ok(), Some(response.table));
    }
    if let Ok(table) = SplitTable::decode(data) {
        assert!(table.validate().is_ok());
        assert_eq!(SplitTable::decode(&table.encode()).ok(), Some(table));
    }
    if let Ok(table) = decode_split_table(data) {
        assert!(table.validate().is_ok());
        assert_eq!(split_table_epoch(data), Some(table.epoch));
        assert_eq!(
            decode_split_table(&encode_split_table(&table)).ok(),
            Some(table)
        );
    }
});
