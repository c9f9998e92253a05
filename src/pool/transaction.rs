//! How `transaction` runs: its options, the phases an attempt goes through, and how the
//! outcome of a `COMMIT` whose answer was lost is found out instead of guessed.
//!
//! The rule: a transaction is retried only when it is known not to have committed. A
//! connection lost before `COMMIT` was sent means the server rolled back. A connection lost
//! during `COMMIT` means nothing yet: the transaction's id, read just before the `COMMIT`
//! with the server incarnation that assigned it, is looked up on the writer with
//! `txid_status()`; committed is success when the same incarnation says so, aborted may be
//! retried, anything else is [`Error::is_transaction_state_unknown`]. A transaction declared
//! read only skips the read: it has nothing to resolve.

use std::fmt;

use super::outcome::{MarkerTable, Trace};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// The isolation level of a transaction (`BEGIN ISOLATION LEVEL ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `READ COMMITTED`, PostgreSQL's default.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IsolationLevel::ReadCommitted => "READ COMMITTED",
            IsolationLevel::RepeatableRead => "REPEATABLE READ",
            IsolationLevel::Serializable => "SERIALIZABLE",
        })
    }
}

/// How [`transaction_with`](crate::AuroraPool::transaction_with) runs its work: the retry
/// policy, the isolation level, `READ ONLY`, and whether serialization failures are retried.
///
/// A [`RetryPolicy`] converts into the default options with that policy.
///
/// ```
/// use aurora_pool::{IsolationLevel, RetryPolicy, TransactionOptions};
/// use std::time::Duration;
///
/// let options = TransactionOptions::new()
///     .isolation(IsolationLevel::Serializable)
///     .retry_serialization_failures(true)
///     .policy(RetryPolicy::new().timeout(Duration::from_secs(5)));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransactionOptions {
    policy: RetryPolicy,
    isolation: Option<IsolationLevel>,
    read_only: bool,
    retry_serialization_failures: bool,
    outcome_marker: Option<&'static str>,
}

impl TransactionOptions {
    /// The defaults: [`RetryPolicy::new`], the server's isolation level, read-write, and
    /// serialization failures returned to the caller.
    pub const fn new() -> TransactionOptions {
        TransactionOptions {
            policy: RetryPolicy::new(),
            isolation: None,
            read_only: false,
            retry_serialization_failures: false,
            outcome_marker: None,
        }
    }

    /// How often and how long the transaction is retried after a failover.
    pub const fn policy(mut self, policy: RetryPolicy) -> TransactionOptions {
        self.policy = policy;
        self
    }

    /// The isolation level (default: the server's, usually `READ COMMITTED`).
    pub const fn isolation(mut self, level: IsolationLevel) -> TransactionOptions {
        self.isolation = Some(level);
        self
    }

    /// Runs the transaction `READ ONLY`: a write in it fails with `25006` at once, as the
    /// driver's error (never taken for a demoted writer).
    pub const fn read_only(mut self, read_only: bool) -> TransactionOptions {
        self.read_only = read_only;
        self
    }

    /// Runs the work again (within the policy) when it fails with a serialization failure
    /// (`40001`) or a deadlock (`40P01`): the server rolled it back, so this is safe, but it
    /// runs the work more than once, so it is off unless asked for.
    pub const fn retry_serialization_failures(mut self, retry: bool) -> TransactionOptions {
        self.retry_serialization_failures = retry;
        self
    }

    /// Writes a marker row to `table` first thing in the transaction, so that its outcome
    /// can be told after any crash (opt-in; off by default).
    ///
    /// Without it, a `COMMIT` whose answer was lost is resolved through the transaction's
    /// id, which only the server process that assigned it can vouch for: after that writer
    /// restarted or another instance took over, a transaction the server reports committed
    /// comes back as [`Error::is_transaction_state_unknown`], since the id may have been
    /// handed to another transaction. With a marker the answer is definite on any writer
    /// that has the data: the crate tries to write the marker's id again as a tombstone,
    /// which waits for the transaction if it still runs, finds its row if it committed, and
    /// otherwise makes sure it never will. Cost: one `INSERT` per transaction instead of the
    /// id read (the same number of round trips), and one row per transaction in `table`,
    /// which is yours to prune. A read-only transaction writes no marker.
    ///
    /// The table (give `table` or `schema.table` as stored; it is quoted, not searched for
    /// through a schema an attacker controls when qualified):
    ///
    /// ```sql
    /// CREATE TABLE aurora_pool_outcomes (
    ///     id text PRIMARY KEY,
    ///     by_transaction boolean NOT NULL,
    ///     written_at timestamptz NOT NULL DEFAULT now()
    /// );
    /// -- pruned now and then; a lookup happens within failover_timeout of its COMMIT
    /// DELETE FROM aurora_pool_outcomes WHERE written_at < now() - interval '1 day';
    /// ```
    ///
    /// ```
    /// use aurora_pool::TransactionOptions;
    ///
    /// let options = TransactionOptions::new().outcome_marker("app.aurora_pool_outcomes");
    /// # let _ = options;
    /// ```
    pub const fn outcome_marker(mut self, table: &'static str) -> TransactionOptions {
        self.outcome_marker = Some(table);
        self
    }

    /// The marker table, checked, for a transaction that writes (`None` otherwise).
    pub(crate) fn marker_table(&self) -> Result<Option<MarkerTable>> {
        match self.outcome_marker {
            Some(table) if !self.read_only => MarkerTable::parse(table).map(Some),
            _ => Ok(None),
        }
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.policy
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `err` is a serialization failure this transaction retries.
    pub(crate) fn retries_conflict(&self, err: &Error) -> bool {
        self.retry_serialization_failures && matches!(err.sqlstate(), Some("40001" | "40P01"))
    }

    /// The statement that opens the transaction.
    pub(crate) fn begin_statement(&self) -> String {
        let mut statement = String::from("BEGIN");
        if let Some(level) = self.isolation {
            statement.push_str(" ISOLATION LEVEL ");
            statement.push_str(&level.to_string());
        }
        if self.read_only {
            statement.push_str(" READ ONLY");
        }
        statement
    }
}

impl From<RetryPolicy> for TransactionOptions {
    fn from(policy: RetryPolicy) -> TransactionOptions {
        TransactionOptions::new().policy(policy)
    }
}

/// Where an attempt of a transaction stands, for the one who has to decide after it failed
/// or was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `COMMIT` was not sent: if the connection is lost now, the server rolls back.
    Work,
    /// `COMMIT` is on its way or was sent, for the transaction that left this trace
    /// (`None`: it had taken no id, or was read only and not asked).
    Committing(Option<Trace>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statements() {
        assert_eq!(TransactionOptions::new().begin_statement(), "BEGIN");
        assert_eq!(
            TransactionOptions::new()
                .isolation(IsolationLevel::Serializable)
                .read_only(true)
                .begin_statement(),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"
        );
        assert_eq!(
            TransactionOptions::new()
                .isolation(IsolationLevel::RepeatableRead)
                .begin_statement(),
            "BEGIN ISOLATION LEVEL REPEATABLE READ"
        );
    }

    #[test]
    fn conflicts_are_retried_only_on_request() {
        let conflict = Error::driver("x").with_sqlstate(Some("40001".into()));
        assert!(!TransactionOptions::new().retries_conflict(&conflict));
        assert!(
            TransactionOptions::new()
                .retry_serialization_failures(true)
                .retries_conflict(&conflict)
        );
    }
}
