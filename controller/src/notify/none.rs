//! No notifications (no webhook configured).

use super::Notifier;
use crate::store::StoredEvent;

#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn notify(&self, _event: &StoredEvent) {}
}
