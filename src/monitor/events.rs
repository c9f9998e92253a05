//! What changed between two topology snapshots, as events users can subscribe to.

use std::fmt;

use crate::topology::Topology;

/// A change in the cluster, published by the cluster monitor.
///
/// Subscribe with [`AuroraPool::events`](crate::AuroraPool::events). Events of one change
/// arrive in this order: `WriterChanged`, `InstanceDown` / `InstanceUp`, `TopologyChanged`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A different instance is now the writer.
    WriterChanged {
        /// The previous writer's id.
        old: String,
        /// The new writer's id.
        new: String,
    },
    /// Health probes declared the instance unreachable, or it left the topology.
    InstanceDown {
        /// The instance id.
        instance: String,
    },
    /// The instance is reachable again, or joined the topology.
    InstanceUp {
        /// The instance id.
        instance: String,
    },
    /// A new topology snapshot was published.
    TopologyChanged {
        /// Its version.
        version: u64,
    },
}

impl fmt::Display for ClusterEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterEvent::WriterChanged { old, new } => {
                write!(f, "writer changed from {old} to {new}")
            }
            ClusterEvent::InstanceDown { instance } => write!(f, "{instance} is down"),
            ClusterEvent::InstanceUp { instance } => write!(f, "{instance} is up"),
            ClusterEvent::TopologyChanged { version } => write!(f, "topology v{version} published"),
        }
    }
}

/// The events that lead from `old` to `new`.
pub(crate) fn between(old: &Topology, new: &Topology) -> Vec<ClusterEvent> {
    let mut events = Vec::new();
    if old.writer().id() != new.writer().id() {
        events.push(ClusterEvent::WriterChanged {
            old: old.writer().id().to_owned(),
            new: new.writer().id().to_owned(),
        });
    }
    let up = |t: &Topology, id: &str| t.instance(id).is_some_and(|i| i.is_available());
    for instance in old.instances() {
        if instance.is_available() && !up(new, instance.id()) {
            events.push(ClusterEvent::InstanceDown {
                instance: instance.id().to_owned(),
            });
        }
    }
    for instance in new.instances() {
        if instance.is_available() && !up(old, instance.id()) {
            events.push(ClusterEvent::InstanceUp {
                instance: instance.id().to_owned(),
            });
        }
    }
    events.push(ClusterEvent::TopologyChanged {
        version: new.version(),
    });
    events
}
