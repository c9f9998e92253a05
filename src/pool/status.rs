//! Pool sizes per instance and whether the pool can serve now, for dashboards, readiness
//! probes and tests.

use std::time::{Duration, SystemTime};

use crate::topology::Role;

/// A snapshot of the pool: one entry per instance it routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The version of the topology the routing follows.
    pub topology_version: u64,
    /// The URL names an RDS Proxy endpoint: the pool connects through the proxy only (one
    /// instance, the proxy), and runs no topology monitor and no health probes; the proxy
    /// fails over by itself.
    pub through_proxy: bool,
    /// The writer first, then the readers sorted by id.
    pub instances: Vec<InstanceStatus>,
    /// The readers' pool that `reader()` hands out, shared by the readers: most reads go
    /// through it.
    pub reads: ReadsStatus,
}

/// The readers' pool behind `reader()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadsStatus {
    /// The instances it spreads its connections over (the writer's id when reads use the
    /// writer for want of a reader; empty when no instance may serve reads).
    pub instance_ids: Vec<String>,
    /// Connections open (idle or in use).
    pub size: u32,
    /// Connections open and idle.
    pub idle: u32,
    /// The most connections this pool opens.
    pub max_connections: u32,
}

/// Whether the pool can serve writes and reads now: for readiness probes and dashboards
/// ([`AuroraPool::health`](crate::AuroraPool::health)). Read from the routing table and the
/// cluster monitor without any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// A writer checkout would be served now: the pool is open, the writer it follows is
    /// available, and no search for a new writer is under way.
    pub writes: bool,
    /// A read would be served now: some instance may serve reads (a reader, or the writer
    /// where reads may use it).
    pub reads: bool,
    /// The id of the writer the pool follows.
    pub writer: String,
    /// When the monitor began searching for a new writer (a failover under way); `None`
    /// when it is not searching.
    pub failing_over_since: Option<SystemTime>,
    /// The writer is silent to this process while the readers name it and no other
    /// instance claims the role: writer checkouts fail at once.
    pub writer_silent: bool,
    /// [`close`](crate::AuroraPool::close) was called.
    pub closed: bool,
    /// Each pool's connections, the readers' pool included.
    pub status: PoolStatus,
}

impl Health {
    /// Writes and reads can both be served now.
    pub fn is_ready(&self) -> bool {
        self.writes && self.reads
    }

    /// How long the current search for a writer has lasted; `None` when there is none.
    pub fn failing_over_for(&self) -> Option<Duration> {
        self.failing_over_since
            .map(|since| since.elapsed().unwrap_or_default())
    }
}

/// The connection pool to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceStatus {
    /// The instance id from the topology.
    pub instance_id: String,
    /// The role this pool serves.
    pub role: Role,
    /// Where its connections go (`host:port`).
    pub address: String,
    /// Connections open (idle or in use).
    pub size: u32,
    /// Connections open and idle.
    pub idle: u32,
    /// The most connections this pool opens.
    pub max_connections: u32,
}

impl PoolStatus {
    /// The entry of one instance.
    pub fn instance(&self, instance_id: &str) -> Option<&InstanceStatus> {
        self.instances.iter().find(|i| i.instance_id == instance_id)
    }
}
