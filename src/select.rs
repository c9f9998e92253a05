//! How `acquire(Role::Reader)` and `run(Role::Reader, ..)` choose among reader instances
//! (the `.reader()` pool spreads its connections over them in turn instead).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// The reader host selection strategy (`reader_host_selector_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReaderSelection {
    /// A uniformly random reader per call (`random`, the default).
    #[default]
    Random,
    /// Readers in turn, sorted by instance id (`round_robin`).
    RoundRobin,
    /// The reader whose pool has the fewest connections in use (`least_connections`); ties
    /// are taken in turn.
    LeastConnections,
}

impl ReaderSelection {
    /// The parameter value naming this strategy.
    pub fn code(self) -> &'static str {
        match self {
            ReaderSelection::Random => "random",
            ReaderSelection::RoundRobin => "round_robin",
            ReaderSelection::LeastConnections => "least_connections",
        }
    }

    pub(crate) fn parse(parameter: &str, text: &str) -> Result<ReaderSelection> {
        match text {
            "random" => Ok(ReaderSelection::Random),
            "round_robin" | "roundRobin" => Ok(ReaderSelection::RoundRobin),
            "least_connections" | "leastConnections" => Ok(ReaderSelection::LeastConnections),
            other => Err(Error::config(
                parameter,
                format!(
                    "unknown strategy `{other}`; expected random, round_robin or least_connections"
                ),
            )),
        }
    }
}

impl fmt::Display for ReaderSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A strategy plus the state it needs; lock-free, one per pool.
#[derive(Debug)]
pub(crate) struct Selector {
    strategy: ReaderSelection,
    turn: AtomicUsize,
}

impl Selector {
    pub(crate) fn new(strategy: ReaderSelection) -> Selector {
        Selector {
            strategy,
            turn: AtomicUsize::new(0),
        }
    }

    /// Picks an index below `count` (> 0); `in_use(i)` tells how busy candidate `i` is.
    pub(crate) fn pick(&self, count: usize, in_use: impl Fn(usize) -> usize) -> usize {
        match self.strategy {
            ReaderSelection::Random => fastrand::usize(..count),
            ReaderSelection::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed) % count,
            ReaderSelection::LeastConnections => {
                let start = self.turn.fetch_add(1, Ordering::Relaxed) % count;
                (0..count)
                    .map(|offset| (start + offset) % count)
                    .min_by_key(|&i| in_use(i))
                    .unwrap_or(start)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles() {
        let s = Selector::new(ReaderSelection::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| s.pick(3, |_| 0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn random_covers_every_candidate() {
        let s = Selector::new(ReaderSelection::Random);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[s.pick(3, |_| 0)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 30), "{seen:?}");
    }

    #[test]
    fn least_connections_prefers_the_idlest_and_rotates_ties() {
        let s = Selector::new(ReaderSelection::LeastConnections);
        let load = [5, 1, 7];
        assert!((0..5).all(|_| s.pick(3, |i| load[i]) == 1));
        let picks: Vec<_> = (0..3).map(|_| s.pick(3, |_| 2)).collect();
        let mut sorted = picks.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "ties must rotate: {picks:?}");
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            ReaderSelection::parse("p", "round_robin").unwrap(),
            ReaderSelection::RoundRobin
        );
        assert_eq!(
            ReaderSelection::parse("p", "leastConnections").unwrap(),
            ReaderSelection::LeastConnections
        );
        assert_eq!(
            ReaderSelection::parse("p", "x").unwrap_err().parameter(),
            Some("p")
        );
    }
}
