//! The cluster's topology: which instances exist, which one is the writer, and where to reach
//! each of them.

pub(crate) mod dialect;
pub(crate) mod rows;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use dialect::Dialect;
pub(crate) use dialect::{
    Discovered, IS_READER, TopologySource, confirm_writer, discover, query_topology,
};

use crate::endpoint::{HostPattern, HostPort, is_dns_label};
use crate::error::{Error, ErrorClass, Result};

/// The role of an instance, or the role a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The instance that accepts writes.
    Writer,
    /// A read-only replica.
    Reader,
}

impl Role {
    /// Whether an error of `class` on a connection taken for this role means a failover
    /// ([`ErrorClass::triggers_failover`]): `25006` means a demoted writer only when the
    /// connection was the writer's.
    pub(crate) fn fails_over_on(self, class: ErrorClass) -> bool {
        match class {
            ErrorClass::Network => true,
            ErrorClass::ReadOnly => self == Role::Writer,
            _ => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
        })
    }
}

/// One database instance of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    id: String,
    name: String,
    address: HostPort,
    role: Role,
    replica_lag_ms: Option<f64>,
    cpu: Option<f64>,
    /// The AWS region (Aurora Global Database only).
    region: Option<String>,
    available: bool,
}

impl Instance {
    /// An available instance with no catalog figures, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, address: HostPort, role: Role) -> Instance {
        Instance {
            id: id.to_owned(),
            name: id.to_owned(),
            address,
            role,
            replica_lag_ms: None,
            cpu: None,
            region: None,
            available: true,
        }
    }

    /// The same instance placed in `region`, for unit tests.
    #[cfg(test)]
    pub(crate) fn in_region(mut self, region: &str, lag_ms: Option<f64>) -> Instance {
        self.region = Some(region.to_owned());
        self.replica_lag_ms = lag_ms;
        self
    }

    /// The id the catalog reports (`SERVER_ID` on Aurora, the DBI resource id on Multi-AZ DB
    /// clusters, `host:port` for plain PostgreSQL).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The instance name used in its endpoint. Equal to [`Instance::id`] except on RDS
    /// Multi-AZ DB clusters.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where connections to this instance go.
    pub fn address(&self) -> &HostPort {
        &self.address
    }

    /// Writer or reader.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Replica lag reported by the catalog, in milliseconds (Aurora only).
    pub fn replica_lag_ms(&self) -> Option<f64> {
        self.replica_lag_ms
    }

    /// CPU use reported by the catalog, in percent (Aurora only).
    pub fn cpu(&self) -> Option<f64> {
        self.cpu
    }

    /// The AWS region the instance runs in, as the catalog reports it (Aurora Global
    /// Database: `aurora_global_db_instance_status()`); `None` elsewhere.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// False while health probes find the instance unreachable; unavailable readers get no
    /// traffic.
    pub fn is_available(&self) -> bool {
        self.available
    }

    /// Same instance at the same address in the same role: what decides whether a pool to it
    /// can be kept.
    pub(crate) fn same_placement(&self, other: &Instance) -> bool {
        self.id == other.id && self.address == other.address && self.role == other.role
    }
}

/// A snapshot of the cluster: exactly one writer and any number of readers.
///
/// Snapshots are immutable and versioned; a new one is published whenever membership, roles
/// or addresses change.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    version: u64,
    dialect: Dialect,
    /// Sorted by id; the writer is among them.
    instances: Vec<Instance>,
    /// The writer row's `LAST_UPDATE_TIMESTAMP` in the catalog it was read from
    /// (microseconds since the epoch; Aurora only): of two instances claiming the writer
    /// role, the one whose catalog has the newer writer row wins.
    writer_since: Option<i64>,
    /// The stand-in of a pool from `connect_lazy` before its first discovery.
    undiscovered: bool,
}

impl Topology {
    /// Builds a topology from instances, checking that exactly one of them is the writer.
    pub(crate) fn new(dialect: Dialect, mut instances: Vec<Instance>) -> Result<Topology> {
        let writers = instances.iter().filter(|i| i.role == Role::Writer).count();
        if writers != 1 {
            return Err(Error::topology(format!(
                "the {dialect} catalog reports {writers} writers; exactly one is required"
            )));
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Topology {
            version: 0,
            dialect,
            instances,
            writer_since: None,
            undiscovered: false,
        })
    }

    /// What a pool opened with `connect_lazy` routes by until its first discovery: the
    /// URL's host as a writer that is unavailable, version 0 (a discovered topology is
    /// newer). No work runs on it: the pools wait for the first discovered topology (a
    /// driver that must point somewhere is parked on it, as while a writer is unavailable).
    pub(crate) fn undiscovered(seed: &HostPort) -> Topology {
        let writer = Instance {
            id: seed.host.clone(),
            name: seed.host.clone(),
            address: seed.clone(),
            role: Role::Writer,
            replica_lag_ms: None,
            cpu: None,
            region: None,
            available: false,
        };
        Topology {
            version: 0,
            dialect: Dialect::Pg,
            instances: vec![writer],
            writer_since: None,
            undiscovered: true,
        }
    }

    /// Whether this is the stand-in of [`undiscovered`](Topology::undiscovered).
    pub(crate) fn is_undiscovered(&self) -> bool {
        self.undiscovered
    }

    pub(crate) fn with_writer_since(mut self, writer_since: Option<i64>) -> Topology {
        self.writer_since = writer_since;
        self
    }

    /// See the field: when the writer of the catalog this was read from became (or last
    /// showed itself as) the writer.
    pub(crate) fn writer_since(&self) -> Option<i64> {
        self.writer_since
    }

    pub(crate) fn with_version(mut self, version: u64) -> Topology {
        self.version = version;
        self
    }

    /// Increases with every published change, starting at 1.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The database dialect the topology was read with.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Every instance, sorted by id.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// The writer instance.
    pub fn writer(&self) -> &Instance {
        // `Topology::new` guarantees exactly one writer.
        self.instances
            .iter()
            .find(|i| i.role == Role::Writer)
            .unwrap_or(&self.instances[0])
    }

    /// The reader instances, sorted by id.
    pub fn readers(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.role == Role::Reader)
    }

    /// The instance with this id.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// Same members in the same roles at the same addresses (lag and CPU are ignored).
    pub(crate) fn same_shape(&self, other: &Topology) -> bool {
        self.dialect == other.dialect
            && self.instances.len() == other.instances.len()
            && self
                .instances
                .iter()
                .zip(&other.instances)
                .all(|(a, b)| a.same_placement(b) && a.available == b.available)
    }

    /// Same lag and CPU figures for every instance (of a topology of the same shape).
    pub(crate) fn same_figures(&self, other: &Topology) -> bool {
        self.instances
            .iter()
            .zip(&other.instances)
            .all(|(a, b)| a.replica_lag_ms == b.replica_lag_ms && a.cpu == b.cpu)
    }

    /// The same topology with the instances in `down` marked unavailable.
    pub(crate) fn with_unavailable(mut self, down: &BTreeSet<String>) -> Topology {
        for instance in &mut self.instances {
            instance.available = !down.contains(&instance.id);
        }
        self
    }

    /// The same topology with `added` among its readers (whatever role they had where they
    /// were read: a claim to the writer role is for the probes to confirm).
    pub(crate) fn with_readers(&self, added: impl IntoIterator<Item = Instance>) -> Topology {
        let mut next = self.clone();
        for mut instance in added {
            if next.instance(&instance.id).is_none() {
                instance.role = Role::Reader;
                next.instances.push(instance);
            }
        }
        next.instances.sort_by(|a, b| a.id.cmp(&b.id));
        next
    }

    /// The same topology with `writer` as the writer and every other instance a reader:
    /// used when the writer was confirmed directly and the catalog lags behind.
    pub(crate) fn with_writer(mut self, writer: &str) -> Topology {
        if self.instance(writer).is_some() {
            for instance in &mut self.instances {
                instance.role = if instance.id == writer {
                    Role::Writer
                } else {
                    Role::Reader
                };
            }
        }
        self
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}:", self.dialect, self.version)?;
        for i in &self.instances {
            write!(f, " {}={}@{}", i.id, i.role, i.address)?;
            if !i.available {
                f.write_str("(down)")?;
            }
        }
        Ok(())
    }
}

/// Turns instance names from the catalog into addresses: the explicit override map first,
/// then the host pattern.
#[derive(Debug, Clone)]
pub(crate) struct Addressing {
    pub(crate) overrides: BTreeMap<String, HostPort>,
    pub(crate) pattern: Option<HostPattern>,
    /// Used when the pattern carries no port: the port of the URL.
    pub(crate) default_port: u16,
    /// An Aurora Global Database's pattern per region
    /// (`global_cluster_instance_host_patterns`).
    pub(crate) regions: BTreeMap<String, HostPattern>,
    /// The region of the URL's host, where `pattern` applies in a global database.
    pub(crate) url_region: Option<String>,
}

impl Addressing {
    /// The address of instance `name` in `region` (Aurora Global Database): the override
    /// first, then the region's pattern (the URL's own pattern in the URL's region). A region
    /// with neither is a configuration error naming it.
    pub(crate) fn address_in(&self, name: &str, region: Option<&str>) -> Result<HostPort> {
        let Some(region) = region else {
            return self.address(name);
        };
        if self.overrides.contains_key(name) {
            return self.address(name);
        }
        let pattern = match self.regions.get(region) {
            Some(pattern) => pattern,
            None if self.url_region.as_deref() == Some(region) && self.pattern.is_some() => {
                return self.address(name);
            }
            None => {
                return Err(Error::config(
                    "global_cluster_instance_host_patterns",
                    format!(
                        "the global database has instance `{name}` in region `{region}`, which no \
                         pattern names: add `[{region}]?.<domain>:<port>` (or the region's RDS \
                         pattern `?.<cluster-id>.{region}.rds.amazonaws.com`) to \
                         `global_cluster_instance_host_patterns`, or list the instance in \
                         `instance_endpoints`"
                    ),
                ));
            }
        };
        if !is_dns_label(name) {
            return self.address(name);
        }
        Ok(HostPort {
            host: pattern.host_for(name),
            port: pattern.port().unwrap_or(self.default_port),
        })
    }

    pub(crate) fn address(&self, name: &str) -> Result<HostPort> {
        if let Some(address) = self.overrides.get(name) {
            return Ok(address.clone());
        }
        if !is_dns_label(name) {
            let shown: String = name.chars().take(64).collect();
            return Err(Error::topology(format!(
                "the catalog names an instance `{}` that is not one DNS label ([A-Za-z0-9-], at most 63 characters): it is not connected to",
                shown.escape_debug()
            )));
        }
        match &self.pattern {
            Some(pattern) => Ok(HostPort {
                host: pattern.host_for(name),
                port: pattern.port().unwrap_or(self.default_port),
            }),
            None => Err(Error::config(
                "cluster_instance_host_pattern",
                format!(
                    "cannot tell how to reach instance `{name}`: the URL's host is not an RDS host name, \
                     so set `cluster_instance_host_pattern` (e.g. `?.abc123.us-east-1.rds.amazonaws.com` \
                     or `?.db.example.com:5432`) or list every instance in `instance_endpoints` \
                     (`{name}=host:port,...`)"
                ),
            )),
        }
    }
}
