//! How failover-aware helpers retry idempotent work.

use std::time::Duration;

/// How [`AuroraPool::run_with`](crate::AuroraPool::run_with) and
/// [`AuroraPool::transaction_with`](crate::AuroraPool::transaction_with) retry work that
/// failed because of a failover.
///
/// Only failures for which [`Error::is_retryable`](crate::Error::is_retryable) holds are
/// retried (a lost connection, a demoted writer, a transaction in an unknown state); any
/// other error is returned at once. Retries pause 50 ms, doubling up to 1 s, with jitter.
///
/// ```
/// use std::time::Duration;
/// use aurora_pool::RetryPolicy;
///
/// let patient = RetryPolicy::new().timeout(Duration::from_secs(60));
/// let once = RetryPolicy::no_retry();
/// assert_eq!(once.attempts(), 1);
/// # drop(patient);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// Retries for as long as the pool's `failover_timeout`, without an attempt limit.
    pub const fn new() -> RetryPolicy {
        RetryPolicy {
            max_attempts: u32::MAX,
            timeout: None,
        }
    }

    /// One attempt: failover errors are returned to the caller as they are.
    pub const fn no_retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            timeout: None,
        }
    }

    /// At most `attempts` attempts (at least 1).
    pub const fn max_attempts(mut self, attempts: u32) -> RetryPolicy {
        self.max_attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// Stop retrying after `timeout` instead of the pool's `failover_timeout`.
    pub const fn timeout(mut self, timeout: Duration) -> RetryPolicy {
        self.timeout = Some(timeout);
        self
    }

    /// The attempt limit.
    pub const fn attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn time_limit(&self, failover_timeout: Duration) -> Duration {
        self.timeout
            .unwrap_or(failover_timeout)
            .min(crate::config::MAX_DURATION)
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
        assert_eq!(
            RetryPolicy::no_retry().time_limit(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            RetryPolicy::new()
                .timeout(Duration::from_secs(1))
                .time_limit(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }
}
