//! The one clock the controller reads: every decision, event and sample is
//! stamped from it, so tests replay any sequence of decisions with a
//! [`ManualClock`] and no sleeps.

pub use coalmine_decide::engine::Millis;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(at: Millis) -> ManualClock {
        ManualClock(AtomicU64::new(at))
    }

    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// `inner`, made monotonic: when it steps back (an NTP correction, an
/// operator's `date -s`), time goes on from where it was at `inner`'s pace
/// instead of repeating the past. Evaluations, windows, bakes and cooldowns
/// are scheduled on it, so a clock stepped back an hour pauses none of
/// them. A step forward is taken as it comes (a jump ahead ends bakes and
/// cooldowns early; it never holds a rollback back).
#[derive(Debug)]
pub struct MonotonicClock<C> {
    inner: C,
    /// (offset added to `inner`, the last time returned)
    state: Mutex<(u64, Millis)>,
}

impl<C: Clock> MonotonicClock<C> {
    pub fn new(inner: C) -> MonotonicClock<C> {
        MonotonicClock {
            inner,
            state: Mutex::new((0, 0)),
        }
    }
}

impl<C: Clock> Clock for MonotonicClock<C> {
    fn now(&self) -> Millis {
        let raw = self.inner.now();
        let Ok(mut state) = self.state.lock() else {
            return raw;
        };
        let (offset, last) = &mut *state;
        let mut t = raw.saturating_add(*offset);
        if t < *last {
            *offset = last.saturating_sub(raw);
            t = *last;
        }
        *last = t;
        t
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Millis {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_step_back_does_not_turn_time_back() {
        let raw = Arc::new(ManualClock::new(10_000_000));
        let clock = MonotonicClock::new(raw.clone());
        assert_eq!(clock.now(), 10_000_000);
        raw.advance(1_000);
        assert_eq!(clock.now(), 10_001_000);
        // An hour back: time stays, then goes on at the raw clock's pace.
        raw.set(10_001_000 - 3_600_000);
        assert_eq!(clock.now(), 10_001_000);
        raw.advance(500);
        assert_eq!(clock.now(), 10_001_500);
        // A step forward is taken.
        raw.advance(60_000);
        assert_eq!(clock.now(), 10_061_500);
    }
}
