//! What the filter takes from outside on its sync path: the controller's
//! answer (any bytes) and the split table another worker put into shared
//! data (any bytes). Neither panics; a table that validates encodes and
//! decodes back to itself.
#![no_main]

use coalmine_protocol::SplitTable;
use coalmine_protocol::sync::SyncResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = serde_json::from_slice::<SyncResponse>(data)
        && response.table.validate().is_ok()
    {
        let back = SplitTable::decode(&response.table.encode());
        assert_eq!(back.ok().as_ref(), Some(&response.table));
    }
    if let Ok(table) = SplitTable::decode(data) {
        assert!(table.validate().is_ok());
        assert_eq!(SplitTable::decode(&table.encode()).ok(), Some(table));
    }
});
