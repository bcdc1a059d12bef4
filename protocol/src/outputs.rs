//! Model outputs: what a deployment's answers say, read at the proxy
//! (DESIGN.md, "Model outputs").
//!
//! A deployment configured with `outputs` names fields of its JSON answers
//! by RFC 6901 pointer. A `class` field is a label (string, integer or
//! boolean); a `score` field is a number, counted in equal-width bins over
//! `[min, max]` plus one bin below and one above. On a sampled share of
//! requests the filter reads 2xx answers whose body is not compressed and
//! not larger than `max_body_bytes`, and [`read`] turns the body into one
//! value per field, or says why it holds no usable answer (the request is
//! then a `bad_output`).
//!
//! - here: the validated configuration, reading and binning;
//! - [`body`]: collecting a body chunk by chunk as it passes, bounded;
//! - [`tally`]: a role's counts by label or bin between two reports, and
//!   their wire form ([`FieldCounts`]).

mod body;
mod tally;

pub use body::{BodyCollector, Collected, Skip};
pub use tally::{FieldCounts, FieldReport, OutputTally, Skips};

use crate::split::Bps;
use serde_json::Value;

/// Most fields a deployment may read.
pub const MAX_FIELDS: usize = 8;
/// Distinct labels tracked per field and role; further ones count as
/// [`OTHER`].
pub const MAX_LABELS: usize = 16;
/// Most bins of a score field (plus the one below and the one above).
pub const MAX_BINS: u16 = 100;
/// Labels longer than this are cut (at a character boundary).
pub const MAX_LABEL_BYTES: usize = 64;
/// The largest `max_body_bytes` accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// What labels beyond the tracked ones count as.
pub const OTHER: &str = "other";

/// Which outputs of a deployment's answers are read.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    pub fields: Vec<OutputField>,
    /// The share of requests whose answers are read.
    pub sample: Bps,
    /// Answers with a larger body are not read (counted as skipped).
    pub max_body_bytes: usize,
}

/// One field of the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputField {
    /// As it appears in metrics and reports: `[a-z0-9_]{1,32}`.
    pub name: String,
    /// An RFC 6901 JSON pointer into the answer.
    pub pointer: String,
    pub kind: FieldKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldKind {
    /// A label: string, integer or boolean.
    Class,
    /// A number, counted in bins.
    Score(ScoreBins),
}

/// `bins` equal-width bins over `[min, max]`, plus one below and one above.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreBins {
    pub min: f64,
    pub max: f64,
    pub bins: u16,
    /// A shadow's score agrees with the user's when at most this far apart.
    pub tolerance: f64,
}

impl ScoreBins {
    /// How many counts a field keeps: the bins, one below, one above.
    pub fn slots(&self) -> usize {
        usize::from(self.bins) + 2
    }

    /// The slot of `x`: 0 below `min`, `1 ..= bins` within (`max` itself in
    /// the last bin), `bins + 1` above `max`.
    pub fn slot(&self, x: f64) -> usize {
        let bins = usize::from(self.bins);
        if x < self.min {
            return 0;
        }
        if x > self.max {
            return bins + 1;
        }
        let width = (self.max - self.min) / f64::from(self.bins);
        // In range, so the quotient is within 0 ..= bins (bins at x == max).
        let i = ((x - self.min) / width).floor() as usize;
        i.min(bins.saturating_sub(1)) + 1
    }

    /// A slot's name in metrics: `below`, `01` … `10`, `above`.
    pub fn slot_label(&self, slot: usize) -> String {
        match slot {
            0 => "below".into(),
            s if s > usize::from(self.bins) => "above".into(),
            s => format!("{s:02}"),
        }
    }

    /// A slot's range for people: `< 0`, `[0.1, 0.2)`, `[0.9, 1]`, `> 1`.
    pub fn slot_range(&self, slot: usize) -> String {
        let bins = usize::from(self.bins);
        let width = (self.max - self.min) / f64::from(self.bins);
        let edge = |i: usize| self.min + width * i as f64;
        match slot {
            0 => format!("< {}", self.min),
            s if s > bins => format!("> {}", self.max),
            s if s == bins => format!("[{}, {}]", round(edge(s - 1)), self.max),
            s => format!("[{}, {})", round(edge(s - 1)), round(edge(s))),
        }
    }
}

/// Edges printed without float noise (0.30000000000000004 → 0.3).
fn round(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// What one field of one answer said.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Label(String),
    /// The slot of a score (see [`ScoreBins::slot`]).
    Slot(usize),
}

/// What was seen of one request's outputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Seen<'a> {
    /// Not sampled, not a 2xx, or no outputs configured.
    NotRead,
    /// Sampled but not read, and why.
    Skipped(Skip),
    /// Read: a value per field, in configuration order.
    Read(&'a [FieldValue]),
}

/// Why an answer that was read holds no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadOutput {
    /// The body is not JSON (an empty body included).
    NotJson,
    /// The field's pointer leads nowhere (its index in the configuration).
    Missing(usize),
    /// The field holds a value of another kind.
    WrongKind(usize),
}

/// What one field of one answer said, before binning (a shadow's answer is
/// compared with the user's on these).
#[derive(Clone, Debug, PartialEq)]
pub enum Said {
    Label(String),
    Score(f64),
}

/// Reads every configured field of an answer: all of them, or why not.
pub fn read(body: &[u8], fields: &[OutputField]) -> Result<Vec<FieldValue>, BadOutput> {
    Ok(binned(read_said(body, fields)?, fields))
}

/// Reads every configured field of an answer as it was said.
pub fn read_said(body: &[u8], fields: &[OutputField]) -> Result<Vec<Said>, BadOutput> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| BadOutput::NotJson)?;
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let v = doc.pointer(&f.pointer).ok_or(BadOutput::Missing(i))?;
            said_of(v, f.kind).ok_or(BadOutput::WrongKind(i))
        })
        .collect()
}

/// The values of an answer as they are counted: labels as they are,
/// scores by their slot.
pub fn binned(said: Vec<Said>, fields: &[OutputField]) -> Vec<FieldValue> {
    said.into_iter()
        .zip(fields)
        .map(|(s, f)| match (s, f.kind) {
            (Said::Score(x), FieldKind::Score(bins)) => FieldValue::Slot(bins.slot(x)),
            (Said::Score(x), FieldKind::Class) => FieldValue::Label(x.to_string()),
            (Said::Label(l), _) => FieldValue::Label(l),
        })
        .collect()
}

fn said_of(v: &Value, kind: FieldKind) -> Option<Said> {
    match kind {
        FieldKind::Class => label_of(v).map(Said::Label),
        FieldKind::Score(_) => v.as_f64().map(Said::Score),
    }
}

/// A class label: a string (cut to [`MAX_LABEL_BYTES`]), an integer or a
/// boolean; anything else is of the wrong kind.
pub fn label_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(cut(s, MAX_LABEL_BYTES).to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// A label as it can stand in an Envoy stat name (where `.` separates the
/// segments the `stats_tags` extract): letters, digits, `-` and `_` kept,
/// anything else `_`.
pub fn metric_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A field name: `[a-z0-9_]{1,32}`.
pub fn check_field_name(name: &str) -> Result<(), String> {
    crate::config::check_label_name("field", name)
}

/// An RFC 6901 JSON pointer: empty (the whole answer) or `/`-separated
/// tokens, `~` only as `~0` or `~1`.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "{pointer:?} is not a JSON pointer; it must be empty or start with '/'"
        ));
    }
    if pointer.len() > 256 {
        return Err("is longer than 256 bytes".into());
    }
    let bytes = pointer.as_bytes();
    let bad_escape = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')));
    if bad_escape {
        return Err(format!(
            "{pointer:?} is not a JSON pointer; '~' must be followed by 0 or 1"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
