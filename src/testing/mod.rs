//! `testing::LocalCluster`: a real local PostgreSQL primary plus streaming
//! replicas on loopback that look like an Amazon Aurora PostgreSQL cluster.
//!
//! Used by the integration tests, examples and benchmarks of this crate. Each
//! cluster lives in its own temp dir, listens only on 127.0.0.1, and is torn
//! down completely (processes stopped, files removed) when the
//! [`LocalCluster`] is dropped, also while a test panics.
//!
//! * The PostgreSQL binaries are found through `AURORA_POOL_PG_BINDIR`, then
//!   `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`, then
//!   `PATH` (`apt-get install postgresql` provides them).
//! * Linux only (it needs `pg_ctl`, unix sockets and `/proc`), PostgreSQL 13 or newer
//!   (checked at start, with an error naming the version found); tested on 15.
//! * When the process runs as root, every server-side binary runs as the
//!   `postgres` OS user (PostgreSQL refuses to run as root).
//! * Safe on a shared machine as far as the database goes: each cluster's directory is
//!   private (0700) and holds the unix sockets, the only way in for the `postgres`
//!   superuser (trusted there for the cluster's own tooling); over TCP, directly or through
//!   the proxies, only the client role logs in, with its password.
//! * `initdb` output is cached in `$TMPDIR/aurora-pool-initdb-v2-<uid>-<bindir>-<mtime>`
//!   (a new one after a PostgreSQL upgrade) and copied for every cluster (saves most of a
//!   second per cluster); a cache not owned by the server user, or writable by others, is
//!   not used. Set `AURORA_POOL_NO_INITDB_CACHE=1` to run `initdb` per cluster instead.
//! * Clients reach every instance through a TCP proxy (see
//!   [`LocalCluster::instance_addr`], [`LocalCluster::blackhole`]) and the
//!   writer through the cluster endpoint proxy
//!   ([`LocalCluster::cluster_endpoint`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), aurora_pool::testing::TestingError> {
//! use aurora_pool::testing::LocalCluster;
//! let cluster = LocalCluster::start(3).await?;
//! let url = cluster.url(); // postgres://app:<random>@127.0.0.1:<port>/app?instance_endpoints=...
//! cluster.failover("instance-2", Some(std::time::Duration::from_secs(1))).await?;
//! cluster.wait_rejoined("instance-1").await?;
//! # drop(url); Ok(()) }
//! ```
//!
//! [`MotoServer`] runs [moto](https://github.com/getmoto/moto)'s local AWS emulator
//! (`python3` with `moto[server]`, which `scripts/install-deps.sh` installs) for the
//! Secrets Manager tests.
//!
//! `RdsStub` (feature `custom-endpoint`) is a local stand-in for the RDS API's
//! `DescribeDBClusterEndpoints`, which moto does not implement, for the custom endpoint
//! tests.

mod cluster;
mod error;
mod host;
mod moto;
mod pki;
mod process;
mod proxy;
#[cfg(feature = "custom-endpoint")]
mod rds;
mod sql;

pub use cluster::{LocalCluster, LocalClusterBuilder};
pub use error::TestingError;
pub use moto::MotoServer;
pub use proxy::CutAt;
#[cfg(feature = "custom-endpoint")]
pub use rds::{CustomEndpointKind, RdsStub, StubFailure};

/// What the cluster pretends to be.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavour {
    /// Aurora PostgreSQL: `pg_catalog.aurora_replica_status()`,
    /// `pg_catalog.aurora_db_instance_identifier()` and
    /// `rds.extensions` containing `aurora_stat_utils`.
    #[default]
    Aurora,
    /// RDS Multi-AZ DB cluster: the `rds_tools` schema
    /// (`show_topology`, `dbi_resource_id`,
    /// `multi_az_db_cluster_source_dbi_resource_id`) and `rds.extensions`
    /// containing `rds_tools` but not `aurora_stat_utils`.
    RdsMultiAz,
    /// Vanilla PostgreSQL primary and replicas, no emulation.
    Plain,
}
