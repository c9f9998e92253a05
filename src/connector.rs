//! The seam between the driver-independent core (discovery, monitor) and a database driver:
//! a connection that runs a simple query and returns text.

use std::future::Future;
use std::pin::Pin;

use crate::endpoint::HostPort;
use crate::error::Result;

/// A boxed, sendable future: what retried work returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One result row, every column in PostgreSQL's text format (`None` for NULL).
pub(crate) type TextRow = Vec<Option<String>>;

/// Why a connection is opened; it decides the `application_name` it carries, so operators
/// can tell the crate's own connections apart in `pg_stat_activity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The short-lived connection that discovers the topology when a pool is created.
    Discovery,
    /// The cluster monitor's connection.
    Monitor,
    /// A health probe of one instance.
    Probe,
}

impl Purpose {
    pub(crate) fn application_name(self, cluster_id: &str) -> String {
        let name = match self {
            Purpose::Discovery => "aurora-pool-discovery",
            Purpose::Monitor => "aurora-pool-monitor",
            Purpose::Probe => "aurora-pool-probe",
        };
        format!("{name}:{cluster_id}")
    }
}

/// A connection used by the crate itself, never handed to users.
pub(crate) trait AdminConnection: Send {
    /// Runs one statement with the simple query protocol and returns its rows as text.
    ///
    /// A statement the server rejects yields a driver error carrying the SQLSTATE; the
    /// connection stays usable. A broken connection yields a connect error.
    fn query<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<Vec<TextRow>>>;

    /// Resolves when the server ends the connection (FIN, RST, or a FATAL message such as
    /// 57P01) while it is idle, without sending anything: how a crash is seen at once
    /// instead of at the next query. Cancel-safe: dropping the future leaves the connection
    /// usable.
    fn closed(&mut self) -> BoxFuture<'_, ()>;

    /// Closes the connection politely (Terminate message).
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Where the crate's own connection goes: an instance's address, and the AWS region the
/// catalog places the instance in (an Aurora Global Database's instances), for which its IAM
/// token is signed; `None` for an address the catalog has not placed (the URL's host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminTarget {
    pub(crate) address: HostPort,
    pub(crate) region: Option<String>,
}

impl AdminTarget {
    pub(crate) fn new(address: HostPort, region: Option<&str>) -> AdminTarget {
        AdminTarget {
            address,
            region: region.map(str::to_owned),
        }
    }

    /// An instance of the topology.
    pub(crate) fn instance(instance: &crate::topology::Instance) -> AdminTarget {
        AdminTarget::new(instance.address().clone(), instance.region())
    }
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.address.fmt(f)
    }
}

/// Opens [`AdminConnection`]s with the pool's credentials and TLS settings.
pub(crate) trait Connector: Send + Sync + 'static {
    /// Connects to `target` (bounded by the configured connect timeout).
    fn connect<'a>(
        &'a self,
        target: &'a AdminTarget,
        purpose: Purpose,
    ) -> BoxFuture<'a, Result<Box<dyn AdminConnection>>>;

    /// Asks the credential provider for the credentials of `target` without connecting
    /// (bounded by the connect timeout). A probe does this before its timed connect, so
    /// that the time it measures is the instance's, not the provider's: a provider that
    /// hangs or fails says nothing about the instance.
    fn prepare<'a>(&'a self, target: &'a AdminTarget) -> BoxFuture<'a, Result<()>>;
}
