//! Retried work: the loop behind `run` and `transaction`, one attempt of each, and the
//! resolution of a transaction whose `COMMIT` answer was lost. It sits above the checkout
//! (it only asks the core for connections and for the fate of instances).

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::backend::{Attempt, Backend, Ended, Held, Retried};
use super::core::{PoolCore, RETRY_PAUSE};
use super::outcome::{self, Status, Trace};
use super::rerun::{Stopped, Verdict};
use super::transaction::Phase;
use crate::error::{Error, ErrorClass, Result};
use crate::retry::RetryPolicy;
use crate::topology::{Instance, Role};

/// Longest wait for a `ROLLBACK` after the work failed; a connection that does not roll
/// back in time is closed instead.
const ROLLBACK_WAIT: Duration = Duration::from_secs(5);

/// What became of a transaction whose COMMIT was lost.
enum Resolved {
    Committed,
    /// Rolled back: the error says why it may run again.
    Aborted(Error),
    /// Not known: never run again.
    Unknown(Error),
}

/// Runs `work` on a checkout for `role`, and again on a fresh checkout only when it cannot
/// have been applied ([`Stopped::decide`]): a failure before it was sent, a transaction lost
/// before `COMMIT` or found rolled back, work on a replica, or work the caller declared
/// idempotent. Work whose connection was lost after it was sent is
/// [`Error::is_outcome_unknown`]. Each wait for an instance is bounded by
/// `failover_timeout`; the work itself only by the policy's time limit, when the caller set
/// one.
pub(crate) async fn retry<B: Backend, T: Send>(
    core: &PoolCore<B>,
    policy: RetryPolicy,
    role: Role,
    kind: Attempt,
    work: &mut impl Retried<B::Connection, T>,
) -> Result<T> {
    retry_unexplained(core, policy, role, kind, work)
        .await
        .map_err(|err| {
            if err.is_outcome_unknown() {
                crate::metrics::outcome_unknown(&core.config().cluster_id);
            }
            core.explained(err)
        })
}

/// [`retry`] before its failover-class errors get the pool's [`crate::ErrorContext`].
async fn retry_unexplained<B: Backend, T: Send>(
    core: &PoolCore<B>,
    policy: RetryPolicy,
    role: Role,
    kind: Attempt,
    work: &mut impl Retried<B::Connection, T>,
) -> Result<T> {
    let started = Instant::now();
    let limit = policy.time_limit();
    let call_deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let failover_timeout = core.config().failover_timeout;
    // A wait for an instance: `failover_timeout` from now, within the caller's limit.
    let wait_deadline = || {
        let wait = tokio::time::Instant::now() + failover_timeout;
        call_deadline.map_or(wait, |deadline| deadline.min(wait))
    };
    let gave_up = |attempt: u32, cause: Option<Error>| {
        let err = Error::failover_failed(format!(
            "gave up after {attempt} attempts in {:?} (the retry policy's time limit, {limit:?})",
            started.elapsed()
        ));
        match cause {
            Some(cause) => err.with_source(cause),
            None => err,
        }
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // At debug level: a span per call costs the checkout path nothing while the
        // subscriber filters the crate at info (its callsite is then never enabled).
        let span = tracing::debug_span!(
            target: "aurora_pool",
            "aurora_pool.attempt",
            attempt,
            role = ?role,
            instance = tracing::field::Empty,
        );
        let (connection, instance) = checkout_waiting(core, role, wait_deadline())
            .instrument(span.clone())
            .await?;
        span.record("instance", instance.id());
        if B::is_broken(&connection) {
            // Closed while idle (its server went away): nothing was sent, take another.
            B::discard(connection);
            attempt -= 1;
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        let mut held = Held::<B>::new(connection);
        let used_since = Instant::now();
        let phase = std::sync::Mutex::new(Phase::Work);
        // The work's value once COMMIT is on its way: a lost COMMIT that turns out
        // committed returns it.
        let value = std::sync::Mutex::new(None);
        let cut_off = async {
            match call_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let outcome = match held.get() {
            Some(connection) => tokio::select! {
                ended = attempt_once(core, role, kind, connection, work, &phase, &value)
                    .instrument(span) => Some(ended),
                _ = core.instance_lost(&instance, role) => {
                    Some(Ended {
                        result: Err(Error::failover(format!(
                            "instance {} was declared unreachable (or lost its role) while the work was running",
                            instance.id()
                        ))),
                        reusable: false,
                    })
                }
                _ = cut_off => None,
            },
            None => None,
        };
        let stopped = Stopped {
            kind,
            on_replica: instance.role() == Role::Reader,
            idempotent: policy.is_idempotent(),
            phase: *phase.lock().unwrap_or_else(PoisonError::into_inner),
        };
        crate::metrics::connection_used(
            &core.config().cluster_id,
            instance.id(),
            role,
            used_since.elapsed(),
        );
        let committed_value = value.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(ended) = outcome else {
            // Cut off by the caller's time limit: its connection is closed (the server rolls
            // back unless COMMIT was already sent; a statement outside a transaction runs on).
            drop(held);
            return Err(cut_off_error(&stopped, limit.unwrap_or_default()));
        };
        if ended.reusable {
            held.release();
        } else {
            drop(held);
        }
        let err = match ended.result {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        // A write refused as read-only (25006) on the writer is a demoted writer only when
        // the writer says so; a writer read-only by configuration (a maintenance
        // `default_transaction_read_only`, `SET TRANSACTION READ ONLY` in the work) gets
        // the driver's error at once, not `failover_timeout` of re-runs.
        let err = if err.is_failover()
            && err.class() == ErrorClass::ReadOnly
            && still_the_writer(core, &instance).await
        {
            err.into_driver()
        } else {
            err
        };
        let lost = err.is_failover() || err.is_transaction_state_unknown();
        let err = match stopped.decide(lost) {
            Verdict::Return => err,
            Verdict::Rerun => err,
            Verdict::Unknown => return Err(unknown_error(&stopped, err)),
            // The connection went during COMMIT: find out what happened before anything
            // is run again.
            Verdict::Resolve(trace) => {
                match resolve_commit(core, kind, trace, wait_deadline(), err).await {
                    Resolved::Committed => match committed_value {
                        Some(value) => return Ok(value),
                        None => {
                            return Err(Error::failover(
                                "the transaction committed but its value was not kept",
                            )
                            .in_transaction());
                        }
                    },
                    Resolved::Aborted(err) => err,
                    Resolved::Unknown(err) => return Err(err),
                }
            }
        };
        let conflict =
            matches!(kind, Attempt::Transaction(options) if options.retries_conflict(&err));
        if !lost && !conflict {
            return Err(err);
        }
        if attempt >= policy.attempts() {
            return Err(err);
        }
        if call_deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            return Err(gave_up(attempt, Some(err)));
        }
        tracing::debug!(
            target: "aurora_pool",
            cluster_id = %core.config().cluster_id,
            attempt,
            instance = instance.id(),
            error = %format_args!("{err:#}"),
            "running the work again: it cannot have been applied"
        );
        let pause = RetryPolicy::pause(attempt);
        tokio::time::sleep(limit.map_or(pause, |limit| pause.min(limit))).await;
    }
}

/// Whether `instance` still answers as the writer (`pg_is_in_recovery()` false) on a writer
/// checkout, within `connect_timeout`; `false` when it cannot tell.
async fn still_the_writer<B: Backend>(core: &PoolCore<B>, instance: &Instance) -> bool {
    let limit = core.config().connect_timeout;
    let asked = async {
        let deadline = tokio::time::Instant::now() + limit;
        let (connection, writer) = core.checkout_until(Role::Writer, deadline).await.ok()?;
        let mut held = Held::<B>::new(connection);
        if writer.id() != instance.id() {
            return None;
        }
        let answer = B::query_value(held.get()?, IN_RECOVERY.to_owned())
            .await
            .ok()?;
        held.release();
        Some(answer.as_deref() == Some("false"))
    };
    tokio::time::timeout(limit, asked)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether the instance is a replica, as text.
const IN_RECOVERY: &str = "SELECT pg_catalog.pg_is_in_recovery()::pg_catalog.text";

/// A checkout for retried work: one that fails for a failover reason (the writer silent
/// to this process with no other claimant, whose plain checkouts fail at once) is tried
/// again until `deadline`, since nothing was sent yet; `run` and `transaction` wait for
/// the writer as documented.
async fn checkout_waiting<B: Backend>(
    core: &PoolCore<B>,
    role: Role,
    deadline: tokio::time::Instant,
) -> Result<(B::Connection, std::sync::Arc<Instance>)> {
    #[cfg(feature = "metrics")]
    let (started, _pending) = (
        std::time::Instant::now(),
        crate::metrics::Pending::start(&core.config().cluster_id, role),
    );
    let result = checkout_waiting_unrecorded(core, role, deadline).await;
    #[cfg(feature = "metrics")]
    core.record_checkout(role, started, &result);
    result
}

async fn checkout_waiting_unrecorded<B: Backend>(
    core: &PoolCore<B>,
    role: Role,
    deadline: tokio::time::Instant,
) -> Result<(B::Connection, std::sync::Arc<Instance>)> {
    let mut routing = core.routing_changes();
    loop {
        match core.checkout_until(role, deadline).await {
            Err(err) if err.is_failover() => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(core.failover_failed(role, Some(err)));
                }
                tokio::select! {
                    _ = routing.changed() => {}
                    _ = tokio::time::sleep(RETRY_PAUSE * 4) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            other => return other,
        }
    }
}

/// The error of work whose connection was lost after it was sent (`err`), when it may
/// have been applied.
fn unknown_error(stopped: &Stopped, err: Error) -> Error {
    match stopped.phase {
        Phase::Committing(_) => Error::failover(
            "the connection was lost during COMMIT of a transaction that had taken no id when it was read (it may have sent NOTIFY, or written through another server): its outcome is unknown; it was not run again",
        )
        .in_transaction()
        .with_source(err),
        Phase::Work => err.outcome_unknown(),
    }
}

/// The error of work the caller's time limit cut off.
fn cut_off_error(stopped: &Stopped, limit: Duration) -> Error {
    let passed = format!("the retry policy's time limit ({limit:?}) passed while the work ran");
    match (stopped.kind, stopped.phase) {
        (_, Phase::Committing(Some(trace))) => outcome::unknown(
            &trace,
            "the retry policy's time limit passed before it could be asked",
            None,
        ),
        (Attempt::Transaction(options), Phase::Committing(None)) if !options.is_read_only() => {
            Error::failover(format!(
                "{passed}, with COMMIT on its way: its outcome is unknown"
            ))
            .in_transaction()
        }
        (Attempt::Transaction(_), _) => {
            Error::timeout(format!("{passed}; the transaction was rolled back"))
        }
        (Attempt::Plain, _) if stopped.on_replica => {
            Error::timeout(format!("{passed}; it was abandoned on a reader"))
        }
        (Attempt::Plain, _) => Error::unknown_outcome(format!(
            "{passed}; it was abandoned on the writer, where it may still complete"
        )),
    }
}

/// Finds out on the writer whether the transaction whose COMMIT was lost committed, from
/// the trace it left ([`Trace`]).
///
/// For an id, `committed` is believed only from the server incarnation that assigned it
/// (see [`outcome::TransactionId`]); from any other the id may have been handed out again
/// and the outcome is unknown. `aborted` is believed from any: had the transaction
/// committed durably, its id would not have been reissued and every later incarnation
/// would say `committed`. A marker's answer is definite on any writer.
async fn resolve_commit<B: Backend>(
    core: &PoolCore<B>,
    kind: Attempt,
    trace: Trace,
    deadline: tokio::time::Instant,
    lost: Error,
) -> Resolved {
    let table = match kind {
        Attempt::Transaction(options) => options.marker_table().ok().flatten(),
        Attempt::Plain => None,
    };
    let question = match trace.question(table.as_ref()) {
        Ok(question) => question,
        Err(err) => {
            return Resolved::Unknown(outcome::unknown(&trace, "it cannot be asked", Some(err)));
        }
    };
    let mut last = lost;
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Resolved::Unknown(outcome::unknown(
                &trace,
                "no writer answered within failover_timeout or the retry policy's time limit",
                Some(last),
            ));
        }
        let asked = async {
            let (connection, _) = core.checkout_until(Role::Writer, deadline).await?;
            let mut held = Held::<B>::new(connection);
            let Some(connection) = held.get() else {
                return Err(Error::closed());
            };
            let answer = B::query_value(connection, question.clone()).await?;
            held.release();
            trace.read(answer.as_deref())
        };
        // Each question bounded: the writer asked may be the silent one.
        let bound = (tokio::time::Instant::now() + core.config().connect_timeout).min(deadline);
        let asked = tokio::time::timeout_at(bound, asked)
            .await
            .unwrap_or_else(|_| {
                Err(Error::timeout(
                    "asking the writer what became of the transaction took too long",
                ))
            });
        let status = match asked {
            Ok(status) => status,
            Err(err)
                if err.is_failover()
                    || err.is_connect()
                    || err.is_timeout()
                    || err.is_busy()
                    || err.class() == ErrorClass::Network =>
            {
                last = err;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            // 22023: "transaction ID is in the future": this writer never saw it.
            Err(err) if err.sqlstate() == Some("22023") => Status::Unknown,
            Err(err) => {
                return Resolved::Unknown(outcome::unknown(
                    &trace,
                    "asking the writer failed",
                    Some(err),
                ));
            }
        };
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %core.config().cluster_id,
            transaction = %trace,
            status = ?status,
            "outcome of a transaction whose COMMIT was lost"
        );
        match status {
            Status::Committed => return Resolved::Committed,
            Status::Reissued => {
                return Resolved::Unknown(outcome::unknown(
                    &trace,
                    "the writer that answers is not the server process that assigned the id (it restarted, or another instance took over), and the id may have been handed out again",
                    Some(last),
                ));
            }
            Status::Aborted => {
                return Resolved::Aborted(
                    Error::failover(format!(
                        "the connection was lost during COMMIT of {trace}, which the server rolled back"
                    ))
                    .with_source(last),
                );
            }
            Status::InProgress => tokio::time::sleep(outcome::IN_PROGRESS_PAUSE).await,
            Status::Unknown => {
                return Resolved::Unknown(outcome::unknown(
                    &trace,
                    "the writer does not know it (too old, or lost with the old writer)",
                    Some(last),
                ));
            }
        }
    }
}

/// Ends an attempt that failed with `err` before `COMMIT` was sent: a lost connection rolled
/// back by itself (the server ends a transaction whose client went) and goes; otherwise the
/// transaction is rolled back here, and a connection that cannot roll back in time is
/// closed, which rolls back too.
async fn failed_before_commit<B: Backend, T>(
    connection: &mut B::Connection,
    err: Error,
) -> Ended<T> {
    let reusable = !err.is_failover()
        && matches!(
            tokio::time::timeout(ROLLBACK_WAIT, B::rollback(connection)).await,
            Ok(Ok(()))
        );
    Ended {
        result: Err(err),
        reusable,
    }
}

/// One attempt of `work`, in a transaction for [`Attempt::Transaction`]. `phase` tells
/// whether COMMIT was sent, and `value` keeps the work's value once it was.
async fn attempt_once<B: Backend, T: Send>(
    core: &PoolCore<B>,
    role: Role,
    kind: Attempt,
    connection: &mut B::Connection,
    work: &mut impl Retried<B::Connection, T>,
    phase: &std::sync::Mutex<Phase>,
    value: &std::sync::Mutex<Option<T>>,
) -> Ended<T> {
    let options = match kind {
        Attempt::Plain => {
            let result = work.attempt(connection).await;
            // A lost connection is closed; one the server answered with an error is fine.
            let reusable = !result.as_ref().is_err_and(Error::is_failover);
            return Ended { result, reusable };
        }
        Attempt::Transaction(options) => options,
    };
    let role = kind.classified_as(role);
    let marker_table = match options.marker_table() {
        Ok(table) => table,
        Err(err) => {
            return Ended {
                result: Err(err),
                reusable: true,
            };
        }
    };
    if let Err(err) = B::begin(connection, options.begin_statement()).await {
        return Ended {
            result: Err(core.classify_for(role, err)),
            reusable: false,
        };
    }
    let marker = match &marker_table {
        Some(table) => {
            let marker = outcome::new_marker();
            if let Err(err) = B::query_value(connection, table.mark(marker)).await {
                let err = core.classify_for(role, err);
                let err = match err.sqlstate() {
                    Some("42P01" | "42703" | "42501") => err.with_hint(
                        "the outcome marker table is missing, unlike the one TransactionOptions::outcome_marker describes, or not writable",
                    ),
                    _ => err,
                };
                return failed_before_commit::<B, T>(connection, err).await;
            }
            Some(marker)
        }
        None => None,
    };
    let done = match work.attempt(connection).await {
        Ok(done) => done,
        // The caller's own error comes back unchanged, rolled back or not.
        Err(err) => return failed_before_commit::<B, T>(connection, err).await,
    };
    // A marked transaction is resolved by its marker, and a read-only one has nothing to
    // resolve: the id read is skipped for both.
    let trace = match marker {
        Some(marker) => Ok(Some(Trace::Marker(marker))),
        None if options.is_read_only() => Ok(None),
        None => match B::query_value(connection, outcome::transaction_id_query()).await {
            Ok(text) => outcome::parse_transaction_id(text.as_deref()).map(|id| id.map(Trace::Id)),
            Err(err) => Err(core.classify_for(role, err)),
        },
    };
    let trace = match trace {
        Ok(trace) => trace,
        Err(err) => return failed_before_commit::<B, T>(connection, err).await,
    };
    *phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::Committing(trace);
    *value.lock().unwrap_or_else(PoisonError::into_inner) = Some(done);
    match B::commit(connection).await {
        Ok(()) => {
            let done = value.lock().unwrap_or_else(PoisonError::into_inner).take();
            match done {
                Some(done) => Ended {
                    result: Ok(done),
                    reusable: true,
                },
                None => Ended {
                    result: Err(Error::failover("the committed value was taken").in_transaction()),
                    reusable: false,
                },
            }
        }
        // A failed COMMIT the server answered (a serialization failure, a deferred
        // constraint) rolled back; the driver's bookkeeping may not know, so the
        // connection goes either way.
        Err(err) => Ended {
            result: Err(core.classify_for(role, err)),
            reusable: false,
        },
    }
}
