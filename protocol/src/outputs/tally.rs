//! A role's output counts, field by field, and their wire form.
//!
//! A worker keeps an [`OutputTally`] per deployment, role and version next
//! to its request statistics; each report carries its counts as
//! [`FieldReport`]s and starts afresh. The labels a tally tracks stay for
//! the worker's life (at most [`MAX_LABELS`] per field; further ones count
//! as `other`), so a field's label set does not churn from one report to
//! the next. The controller merges [`FieldCounts`] of every worker into its
//! windows, bounded the same way.

use super::body::Skip;
use super::{FieldKind, FieldValue, MAX_BINS, MAX_LABEL_BYTES, MAX_LABELS, OutputField};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Answers not read, by why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct Skips {
    /// Larger than `max_body_bytes`.
    #[serde(default)]
    pub too_large: u64,
    /// Compressed (a `content-encoding` other than identity).
    #[serde(default)]
    pub encoded: u64,
}

impl Skips {
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn total(&self) -> u64 {
        self.too_large.saturating_add(self.encoded)
    }

    pub fn add(&mut self, skip: Skip, n: u64) {
        let c = match skip {
            Skip::TooLarge => &mut self.too_large,
            Skip::Encoded => &mut self.encoded,
        };
        *c = c.saturating_add(n);
    }

    pub fn merge(&mut self, other: &Skips) {
        self.add(Skip::TooLarge, other.too_large);
        self.add(Skip::Encoded, other.encoded);
    }
}

/// One field's counts in a report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Fields a newer version adds are ignored: filters and controllers of different releases keep syncing.
pub struct FieldReport {
    pub field: String,
    pub counts: FieldCounts,
}

/// A field's counts: by label, or by score slot.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldCounts {
    Class {
        labels: BTreeMap<String, u64>,
        /// Answers with a label beyond the tracked ones.
        #[serde(default)]
        other: u64,
    },
    Score {
        min: f64,
        max: f64,
        /// One below `min`, the bins, one above `max`.
        counts: Vec<u64>,
    },
}

impl FieldCounts {
    /// Answers counted.
    pub fn total(&self) -> u64 {
        match self {
            FieldCounts::Class { labels, other } => {
                labels.values().fold(*other, |a, &n| a.saturating_add(n))
            }
            FieldCounts::Score { counts, .. } => counts.iter().fold(0, |a, &n| a.saturating_add(n)),
        }
    }

    /// What a report may carry: at most [`MAX_LABELS`] labels of at most
    /// [`MAX_LABEL_BYTES`], or 3 ..= [`MAX_BINS`] + 2 slots over a finite,
    /// non-empty range.
    pub fn check(&self) -> Result<(), String> {
        match self {
            FieldCounts::Class { labels, .. } => {
                if labels.len() > MAX_LABELS {
                    return Err(format!(
                        "{} labels is more than the limit of {MAX_LABELS}",
                        labels.len()
                    ));
                }
                if labels.keys().any(|l| l.len() > MAX_LABEL_BYTES) {
                    return Err(format!("a label is longer than {MAX_LABEL_BYTES} bytes"));
                }
            }
            FieldCounts::Score { min, max, counts } => {
                if !(min.is_finite() && max.is_finite() && min < max) {
                    return Err(format!("score range [{min}, {max}] is not a range"));
                }
                if !(3..=usize::from(MAX_BINS) + 2).contains(&counts.len()) {
                    return Err(format!(
                        "{} score slots; want 3 to {}",
                        counts.len(),
                        MAX_BINS + 2
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds `other`'s counts when the field is of the same kind and shape
    /// (a score over the same range and bins); labels beyond `max_labels`
    /// count as `other`. Returns false (and adds nothing) on a mismatch.
    pub fn merge(&mut self, other: &FieldCounts, max_labels: usize) -> bool {
        match (self, other) {
            (
                FieldCounts::Class {
                    labels,
                    other: rest,
                },
                FieldCounts::Class {
                    labels: more,
                    other: more_rest,
                },
            ) => {
                *rest = rest.saturating_add(*more_rest);
                for (label, &n) in more {
                    let room = labels.len() < max_labels;
                    match labels.get_mut(label) {
                        Some(c) => *c = c.saturating_add(n),
                        None if room => {
                            labels.insert(label.clone(), n);
                        }
                        None => *rest = rest.saturating_add(n),
                    }
                }
                true
            }
            (
                FieldCounts::Score { min, max, counts },
                FieldCounts::Score {
                    min: m,
                    max: x,
                    counts: more,
                },
            ) if min == m && max == x && counts.len() == more.len() => {
                for (c, &n) in counts.iter_mut().zip(more) {
                    *c = c.saturating_add(n);
                }
                true
            }
            _ => false,
        }
    }

    /// The empty counts of the same kind and shape.
    pub fn emptied(&self) -> FieldCounts {
        match self {
            FieldCounts::Class { .. } => FieldCounts::Class {
                labels: BTreeMap::new(),
                other: 0,
            },
            FieldCounts::Score { min, max, counts } => FieldCounts::Score {
                min: *min,
                max: *max,
                counts: vec![0; counts.len()],
            },
        }
    }
}

/// One field's counts in a worker, between reports.
#[derive(Clone, Debug)]
enum FieldTally {
    /// Labels tracked (in the order first seen) and their counts.
    Class {
        labels: Vec<(String, u64)>,
        other: u64,
    },
    Score {
        min: f64,
        max: f64,
        counts: Vec<u64>,
    },
}

/// A role's output counts between two reports.
#[derive(Clone, Debug, Default)]
pub struct OutputTally {
    fields: Vec<FieldTally>,
    skips: Skips,
}

impl OutputTally {
    /// Empty counts for `fields` (none: a deployment that reads no outputs).
    pub fn new(fields: &[OutputField]) -> OutputTally {
        let fields = fields
            .iter()
            .map(|f| match f.kind {
                FieldKind::Class => FieldTally::Class {
                    labels: Vec::new(),
                    other: 0,
                },
                FieldKind::Score(b) => FieldTally::Score {
                    min: b.min,
                    max: b.max,
                    counts: vec![0; b.slots()],
                },
            })
            .collect();
        OutputTally {
            fields,
            skips: Skips::default(),
        }
    }

    /// Counts one answer read: a value per field, in configuration order.
    pub fn record(&mut self, values: &[FieldValue]) {
        for (tally, value) in self.fields.iter_mut().zip(values) {
            match (tally, value) {
                (FieldTally::Class { labels, other }, FieldValue::Label(label)) => {
                    let room = labels.len() < MAX_LABELS;
                    match labels.iter_mut().find(|(l, _)| l == label) {
                        Some((_, n)) => *n = n.saturating_add(1),
                        None if room => labels.push((label.clone(), 1)),
                        None => *other = other.saturating_add(1),
                    }
                }
                (FieldTally::Score { counts, .. }, FieldValue::Slot(slot)) => {
                    if let Some(n) = counts.get_mut(*slot) {
                        *n = n.saturating_add(1);
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts an answer not read.
    pub fn skipped(&mut self, skip: Skip) {
        self.skips.add(skip, 1);
    }

    /// The counts as a report carries them (fields named by `fields`), and
    /// the answers skipped.
    pub fn report(&self, fields: &[OutputField]) -> (Vec<FieldReport>, Skips) {
        let reports = self
            .fields
            .iter()
            .zip(fields)
            .map(|(tally, f)| FieldReport {
                field: f.name.clone(),
                counts: match tally {
                    FieldTally::Class { labels, other } => FieldCounts::Class {
                        labels: labels.iter().filter(|(_, n)| *n > 0).cloned().collect(),
                        other: *other,
                    },
                    FieldTally::Score { min, max, counts } => FieldCounts::Score {
                        min: *min,
                        max: *max,
                        counts: counts.clone(),
                    },
                },
            })
            .filter(|r| r.counts.total() > 0)
            .collect();
        (reports, self.skips)
    }

    /// Starts afresh; the tracked labels stay.
    pub fn clear(&mut self) {
        for f in &mut self.fields {
            match f {
                FieldTally::Class { labels, other } => {
                    labels.iter_mut().for_each(|(_, n)| *n = 0);
                    *other = 0;
                }
                FieldTally::Score { counts, .. } => counts.iter_mut().for_each(|n| *n = 0),
            }
        }
        self.skips = Skips::default();
    }
}
