//! Pool sizes per instance, for dashboards and tests.

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
