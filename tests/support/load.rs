//! Callers under load, the way a fault test needs them: every path a user takes to the
//! database, several callers per path (more calls in flight than a pool has connections),
//! no timeout on the caller's side, and a record of every call to judge afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_pool::Role;

use super::flavour::Flavour;

/// Callers per path: with five paths, three times the default 10 connections of a pool.
pub const CALLERS_PER_PATH: usize = 6;

/// The ways a caller reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `writer()` / `reader()` taken when the pool opened and kept.
    KeptHandle,
    /// `writer()` / `reader()` taken for each call.
    FreshHandle,
    /// `acquire(role)`.
    Acquire,
    /// `run(role, ..)`.
    Run,
    /// `transaction(..)` (writer only).
    Transaction,
}

/// One call: when it started and ended, and the instance that answered (or the error).
struct Call {
    path: Path,
    started: Instant,
    ended: Option<Instant>,
    outcome: Option<Result<String, String>>,
}

/// Callers that run `sql` through `paths` in a loop, each call recorded.
pub struct Load {
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    callers: tokio::task::JoinSet<()>,
}

impl Load {
    pub fn start<F: Flavour>(pool: &F, role: Role, sql: &'static str, paths: &[Path]) -> Load {
        let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = tokio::task::JoinSet::new();
        let kept = pool.handle(role);
        for &path in paths {
            for _ in 0..CALLERS_PER_PATH {
                let (pool, kept, calls, stop) =
                    (pool.clone(), kept.clone(), calls.clone(), stop.clone());
                callers.spawn(async move {
                    while !stop.load(Ordering::Acquire) {
                        let index = {
                            let mut calls = calls.lock().unwrap();
                            calls.push(Call {
                                path,
                                started: Instant::now(),
                                ended: None,
                                outcome: None,
                            });
                            calls.len() - 1
                        };
                        // No timeout: a call that hangs stays unfinished in the record.
                        let outcome = match path {
                            Path::KeptHandle => F::handle_text(&kept, sql).await,
                            Path::FreshHandle => F::handle_text(&pool.handle(role), sql).await,
                            Path::Acquire => pool.query_text(role, sql).await.map_err(text),
                            Path::Run => pool.run_text(role, sql).await.map_err(text),
                            Path::Transaction => pool.transaction_text(sql).await.map_err(text),
                        };
                        {
                            let mut calls = calls.lock().unwrap();
                            calls[index].ended = Some(Instant::now());
                            calls[index].outcome = Some(outcome);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            }
        }
        Load {
            calls,
            stop,
            callers,
        }
    }

    pub fn in_flight(&self) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.ended.is_none()).count()
    }

    /// Asserts that more calls are in flight now than the pool has `connections`: the
    /// fault that begins `at` (named in the message) meets calls waiting for connections,
    /// not an idle pool. Returns how many.
    pub fn assert_in_flight_beyond(&self, connections: u32, at: &str) -> usize {
        let in_flight = self.in_flight();
        assert!(
            in_flight > connections as usize,
            "only {in_flight} calls in flight {at} (the pool has {connections} connections)"
        );
        in_flight
    }

    /// Calls that started before `at` and had not ended by `by`, per path.
    pub fn unfinished(&self, at: Instant, by: Instant) -> Vec<(Path, Duration)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.started < at && c.ended.is_none_or(|e| e > by))
            .map(|c| (c.path, at.saturating_duration_since(c.started)))
            .collect()
    }

    /// The first call through `path` answered by `instance`, as time after `from`.
    pub fn first_on(&self, path: Path, instance: &str, from: Instant) -> Option<Duration> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.path == path)
            .filter(|c| matches!(&c.outcome, Some(Ok(id)) if id == instance))
            .filter_map(|c| c.ended)
            .filter(|e| *e >= from)
            .min()
            .map(|e| e - from)
    }

    /// The paths whose first call answered by `instance` after `from` came later than
    /// `bound` (or never); prints each path's figure.
    pub fn late_paths(
        &self,
        test: &str,
        paths: &[Path],
        instance: &str,
        from: Instant,
        bound: Duration,
    ) -> Vec<Path> {
        let mut late = Vec::new();
        for &path in paths {
            let first = self.first_on(path, instance, from);
            eprintln!("{test}: {path:?}: first call on {instance} {first:?} after the move");
            if first.is_none_or(|after| after > bound) {
                late.push(path);
            }
        }
        late
    }

    /// Calls started after `from` that failed or were answered by another instance than
    /// `instance`.
    pub fn strays_after(&self, from: Instant, instance: &str) -> Vec<(Path, String)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.started >= from)
            .filter_map(|c| match &c.outcome {
                Some(Ok(id)) if id == instance => None,
                Some(Ok(id)) => Some((c.path, format!("answered by {id}"))),
                Some(Err(err)) => Some((c.path, err.clone())),
                None => Some((c.path, "never ended".to_owned())),
            })
            .collect()
    }

    /// The instance that answered each call, with when the call started.
    pub fn answers(&self) -> Vec<(Instant, String)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match &c.outcome {
                Some(Ok(id)) => Some((c.started, id.clone())),
                _ => None,
            })
            .collect()
    }

    /// The instances that answered calls, one entry per call.
    pub fn answered_by(&self) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match &c.outcome {
                Some(Ok(id)) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Stops the callers; every call still in flight must end within `bound`.
    pub async fn stop(mut self, bound: Duration) -> Load {
        self.stop.store(true, Ordering::Release);
        let ended = tokio::time::timeout(bound, async {
            while self.callers.join_next().await.is_some() {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "{} calls still hung {bound:?} after the load stopped",
            self.in_flight()
        );
        self
    }
}

fn text(err: aurora_pool::Error) -> String {
    format!("{err:#}")
}

/// Every path to the writer.
pub const WRITE_PATHS: [Path; 5] = [
    Path::KeptHandle,
    Path::FreshHandle,
    Path::Acquire,
    Path::Run,
    Path::Transaction,
];
