//! Fallible wrappers over proxy-wasm host calls.
//!
//! The SDK's trait helpers `unwrap()` host errors; on the request path a panic
//! is a VM trap that fails user traffic, so the filter calls these instead and
//! treats a host error as "no value".

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, MapType};
use std::time::UNIX_EPOCH;

pub(crate) fn property(path: &[&str]) -> Option<Bytes> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// An integer property (Envoy encodes them as 8 little-endian bytes).
pub(crate) fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = property(path)?;
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

pub(crate) fn request_header(name: &str) -> Option<Bytes> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// Every request header, pseudo-headers included (one host call); `None`
/// when a value is not UTF-8 (Envoy lets bytes 0x80-0xff through; the
/// call that would carry them takes text).
pub(crate) fn request_headers() -> Option<Vec<(String, String)>> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .ok()?
        .into_iter()
        .map(|(name, value)| String::from_utf8(value).ok().map(|v| (name, v)))
        .collect()
}

/// A header of the answer to an HTTP call the filter made.
pub(crate) fn call_response_header(name: &str) -> Option<Bytes> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// The body of the answer to an HTTP call the filter made.
pub(crate) fn call_response_body(size: usize) -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

/// The request body chunk Envoy holds now (`size` bytes).
pub(crate) fn request_body(size: usize) -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
        .ok()
        .flatten()
}

pub(crate) fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

pub(crate) fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

pub(crate) fn response_header(name: &str) -> Option<Bytes> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

/// The response body chunk Envoy holds now (`size` bytes).
pub(crate) fn response_body(size: usize) -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .ok()
        .flatten()
}

pub(crate) fn set_response_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
}

/// The value and CAS stored under `key` in shared data.
pub(crate) fn shared_data(key: &str) -> (Option<Bytes>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Stores `value` under `key` in shared data (only if the CAS still matches,
/// when given); whether it was stored.
pub(crate) fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

/// The host's clock, in ms since the UNIX epoch (0 if it has none).
pub(crate) fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The host's clock, in ns since the UNIX epoch (0 if it has none).
pub(crate) fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
