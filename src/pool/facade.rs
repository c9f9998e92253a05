//! What both flavours' `AuroraPool` do alike, written once: the role handles, the
//! failover-aware checkout, the monitor's view and closing. Each flavour's type is a
//! struct `{ core: Arc<PoolCore<Backend>> }`; it expands [`shared_facade!`] in its `impl`
//! block and keeps to itself only what differs (connecting, the driver's error type, the
//! work closures of `run` and `transaction`).

/// Expands the shared methods. `handle` is the driver's pool type the role methods return,
/// `connection` the checked-out connection, `to_handle` turns the backend's pool into a
/// handle; `writer_docs` adds the flavour's own documentation to `writer()`.
macro_rules! shared_facade {
    (
        handle = $handle:ty,
        connection = $connection:ty,
        to_handle = $to_handle:expr,
        writer_docs = { $(#[$writer_doc:meta])* } $(,)?
    ) => {
        /// The writer's pool, to keep for as long as the process runs.
        ///
        /// A handle goes on following the writer (and renewing credentials) after the last
        /// `AuroraPool` clone is dropped: once a handle was taken, the pool's monitor and
        /// tasks run until [`close`](Self::close), since the driver cannot tell when the last
        /// handle is gone. Call `close` when you are done with a pool whose handles you took.
        ///
        /// The same pool follows the writer across any number of failovers: once the pool
        /// learns of a new writer, its new connections go there, the connections it still
        /// has to the old writer are closed at checkout and on return (never handed out
        /// again), and it is closed only by [`close`](Self::close). Store it in your
        /// application state, or hand it to a library that keeps the pool it was given.
        $(#[$writer_doc])*
        pub fn writer(&self) -> $handle {
            self.core.keep_alive_for_handles();
            ($to_handle)(self.core.writer())
        }

        /// The readers' pool, to keep for as long as the process runs.
        ///
        /// Each new connection goes to the next reachable reader in turn; a reader that
        /// goes down, is promoted or leaves the read scope has its connections closed at
        /// checkout and on return. While no reader can serve, the pool uses the writer
        /// where `failover_mode` allows it; with `strict_reader` its checkouts wait for a
        /// reader (sqlx: up to `acquire_timeout_ms`) or fail with
        /// [`Error::is_no_reader`](crate::Error::is_no_reader) (deadpool). Use
        /// [`try_reader`](Self::try_reader) to fail at once.
        ///
        /// Its connections are its own: [`acquire`](Self::acquire) and `run` with
        /// [`Role::Reader`](crate::Role::Reader) use one pool per reader (balanced per
        /// checkout by `reader_host_selector_strategy`, and abandoned at once when their
        /// reader is declared dead).
        pub fn reader(&self) -> $handle {
            self.core.keep_alive_for_handles();
            ($to_handle)(self.core.reads())
        }

        /// Like [`reader`](Self::reader), but fails
        /// ([`Error::is_no_reader`](crate::Error::is_no_reader)) when no instance may serve
        /// reads now (no reachable reader, and `failover_mode` is `strict_reader`), and
        /// [`Error::is_closed`](crate::Error::is_closed) when the pool is closed.
        pub fn try_reader(&self) -> $crate::Result<$handle> {
            self.core.keep_alive_for_handles();
            self.core.try_reads().map($to_handle)
        }

        /// Checks out one connection for `role`.
        ///
        /// During a failover a writer checkout waits for the new writer (up to
        /// `failover_timeout_ms`) instead of failing at once, and a reader checkout moves
        /// to another reader when its instance goes down. When no instance of the role
        /// appears in time the error is
        /// [`Error::is_failover_failed`](crate::Error::is_failover_failed).
        pub async fn acquire(&self, role: $crate::Role) -> $crate::Result<$connection> {
            self.core
                .checkout(role)
                .await
                .map(|(connection, _)| connection)
        }

        /// Cluster events (writer changes, instances down and up, new topologies) from the
        /// shared monitor. A receiver that falls more than 128 events behind is told how
        /// many it missed.
        pub fn events(&self) -> tokio::sync::broadcast::Receiver<$crate::ClusterEvent> {
            self.core.events()
        }

        /// The topology the pool routes by.
        pub fn topology(&self) -> std::sync::Arc<$crate::Topology> {
            self.core.topology()
        }

        /// Connections per instance, and of the readers' pool behind `reader()`.
        pub fn status(&self) -> $crate::PoolStatus {
            self.core.status()
        }

        /// Whether writes and reads can be served now, the writer, whether a failover is
        /// under way and since when, and each pool's connections: for readiness probes
        /// and dashboards. No I/O: read from the routing table and the cluster monitor.
        ///
        /// A readiness probe that fails on every replica of a service at once takes the
        /// whole service out of its load balancer during a failover; use
        /// [`Health::is_ready`](crate::Health::is_ready) for readiness only where that is
        /// wanted, never for liveness.
        pub fn health(&self) -> $crate::Health {
            self.core.health()
        }

        /// The configuration the pool was built with.
        pub fn config(&self) -> &$crate::Config {
            self.core.config()
        }

        /// Whether [`close`](Self::close) was called.
        pub fn is_closed(&self) -> bool {
            self.core.is_closed()
        }

        /// Closes every pool (idle connections at once, checked-out ones when they come
        /// back) and leaves the cluster monitor. Later checkouts fail.
        pub async fn close(&self) {
            self.core.close().await;
        }
    };
}

/// `Debug` for a flavour's `AuroraPool`: the cluster and its topology, never a secret.
macro_rules! facade_debug {
    ($pool:ty, $flavour:literal) => {
        impl std::fmt::Debug for $pool {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("AuroraPool")
                    .field("flavour", &$flavour)
                    .field("cluster_id", &self.core.config().cluster_id)
                    .field("topology", &format_args!("{}", self.core.topology()))
                    .field("closed", &self.core.is_closed())
                    .finish()
            }
        }
    };
}

pub(crate) use {facade_debug, shared_facade};
