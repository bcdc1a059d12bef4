//! Notifications of the events operators must not miss.
//!
//! The service hands every stored event to a [`Notifier`]; implementations
//! must return at once (the engine never waits on a receiver). One file per
//! implementation: `notify/webhook.rs` (POST to configured URLs, retried with
//! backoff) and `notify/none.rs`.

use crate::store::StoredEvent;
use coalmine_decide::engine::EventKind;

mod none;
mod webhook;
pub use none::NoNotifier;
pub use webhook::{RetryPolicy, Webhooks};

/// The events that are sent out.
pub const NOTIFIED: [EventKind; 4] = [
    EventKind::HealthDegraded,
    EventKind::AutoRollbackTriggered,
    EventKind::RolledBack,
    EventKind::Promoted,
];

pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Queues `event` for delivery; never blocks.
    fn notify(&self, event: &StoredEvent);
}
