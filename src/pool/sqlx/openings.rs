//! Which instance each connection of a sqlx pool is to, told by when it was opened.
//!
//! sqlx gives its hooks no handle on a pooled connection that lasts (no id, no address, no
//! place to keep a tag): only the connection's age. The crate's `after_connect` check learns
//! the connection's instance (the dialect's instance check) and records it with the time, as
//! its very last step; sqlx stamps the connection's creation time right after the hook
//! returns, in the same poll. At checkout and on return, `now - age` is therefore a moment
//! just after the record: the latest record at or before it, within [`MATCH_WINDOW`], is the
//! connection's. A connection no record matches (its record was pushed out, its dialect names
//! no instance, or the thread was preempted between the two stamps for longer than the
//! window) is treated as of unknown instance: stale after any instance left, as before this
//! ledger existed. So the ledger can only spare connections that are not stale; it never
//! keeps one that is, except when another connection's record falls between a connection's
//! record and its stamp (microseconds apart), which the window keeps narrow.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool::targets::Targets;

/// How far before a connection's creation stamp its record may be.
const MATCH_WINDOW: Duration = Duration::from_millis(2);

/// The latest connection openings of one pool, oldest first.
pub(super) struct Openings {
    records: Mutex<VecDeque<(Instant, Option<String>)>>,
    /// Records kept: room for every connection the pool can hold, twice over.
    capacity: usize,
}

impl Openings {
    pub(super) fn new(max_connections: u32) -> Openings {
        let capacity = usize::try_from(max_connections)
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .max(8);
        Openings {
            records: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Records a connection opened now to `instance` (`None`: the dialect names none).
    pub(super) fn record(&self, instance: Option<String>) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= self.capacity {
            records.pop_front();
        }
        records.push_back((Instant::now(), instance));
    }

    /// Whether a connection `age` old must not be handed out again: its instance left, or
    /// its turn to make room for an instance that joined has come.
    pub(super) fn is_stale(&self, targets: &Targets, age: Duration) -> bool {
        if !targets.may_replace() {
            return false;
        }
        let Some(opened) = Instant::now().checked_sub(age) else {
            return true;
        };
        if targets.is_rebalanced(opened) {
            return true;
        }
        if !targets.any_left() {
            return false;
        }
        match self.instance_opened_near(opened) {
            Some((at, instance)) => targets.is_stale_on(&instance, at),
            None => targets.is_stale(opened),
        }
    }

    /// The record of the connection stamped at `stamped`, if one matches.
    fn instance_opened_near(&self, stamped: Instant) -> Option<(Instant, String)> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let (at, instance) = records.iter().rev().find(|(at, _)| *at <= stamped)?;
        if stamped.duration_since(*at) > MATCH_WINDOW {
            return None;
        }
        instance.clone().map(|id| (*at, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_matches_only_a_connection_stamped_just_after_it() {
        let openings = Openings::new(1);
        openings.record(Some("a".into()));
        let stamped = Instant::now();
        assert_eq!(
            openings.instance_opened_near(stamped).map(|(_, id)| id),
            Some("a".into())
        );
        // Stamped before any record: no match.
        let early = stamped.checked_sub(Duration::from_secs(1)).unwrap();
        assert!(openings.instance_opened_near(early).is_none());
        // Stamped long after: no match either.
        assert!(
            openings
                .instance_opened_near(stamped + Duration::from_secs(1))
                .is_none()
        );
        // A record without an instance names none.
        openings.record(None);
        assert!(openings.instance_opened_near(Instant::now()).is_none());
    }

    #[test]
    fn the_ledger_keeps_room_for_the_pool_twice_over() {
        let openings = Openings::new(4);
        for i in 0..20 {
            openings.record(Some(i.to_string()));
        }
        assert_eq!(openings.records.lock().unwrap().len(), 8);
    }
}
