//! What the pool knew when a failover-class error happened: a short, secret-free picture
//! for the error's reader, as the JDBC wrapper's exception context.

use std::fmt;
use std::time::Duration;

use crate::monitor::ClusterEvent;
use crate::topology::Role;

/// What the pool knew when the error happened: the writer it followed, each instance's
/// role and state, the failover under way and the last cluster events. Attached to
/// failover-class errors ([`Error::context`](crate::Error::context)) and printed by their
/// alternate form (`{:#}`). Instance ids only: no addresses, no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorContext {
    /// The `cluster_id` of the pool.
    pub cluster_id: String,
    /// The version of the topology the pool followed.
    pub topology_version: u64,
    /// The writer the pool followed.
    pub writer: String,
    /// Every instance of that topology, the writer first.
    pub instances: Vec<InstanceState>,
    /// How long the monitor had been searching for a new writer; `None` when it was not.
    pub failing_over_for: Option<Duration>,
    /// The writer was known silent with no other instance holding its role.
    pub writer_silent: bool,
    /// The last cluster events (at most [`ErrorContext::EVENTS_KEPT`]), oldest first.
    pub recent_events: Vec<RecentEvent>,
}

/// One instance in an [`ErrorContext`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceState {
    /// Its id.
    pub id: String,
    /// Its role in the topology.
    pub role: Role,
    /// Whether it was reachable (not declared down by the probes).
    pub available: bool,
}

/// A cluster event in an [`ErrorContext`], with how long before the error it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecentEvent {
    /// How long before the error.
    pub ago: Duration,
    /// The event.
    pub event: ClusterEvent,
}

impl ErrorContext {
    /// How many recent cluster events a context keeps.
    pub const EVENTS_KEPT: usize = 5;
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster `{}` at topology v{}: writer {}; instances",
            self.cluster_id, self.topology_version, self.writer
        )?;
        for (i, instance) in self.instances.iter().enumerate() {
            let state = if instance.available { "up" } else { "down" };
            let separator = if i == 0 { " " } else { ", " };
            write!(f, "{separator}{} ({}, {state})", instance.id, instance.role)?;
        }
        match self.failing_over_for {
            Some(searching) => write!(
                f,
                "; searching for a new writer for {} ms",
                searching.as_millis()
            )?,
            None => f.write_str("; no failover under way")?,
        }
        if self.writer_silent {
            f.write_str("; the writer is silent and no other instance holds its role")?;
        }
        if !self.recent_events.is_empty() {
            f.write_str("; recent events:")?;
            for (i, recent) in self.recent_events.iter().enumerate() {
                let separator = if i == 0 { " " } else { ", " };
                write!(
                    f,
                    "{separator}{} ({} ms ago)",
                    recent.event,
                    recent.ago.as_millis()
                )?;
            }
        }
        Ok(())
    }
}
