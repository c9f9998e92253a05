//! Letting something happen at most once per interval, from any number of threads, without
//! a lock: forced topology reads, forced credential renewals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Passes at most one caller per interval; the others are turned away.
pub(crate) struct Throttle {
    started: Instant,
    /// When a caller last passed, in ms since `started`, plus one (0: never).
    last: AtomicU64,
}

impl Throttle {
    pub(crate) fn new() -> Throttle {
        Throttle {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Whether the caller may go ahead: nobody passed within `gap`, and no concurrent caller
    /// passed first.
    pub(crate) fn pass(&self, gap: Duration) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let gap = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < gap {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_per_interval() {
        let throttle = Throttle::new();
        assert!(throttle.pass(Duration::from_secs(60)));
        assert!(!throttle.pass(Duration::from_secs(60)));
        assert!(throttle.pass(Duration::ZERO));
    }
}
