//! The driver-independent pool machinery: discovery, the routing table and the reconciler
//! that keeps it in line with the published topology.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::status::{InstanceStatus, PoolStatus};
use crate::config::{Config, PoolSizing};
use crate::connector::{BoxFuture, Connector, Purpose};
use crate::error::{Error, Result};
use crate::monitor::{self, ClusterHandle, Registration};
use crate::select::Selector;
use crate::topology::{self, Instance, Role, Topology};

/// What a driver backend provides: a pool per instance.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The driver's pool handle (cheap to clone).
    type Pool: Clone + Send + Sync + 'static;

    /// Creates a pool to `instance` that opens connections lazily.
    fn open(&self, instance: &Instance, sizing: PoolSizing) -> Self::Pool;

    /// Closes a pool: idle connections at once, checked-out ones when they are returned.
    fn close(pool: Self::Pool) -> BoxFuture<'static, ()>;

    /// Connections currently open, and how many of them are idle.
    fn size_and_idle(pool: &Self::Pool) -> (u32, u32);
}

/// A pool to one instance in one role.
pub(crate) struct Slot<P> {
    pub(crate) instance: Instance,
    pub(crate) pool: P,
}

/// Which pool serves which role; swapped atomically, read without locks at checkout.
pub(crate) struct RoutingTable<P> {
    pub(crate) topology: Arc<Topology>,
    pub(crate) writer: Slot<P>,
    pub(crate) readers: Vec<Slot<P>>,
}

impl<P: Clone> RoutingTable<P> {
    /// Builds the table for `topology`, reusing the pools of `previous` whose instance keeps
    /// its role and address. Returns the pools no longer used.
    fn build<B: Backend<Pool = P>>(
        previous: Option<&RoutingTable<P>>,
        topology: &Arc<Topology>,
        backend: &B,
        config: &Config,
    ) -> (RoutingTable<P>, Vec<P>) {
        let mut old: Vec<&Slot<P>> = previous
            .map(|t| std::iter::once(&t.writer).chain(&t.readers).collect())
            .unwrap_or_default();
        let mut take = |instance: &Instance, sizing: PoolSizing| -> Slot<P> {
            let pool = match old.iter().position(|s| s.instance.same_placement(instance)) {
                Some(i) => old.swap_remove(i).pool.clone(),
                None => backend.open(instance, sizing),
            };
            Slot {
                instance: instance.clone(),
                pool,
            }
        };
        let writer = take(topology.writer(), config.writer);
        let readers = topology.readers().map(|r| take(r, config.reader)).collect();
        let retired = old.into_iter().map(|s| s.pool.clone()).collect();
        (
            RoutingTable {
                topology: topology.clone(),
                writer,
                readers,
            },
            retired,
        )
    }

    fn slots(&self) -> impl Iterator<Item = &Slot<P>> {
        std::iter::once(&self.writer).chain(&self.readers)
    }
}

/// The state behind every clone of a pool.
pub(crate) struct PoolCore<B: Backend> {
    config: Config,
    routing: ArcSwap<RoutingTable<B::Pool>>,
    selector: Selector,
    backend: B,
    cluster: Mutex<Option<Arc<ClusterHandle>>>,
    /// Keeps this pool's credentials available to the shared monitor.
    _registration: Arc<Registration>,
    reconciler: JoinHandle<()>,
    closed: AtomicBool,
}

impl<B: Backend> PoolCore<B> {
    /// Discovers the topology through the URL's host, joins the cluster monitor and builds
    /// the routing table.
    pub(crate) async fn start(
        config: Config,
        backend: B,
        connector: Arc<dyn Connector>,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let started = Instant::now();
        let seed = config.seed();
        let addressing = config.addressing();
        let discovery = async {
            let mut conn = connector.connect(&seed, Purpose::Discovery).await?;
            let result =
                topology::discover(conn.as_mut(), config.dialect, &seed, &addressing).await;
            conn.close().await;
            result
        };
        let (discovered, source) = tokio::time::timeout(config.connect_timeout * 2, discovery)
            .await
            .map_err(|_| {
                Error::timeout(format!(
                    "topology discovery through {seed} took longer than {:?}",
                    config.connect_timeout * 2
                ))
            })??;
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %config.cluster_id,
            url_host = %seed,
            dialect = %source.dialect,
            connected_to = %discovered.connected_to,
            topology = %discovered.topology,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "topology discovered"
        );
        let registration = Arc::new(Registration { connector, source });
        let cluster = monitor::join(
            &config.cluster_id,
            discovered.topology,
            &discovered.connected_to,
            &registration,
            config.cluster_topology_refresh_rate,
        )?;
        let mut updates = cluster.subscribe();
        let topology = updates.borrow_and_update().clone();
        let (table, _) = RoutingTable::build(None, &topology, &backend, &config);
        let core = Arc::new_cyclic(|weak: &Weak<Self>| PoolCore {
            selector: Selector::new(config.reader_host_selector_strategy),
            routing: ArcSwap::from_pointee(table),
            backend,
            cluster: Mutex::new(Some(cluster)),
            _registration: registration,
            reconciler: tokio::spawn(reconcile_on_updates(weak.clone(), updates)),
            closed: AtomicBool::new(false),
            config,
        });
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %core.config.cluster_id,
            writer = topology.writer().id(),
            readers = topology.readers().count(),
            "pool ready"
        );
        Ok(core)
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The writer's pool.
    pub(crate) fn writer(&self) -> B::Pool {
        self.routing.load().writer.pool.clone()
    }

    /// A reader's pool chosen by the strategy; `None` when there is no reader.
    pub(crate) fn reader(&self) -> Option<B::Pool> {
        let table = self.routing.load();
        if table.readers.is_empty() {
            return None;
        }
        let index = self.selector.pick(table.readers.len(), |i| {
            let (size, idle) = B::size_and_idle(&table.readers[i].pool);
            size.saturating_sub(idle) as usize
        });
        Some(table.readers[index].pool.clone())
    }

    /// The pool for `role`, falling back from reader to writer when configured to.
    pub(crate) fn pool_for(&self, role: Role) -> Result<B::Pool> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        match role {
            Role::Writer => Ok(self.writer()),
            Role::Reader => match self.reader() {
                Some(pool) => Ok(pool),
                None if self.config.reader_fallback_to_writer => Ok(self.writer()),
                None => Err(Error::no_reader(format!(
                    "cluster `{}` has no reader instance and reader_fallback_to_writer is false",
                    self.config.cluster_id
                ))),
            },
        }
    }

    /// The topology the routing table follows.
    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.routing.load().topology.clone()
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let table = self.routing.load();
        PoolStatus {
            topology_version: table.topology.version(),
            instances: table
                .slots()
                .map(|slot| {
                    let (size, idle) = B::size_and_idle(&slot.pool);
                    let sizing = match slot.instance.role() {
                        Role::Writer => self.config.writer,
                        Role::Reader => self.config.reader,
                    };
                    InstanceStatus {
                        instance_id: slot.instance.id().to_owned(),
                        role: slot.instance.role(),
                        address: slot.instance.address().to_string(),
                        size,
                        idle,
                        max_connections: sizing.max_connections,
                    }
                })
                .collect(),
        }
    }

    /// Applies a new topology: new pools for new placements, old ones closed.
    fn reconcile(&self, topology: &Arc<Topology>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let previous = self.routing.load_full();
        if previous.topology.version() >= topology.version() {
            return;
        }
        let (table, retired) =
            RoutingTable::build(Some(&previous), topology, &self.backend, &self.config);
        self.routing.store(Arc::new(table));
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %self.config.cluster_id,
            version = topology.version(),
            writer = topology.writer().id(),
            readers = topology.readers().count(),
            retired_pools = retired.len(),
            "routing updated"
        );
        for pool in retired {
            tokio::spawn(B::close(pool));
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes every pool and leaves the cluster monitor.
    pub(crate) fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.closed.store(true, Ordering::Release);
        self.reconciler.abort();
        let table = self.routing.load_full();
        let cluster = self
            .cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let cluster_id = self.config.cluster_id.clone();
        async move {
            for slot in table.slots() {
                B::close(slot.pool.clone()).await;
            }
            drop(cluster);
            tracing::info!(target: "aurora_pool", cluster_id = %cluster_id, "pool closed");
        }
    }
}

impl<B: Backend> Drop for PoolCore<B> {
    fn drop(&mut self) {
        self.reconciler.abort();
    }
}

async fn reconcile_on_updates<B: Backend>(
    core: Weak<PoolCore<B>>,
    mut updates: watch::Receiver<Arc<Topology>>,
) {
    while updates.changed().await.is_ok() {
        let topology = updates.borrow_and_update().clone();
        let Some(core) = core.upgrade() else { break };
        core.reconcile(&topology);
    }
}
