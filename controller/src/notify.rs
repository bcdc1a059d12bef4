//! Notifications of the events operators must not miss.
//!
//! The service hands every stored event to a [`Notifier`]; implementations
//! must return at once (the engine never waits on a receiver). One file per
//! implementation: `notify/webhook.rs` (each receiver its own task, reading
//! its backlog from the store after its stored cursor, retried with capped
//! backoff until a 2xx) and `notify/none.rs`. The webhooks' pure rules are
//! apart: `notify/receiver.rs` (parsing, redaction, the cursor key) and
//! `notify/delivery.rs` (backoff, what an answer means, where to resume,
//! the payload).

use crate::store::StoredEvent;
use coalmine_decide::engine::EventKind;

mod delivery;
mod none;
mod receiver;
mod webhook;
pub use delivery::RetryPolicy;
pub use none::NoNotifier;
pub use receiver::{Receiver, ReceiverError, receivers};
pub use webhook::{WebhookError, WebhookSettings, Webhooks};

/// The events that are sent out: a canary's trouble and its end, a
/// return to the pinned version (an operator's, or the engine's when a
/// promoted version breaks its watch), and a shadow's start, stop and
/// disagreement.
pub const NOTIFIED: [EventKind; 8] = [
    EventKind::HealthDegraded,
    EventKind::AutoRollbackTriggered,
    EventKind::RolledBack,
    EventKind::Promoted,
    EventKind::RevertedToPinned,
    EventKind::ShadowStarted,
    EventKind::ShadowStopped,
    EventKind::ShadowDisagrees,
];

pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Takes note of a stored `event` (for webhooks: wakes the receivers,
    /// which read it from the store); never blocks.
    fn notify(&self, event: &StoredEvent);
}
