//! Whether work that failed may run again: decided from where its attempt stopped, never
//! from the error's kind alone (DESIGN invariant 12).

use super::backend::Attempt;
use super::outcome::Trace;
use super::transaction::Phase;

/// Where an attempt stopped, and what is known of the work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopped {
    pub(crate) kind: Attempt,
    /// Its connection was to a reader (a replica refuses writes).
    pub(crate) on_replica: bool,
    /// The caller declared the work safe to apply twice.
    pub(crate) idempotent: bool,
    pub(crate) phase: Phase,
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It cannot have been applied (or may be applied twice): run it again.
    Rerun,
    /// `COMMIT` of this transaction was on its way: ask the writer what became of it.
    Resolve(Trace),
    /// It may have been applied: never run again, tell the caller.
    Unknown,
    /// Not a lost connection: the error goes back as it is.
    Return,
}

impl Stopped {
    /// The verdict for an attempt whose connection was `lost` (a failover-class error, or
    /// its instance declared unreachable while it ran) or that failed otherwise.
    pub(crate) fn decide(&self, lost: bool) -> Verdict {
        if !lost {
            return Verdict::Return;
        }
        match (self.kind, self.phase) {
            (Attempt::Plain, _) if self.idempotent || self.on_replica => Verdict::Rerun,
            // The statements were sent and PostgreSQL finishes (and autocommits) a statement
            // whose client went away.
            (Attempt::Plain, _) => Verdict::Unknown,
            // Lost before COMMIT was sent: the server rolled back.
            (Attempt::Transaction(_), Phase::Work) => Verdict::Rerun,
            (Attempt::Transaction(_), Phase::Committing(Some(trace))) => Verdict::Resolve(trace),
            // No id: a read-only transaction wrote nothing (and is not asked), but one that
            // sent NOTIFY takes its id only at COMMIT (and a write through another server
            // takes none here).
            (Attempt::Transaction(options), Phase::Committing(None))
                if options.is_read_only() || self.idempotent =>
            {
                Verdict::Rerun
            }
            (Attempt::Transaction(_), Phase::Committing(None)) => Verdict::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::transaction::TransactionOptions;

    fn stopped(kind: Attempt, on_replica: bool, idempotent: bool, phase: Phase) -> Stopped {
        Stopped {
            kind,
            on_replica,
            idempotent,
            phase,
        }
    }

    /// Every cell of the table: kind × replica × idempotent × phase × lost.
    #[test]
    fn work_runs_again_only_when_it_cannot_have_been_applied() {
        let plain = Attempt::Plain;
        let writing = Attempt::Transaction(TransactionOptions::new());
        let read_only = Attempt::Transaction(TransactionOptions::new().read_only(true));
        use Phase::{Committing, Work};
        use Verdict::{Rerun, Resolve, Return, Unknown};
        let id = Trace::Id(crate::pool::outcome::TransactionId {
            xid: 7,
            incarnation: 20261206153512123456,
        });
        let marked = Trace::Marker(7);
        let table = [
            // kind, on a replica, idempotent, phase, verdict when lost
            (plain, false, false, Work, Unknown),
            (plain, true, false, Work, Rerun),
            (plain, false, true, Work, Rerun),
            (plain, true, true, Work, Rerun),
            (writing, false, false, Work, Rerun),
            (writing, false, true, Work, Rerun),
            (writing, false, false, Committing(Some(id)), Resolve(id)),
            (writing, false, true, Committing(Some(id)), Resolve(id)),
            (
                writing,
                false,
                false,
                Committing(Some(marked)),
                Resolve(marked),
            ),
            (writing, false, false, Committing(None), Unknown),
            (writing, false, true, Committing(None), Rerun),
            (read_only, false, false, Work, Rerun),
            (read_only, false, false, Committing(None), Rerun),
            (read_only, true, false, Committing(None), Rerun),
        ];
        for (kind, on_replica, idempotent, phase, verdict) in table {
            let at = stopped(kind, on_replica, idempotent, phase);
            assert_eq!(at.decide(true), verdict, "{at:?}");
            assert_eq!(at.decide(false), Return, "{at:?}: not lost");
        }
    }
}
