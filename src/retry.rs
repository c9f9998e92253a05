//! How the failover-aware helpers run work again after a failover.

use std::time::Duration;

/// How [`AuroraPool::run_with`](crate::AuroraPool::run_with) and
/// [`AuroraPool::transaction_with`](crate::AuroraPool::transaction_with) retry work that
/// failed because of a failover.
///
/// Work is run again only when it cannot have been applied:
/// - the failure came before the work was sent (checking out, connecting, logging in);
/// - a transaction lost before its `COMMIT` was sent (the server rolled it back), or whose
///   `COMMIT` the writer reports rolled back;
/// - the work ran on a reader (a replica refuses writes);
/// - or the caller declared it [`idempotent`](RetryPolicy::idempotent).
///
/// Otherwise a lost connection after the work was sent is
/// [`Error::is_outcome_unknown`](crate::Error::is_outcome_unknown), and any other error is
/// returned at once. Retries pause 50 ms, doubling up to 1 s, with jitter.
///
/// ```
/// use std::time::Duration;
/// use aurora_pool::RetryPolicy;
///
/// // An upsert keyed by the caller: running it twice leaves one row.
/// let upsert = RetryPolicy::new().idempotent();
/// let patient = RetryPolicy::new().timeout(Duration::from_secs(60));
/// let once = RetryPolicy::no_retry();
/// assert_eq!(once.attempts(), 1);
/// # drop((upsert, patient));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    timeout: Option<Duration>,
    idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// Retries without an attempt limit; each wait for an instance is bounded by the
    /// pool's `failover_timeout`, and the work itself runs as long as it takes.
    pub const fn new() -> RetryPolicy {
        RetryPolicy {
            max_attempts: u32::MAX,
            timeout: None,
            idempotent: false,
        }
    }

    /// One attempt: failover errors are returned to the caller as they are.
    pub const fn no_retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            timeout: None,
            idempotent: false,
        }
    }

    /// Declares the work safe to apply twice (an upsert on a key of the caller's, a `SELECT`,
    /// an `UPDATE ... SET state = 'done'`): it is run again after a lost connection even
    /// when it may already have been applied, instead of ending with
    /// [`Error::is_outcome_unknown`](crate::Error::is_outcome_unknown).
    pub const fn idempotent(mut self) -> RetryPolicy {
        self.idempotent = true;
        self
    }

    /// Whether the work was declared [`idempotent`](RetryPolicy::idempotent).
    pub const fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// At most `attempts` attempts (at least 1).
    pub const fn max_attempts(mut self, attempts: u32) -> RetryPolicy {
        self.max_attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// Bounds the whole call, checkouts, waits and the work itself, by `timeout`. Work cut
    /// off by it is abandoned (its connection closed): a transaction that had not sent
    /// `COMMIT` is rolled back and the error says the time limit passed; work outside a
    /// transaction on the writer may still complete, and the error is
    /// [`Error::is_outcome_unknown`](crate::Error::is_outcome_unknown). Without it, only the
    /// waits for an instance are bounded (by `failover_timeout`, each).
    pub const fn timeout(mut self, timeout: Duration) -> RetryPolicy {
        self.timeout = Some(timeout);
        self
    }

    /// The attempt limit.
    pub const fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The caller's own bound on the whole call, when set.
    pub(crate) fn time_limit(&self) -> Option<Duration> {
        self.timeout.map(|t| t.min(crate::config::MAX_DURATION))
    }

    /// The pause after failed attempt number `attempt` (1-based).
    pub(crate) fn pause(attempt: u32) -> Duration {
        let base = Duration::from_millis(50) * 2u32.pow(attempt.saturating_sub(1).min(5));
        let capped = base.min(Duration::from_secs(1));
        capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_stay_bounded() {
        for attempt in 1..20 {
            let pause = RetryPolicy::pause(attempt);
            assert!(pause >= Duration::from_millis(25), "{attempt}: {pause:?}");
            assert!(pause <= Duration::from_secs(1), "{attempt}: {pause:?}");
        }
        assert!(RetryPolicy::pause(1) <= Duration::from_millis(50));
        assert!(RetryPolicy::pause(10) >= Duration::from_millis(500));
    }

    #[test]
    fn limits() {
        assert_eq!(RetryPolicy::new().max_attempts(0).attempts(), 1);
        assert_eq!(RetryPolicy::no_retry().time_limit(), None);
        assert_eq!(
            RetryPolicy::new()
                .timeout(Duration::from_secs(1))
                .time_limit(),
            Some(Duration::from_secs(1))
        );
        assert!(!RetryPolicy::new().is_idempotent());
        assert!(RetryPolicy::new().idempotent().is_idempotent());
    }
}
