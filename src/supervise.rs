//! Supervised background tasks (the cluster monitor, a pool's reconciler and credential
//! renewer): a task that panics is logged and started again after a growing pause.

use std::future::Future;
use std::time::Duration;

/// 100 ms doubling per failure, at most 10 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(failures.min(7))).min(Duration::from_secs(10))
}

/// Runs the task `start` makes, and a new one (after [`backoff`]) whenever it panics, until
/// it ends by itself, `start` has nothing to run (its owner is gone), or `stop` resolves
/// during a pause. Aborting the supervisor aborts the task.
pub(crate) async fn supervise<F, Fut>(
    task: &'static str,
    cluster_id: String,
    mut start: F,
    stop: impl Future<Output = ()>,
) where
    F: FnMut() -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// Aborts the supervised task when the supervisor itself is aborted.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut stop = std::pin::pin!(stop);
    let mut restarts: u32 = 0;
    while let Some(future) = start() {
        let running = tokio::spawn(future);
        let _guard = AbortOnDrop(running.abort_handle());
        match running.await {
            Err(err) if err.is_panic() => {
                restarts = restarts.saturating_add(1);
                let pause = backoff(restarts);
                tracing::error!(
                    target: "aurora_pool",
                    cluster_id = %cluster_id,
                    task,
                    restarts,
                    pause_ms = pause.as_millis() as u64,
                    "background task panicked; restarting"
                );
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(50), Duration::from_secs(10));
    }
}
