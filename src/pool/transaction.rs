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
use std::time::Duration;

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

/// The server incarnation answering a query, as digits (`YYYYMMDDHH24MISSUS` of its
/// postmaster's start, UTC): a restart, a promoted replica or another server behind the same
/// name is another incarnation. Fully qualified, like all the crate's SQL.
const INCARNATION: &str = "pg_catalog.to_char(pg_catalog.timezone('UTC', pg_catalog.pg_postmaster_start_time()), 'YYYYMMDDHH24MISSUS')";

/// Reads, just before `COMMIT`, the server incarnation and the transaction's id (absent when
/// the transaction took none): `"<incarnation> <xid>"`.
pub(crate) fn transaction_id_query() -> String {
    format!(
        "SELECT pg_catalog.concat_ws(' ', {INCARNATION}, pg_catalog.txid_current_if_assigned())"
    )
}

/// Asks the writer what became of transaction `xid`, and which incarnation answers:
/// `"<incarnation> <status>"` (no status when the id is too old to tell).
pub(crate) fn status_query(xid: u64) -> String {
    format!("SELECT pg_catalog.concat_ws(' ', {INCARNATION}, pg_catalog.txid_status({xid}))")
}

/// A transaction's id, with the server incarnation that assigned it.
///
/// An id is unique only within the incarnation that handed it out: assigning one writes no
/// WAL, so when a server dies before a transaction's records reached durable storage, the
/// next incarnation (a restart in place, a promoted replica, plausibly a new Aurora writer)
/// hands the same id to another transaction, and `txid_status()` then tells that one's
/// outcome. So only the incarnation that assigned the id is believed when it says
/// `committed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransactionId {
    pub(crate) xid: u64,
    pub(crate) incarnation: u128,
}

/// How long a transaction's outcome stays "in progress" before asking again: the old
/// backend may not have noticed yet that its client is gone.
pub(crate) const IN_PROGRESS_PAUSE: Duration = Duration::from_millis(100);

/// Where an attempt of a transaction stands, for the one who has to decide after it failed
/// or was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `COMMIT` was not sent: if the connection is lost now, the server rolls back.
    Work,
    /// `COMMIT` is on its way or was sent, for the transaction with this id (`None`: it
    /// had taken none, or was read only and not asked).
    Committing(Option<TransactionId>),
}

/// What `txid_status()` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Committed,
    Aborted,
    InProgress,
    /// Too old, or never seen by this server (the writer that committed it was lost with it).
    Unknown,
}

impl Status {
    pub(crate) fn parse(text: Option<&str>) -> Status {
        match text {
            Some("committed") => Status::Committed,
            Some("aborted") => Status::Aborted,
            Some("in progress") => Status::InProgress,
            _ => Status::Unknown,
        }
    }
}

/// Splits `"<incarnation> <rest>"`, as the queries above return it.
fn split_incarnation<'t>(text: Option<&'t str>, query: &str) -> Result<(u128, Option<&'t str>)> {
    let malformed = || {
        Error::driver(format!(
            "{query} returned `{}`, not a server incarnation and a value",
            text.unwrap_or("NULL")
        ))
    };
    let text = text.ok_or_else(malformed)?.trim();
    let (incarnation, rest) = match text.split_once(' ') {
        Some((incarnation, rest)) => (incarnation, Some(rest.trim())),
        None => (text, None),
    };
    let incarnation = incarnation.parse().map_err(|_| malformed())?;
    Ok((incarnation, rest))
}

/// Parses what [`transaction_id_query`] returned: `None` when the transaction took no id.
pub(crate) fn parse_transaction_id(text: Option<&str>) -> Result<Option<TransactionId>> {
    let query = "the transaction id query";
    let (incarnation, xid) = split_incarnation(text, query)?;
    let Some(xid) = xid else {
        return Ok(None);
    };
    let xid = xid.parse().map_err(|_| {
        Error::driver(format!(
            "{query} returned `{xid}` for txid_current_if_assigned(), not a transaction id"
        ))
    })?;
    Ok(Some(TransactionId { xid, incarnation }))
}

/// Parses what [`status_query`] returned: the answering incarnation and the status.
pub(crate) fn parse_status(text: Option<&str>) -> Result<(u128, Status)> {
    let (incarnation, status) = split_incarnation(text, "txid_status()")?;
    Ok((incarnation, Status::parse(status)))
}

/// The error for a transaction whose outcome could not be found out.
pub(crate) fn unknown(xid: u64, why: &str, cause: Option<Error>) -> Error {
    let err = Error::failover(format!(
        "the connection was lost during COMMIT of transaction {xid}, and its outcome is unknown: {why}; it was not retried"
    ))
    .in_transaction();
    match cause {
        Some(cause) => err.with_source(cause),
        None => err,
    }
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
    fn statuses_and_ids() {
        assert_eq!(Status::parse(Some("committed")), Status::Committed);
        assert_eq!(Status::parse(Some("aborted")), Status::Aborted);
        assert_eq!(Status::parse(Some("in progress")), Status::InProgress);
        assert_eq!(Status::parse(None), Status::Unknown);
        let at = 20261206153512123456_u128;
        assert_eq!(
            parse_transaction_id(Some("20261206153512123456")).expect("none"),
            None
        );
        assert_eq!(
            parse_transaction_id(Some("20261206153512123456 742")).expect("id"),
            Some(TransactionId {
                xid: 742,
                incarnation: at
            })
        );
        assert!(parse_transaction_id(Some("20261206153512123456 7; DROP TABLE x")).is_err());
        assert!(parse_transaction_id(None).is_err());
        assert!(parse_transaction_id(Some("soon 742")).is_err());
        assert_eq!(
            parse_status(Some("20261206153512123456 committed")).expect("status"),
            (at, Status::Committed)
        );
        assert_eq!(
            parse_status(Some("20261206153512123456 in progress")).expect("status"),
            (at, Status::InProgress)
        );
        assert_eq!(
            parse_status(Some("20261206153512123456")).expect("status"),
            (at, Status::Unknown)
        );
        assert!(status_query(9).contains("pg_catalog.txid_status(9)"));
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
