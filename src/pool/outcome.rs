//! What a transaction leaves behind that tells, after its `COMMIT` answer was lost, whether
//! it committed: its id with the server incarnation that assigned it (always), or a marker
//! row it wrote (on request). The SQL that leaves and reads each trace, and what an answer
//! means.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

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

/// Every statement of this module's whose text the crate alone writes (for the check that
/// they name only `pg_catalog` objects).
#[cfg(test)]
pub(crate) fn internal_statements() -> Vec<String> {
    let id = Trace::Id(TransactionId {
        xid: 1,
        incarnation: 1,
    });
    vec![transaction_id_query(), id.question(None).expect("question")]
}

/// How long a transaction's outcome stays "in progress" before asking again: the old
/// backend may not have noticed yet that its client is gone.
pub(crate) const IN_PROGRESS_PAUSE: Duration = Duration::from_millis(100);

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

/// The table of outcome markers a transaction writes its marker row to
/// ([`TransactionOptions::outcome_marker`](crate::TransactionOptions::outcome_marker)), as
/// validated and quoted SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MarkerTable {
    quoted: String,
}

impl MarkerTable {
    /// Checks `name` (`table` or `schema.table`, as stored: lower case unless it was
    /// created quoted) and quotes each part, so that nothing in it is read as SQL.
    pub(crate) fn parse(name: &str) -> Result<MarkerTable> {
        let refuse = |why: &str| {
            Error::config(
                "outcome_marker",
                format!("`{name}` is not a table name the crate can use: {why}"),
            )
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(refuse("give `table` or `schema.table`"));
        }
        let mut quoted = Vec::with_capacity(parts.len());
        for part in parts {
            let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
            if part.is_empty() || part.len() > 63 {
                return Err(refuse("each part is 1 to 63 characters"));
            }
            if !part.chars().all(allowed) || part.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(refuse(
                    "each part is letters, digits, `_` and `$`, not starting with a digit",
                ));
            }
            quoted.push(format!("\"{part}\""));
        }
        Ok(MarkerTable {
            quoted: quoted.join("."),
        })
    }

    /// The row a marked transaction writes first: visible to anyone only once it committed.
    pub(crate) fn mark(&self, marker: u128) -> String {
        format!(
            "INSERT INTO {} (id, by_transaction) VALUES ('{marker:032x}', true)",
            self.quoted
        )
    }

    /// Whether the transaction marked `marker` committed, told by trying to write its
    /// marker's id again as a tombstone: the insert waits for a transaction still running
    /// that holds the id, finds its row once it committed (`true`), or writes the tombstone
    /// (`false`), after which that transaction can never commit. Asked again (an earlier
    /// question abandoned mid-way may have left the tombstone), the tombstone answers
    /// `false` again.
    pub(crate) fn lookup(&self, marker: u128) -> String {
        format!(
            "INSERT INTO {table} AS m (id, by_transaction) VALUES ('{marker:032x}', false) \
             ON CONFLICT (id) DO UPDATE SET by_transaction = m.by_transaction \
             RETURNING m.by_transaction::pg_catalog.text",
            table = self.quoted
        )
    }
}

/// A new marker id: unique, never predictable enough to be planted (a 128-bit random).
pub(crate) fn new_marker() -> u128 {
    fastrand::u128(..)
}

/// What a transaction left that tells its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trace {
    /// Its id and the incarnation that assigned it.
    Id(TransactionId),
    /// Its marker row, in the options' marker table.
    Marker(u128),
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trace::Id(id) => write!(f, "transaction {}", id.xid),
            Trace::Marker(marker) => write!(f, "the transaction marked {marker:032x}"),
        }
    }
}

impl Trace {
    /// The question that tells what became of the transaction (`table` for a marker).
    pub(crate) fn question(&self, table: Option<&MarkerTable>) -> Result<String> {
        match (self, table) {
            (Trace::Id(id), _) => Ok(format!(
                "SELECT pg_catalog.concat_ws(' ', {INCARNATION}, pg_catalog.txid_status({}))",
                id.xid
            )),
            (Trace::Marker(marker), Some(table)) => Ok(table.lookup(*marker)),
            (Trace::Marker(_), None) => Err(Error::driver("a marker without its table")),
        }
    }

    /// What the answer to [`question`](Trace::question) says.
    pub(crate) fn read(&self, answer: Option<&str>) -> Result<Status> {
        match self {
            Trace::Id(id) => {
                let (incarnation, status) = split_incarnation(answer, "txid_status()")?;
                Ok(match Status::parse(status) {
                    Status::Committed if incarnation != id.incarnation => Status::Reissued,
                    status => status,
                })
            }
            Trace::Marker(_) => match answer {
                Some("true") => Ok(Status::Committed),
                Some("false") => Ok(Status::Aborted),
                other => Err(Error::driver(format!(
                    "the outcome marker lookup returned `{}`, not true or false",
                    other.unwrap_or("NULL")
                ))),
            },
        }
    }
}

/// What the writer said of a transaction whose `COMMIT` answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Committed,
    Aborted,
    InProgress,
    /// "Committed", from another incarnation than the one that assigned the id: it may
    /// be another transaction's commit under a reissued id.
    Reissued,
    /// Too old, or never seen by this server (the writer that committed it was lost with it).
    Unknown,
}

impl Status {
    fn parse(text: Option<&str>) -> Status {
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

/// The error for a transaction whose outcome could not be found out.
pub(crate) fn unknown(trace: &Trace, why: &str, cause: Option<Error>) -> Error {
    let err = Error::failover(format!(
        "the connection was lost during COMMIT of {trace}, and its outcome is unknown: {why}; it was not retried"
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

    const AT: u128 = 20261206153512123456;

    #[test]
    fn ids_come_with_their_incarnation() {
        assert_eq!(
            parse_transaction_id(Some("20261206153512123456")).expect("none"),
            None
        );
        assert_eq!(
            parse_transaction_id(Some("20261206153512123456 742")).expect("id"),
            Some(TransactionId {
                xid: 742,
                incarnation: AT
            })
        );
        assert!(parse_transaction_id(Some("20261206153512123456 7; DROP TABLE x")).is_err());
        assert!(parse_transaction_id(None).is_err());
        assert!(parse_transaction_id(Some("soon 742")).is_err());
    }

    /// `committed` is believed only from the incarnation that assigned the id.
    #[test]
    fn a_commit_is_believed_only_from_the_same_incarnation() {
        let trace = Trace::Id(TransactionId {
            xid: 9,
            incarnation: AT,
        });
        let question = trace.question(None).expect("question");
        assert!(question.contains("pg_catalog.txid_status(9)"), "{question}");
        let read = |answer: &str| trace.read(Some(answer)).expect("status");
        assert_eq!(read("20261206153512123456 committed"), Status::Committed);
        assert_eq!(read("20261206153599000000 committed"), Status::Reissued);
        assert_eq!(read("20261206153599000000 aborted"), Status::Aborted);
        assert_eq!(read("20261206153512123456 in progress"), Status::InProgress);
        assert_eq!(read("20261206153512123456"), Status::Unknown);
        assert!(trace.read(None).is_err());
    }

    #[test]
    fn markers_are_quoted_and_read() {
        let table = MarkerTable::parse("app.aurora_pool_outcomes").expect("valid");
        let marker = Trace::Marker(0xabc);
        let question = marker.question(Some(&table)).expect("question");
        assert!(
            question.starts_with("INSERT INTO \"app\".\"aurora_pool_outcomes\" AS m"),
            "{question}"
        );
        assert!(
            question.contains("'00000000000000000000000000000abc'"),
            "{question}"
        );
        assert!(
            table
                .mark(0xabc)
                .contains("'00000000000000000000000000000abc', true")
        );
        assert_eq!(marker.read(Some("true")).expect("read"), Status::Committed);
        assert_eq!(marker.read(Some("false")).expect("read"), Status::Aborted);
        assert!(marker.read(None).is_err());
        assert!(marker.question(None).is_err());
        for bad in ["", "a.b.c", "x; DROP TABLE y", "t\"", "1t", "a..b", "ünï"] {
            let err = MarkerTable::parse(bad).expect_err(bad);
            assert_eq!(err.parameter(), Some("outcome_marker"), "{err}");
        }
        assert_ne!(new_marker(), new_marker());
    }
}
