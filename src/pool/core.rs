//! The driver-independent pool: discovery, and applying a new topology to the routing
//! table. The checkout that rides through a failover is in [`checkout`], credentials per
//! instance pool in [`renewal`].

mod checkout;
mod lazy;
mod renewal;

pub(crate) use checkout::RETRY_PAUSE;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::backend::Backend;
use super::login;
use super::routing::RoutingTable;
use super::scope::ScopeSource;
use super::status::{Health, InstanceStatus, PoolStatus, ReadsStatus};
use super::tasks::{close_bounded, fetch_credentials, reconcile_on_updates, renew_credentials};
use crate::auth::CredentialProvider;
use crate::config::Config;
use crate::connector::{AdminTarget, BoxFuture, Connector, Purpose};
use crate::error::{Error, ErrorClass, Result};
use crate::monitor::{self, ClusterEvent, ClusterHandle, MonitorSettings, Registration};
use crate::select::Selector;
use crate::supervise::supervise;
use crate::throttle::Throttle;
use crate::topology::{self, Instance, Role, Topology};

/// How long the pool of a reader that is still up keeps serving the handles taken before
/// the routing moved on (a promoted reader, a reader leaving the read scope).
const RETIRED_READER_GRACE: Duration = Duration::from_secs(10);

/// Ends this process's connections to `instance`, which a pool has just left as dead: the
/// monitor ended those open when it declared it dead, these are the connects begun since
/// (the pool's address still pointed there). Twice: now, and once a connect begun just
/// before has been quiet for `quiet_for` too.
fn end_connections_behind(instance: &Instance, quiet_for: Duration) {
    let address = instance.address().clone();
    tokio::spawn(async move {
        crate::sockets::end_connections_to(&address, quiet_for).await;
        tokio::time::sleep(quiet_for + Duration::from_millis(100)).await;
        crate::sockets::end_connections_to(&address, quiet_for).await;
    });
}

/// When a pool discovers its cluster: before it is handed out (`connect`), or in the
/// background after (`connect_lazy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Now,
    Lazy,
}

/// The state behind every clone of a pool.
pub(crate) struct PoolCore<B: Backend> {
    config: Config,
    routing: ArcSwap<RoutingTable<B::Pool>>,
    selector: Selector,
    backend: B,
    /// Taken (emptied) by `close`; read without locks. None from the start through an RDS
    /// Proxy.
    cluster: ArcSwapOption<ClusterHandle>,
    /// Keeps this pool's credentials available to the shared monitor; set once the cluster
    /// was discovered (at once, unless the pool was opened with `connect_lazy`).
    registration: OnceLock<Arc<Registration>>,
    /// What discovery connects with (again, for `connect_lazy`).
    connector: Arc<dyn Connector>,
    /// Why the last discovery of a pool opened with `connect_lazy` failed, until one
    /// succeeds: what a checkout that gave up waiting tells.
    discovery_failure: ArcSwapOption<String>,
    scope: ScopeSource,
    provider: Arc<dyn CredentialProvider>,
    /// Applies the monitor's topologies to the routing (first discovers the cluster, for
    /// `connect_lazy`); set right after the core is built.
    reconciler: OnceLock<JoinHandle<()>>,
    renewer: JoinHandle<()>,
    /// Refused logins that make every pool renew its credentials, at most one a second.
    forced_renewal: Throttle,
    /// The topology version the routing table follows; checkouts wait on it.
    routing_version: watch::Sender<u64>,
    closed: AtomicBool,
    /// This core, for the tasks it starts on the checkout path.
    itself: Weak<PoolCore<B>>,
    /// Set once a role's pool was handed out: the core keeps itself (its monitor, its
    /// reconciler, its credential renewal) alive for the handles, which follow their role
    /// for as long as anyone holds them, also after the last `AuroraPool` was dropped
    /// (DESIGN invariant 13). The drivers give no way to tell when the last handle is gone,
    /// so only [`close`](PoolCore::close) ends it then.
    kept_for_handles: ArcSwapOption<PoolCore<B>>,
}

impl<B: Backend> PoolCore<B> {
    /// Builds the pool: with [`Start::Now`], discovers the topology through the URL's host
    /// and joins the cluster monitor first; with [`Start::Lazy`], routes by an undiscovered
    /// topology and discovers in the background (see `lazy`).
    pub(crate) async fn start(
        config: Config,
        backend: B,
        connector: Arc<dyn Connector>,
        provider: Arc<dyn CredentialProvider>,
        scope: ScopeSource,
        when: Start,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let followed = match when {
            Start::Now => {
                let discovered = discover(&config, &connector).await?;
                follow_cluster(&config, &connector, discovered)?
            }
            Start::Lazy => Followed::undiscovered(&config),
        };
        let core = Self::assemble(config, backend, connector, provider, scope, followed).await?;
        if when == Start::Lazy {
            core.await_discovery();
        }
        Ok(core)
    }

    /// Builds the pool around `followed` (the cluster's topology, its monitor and the
    /// monitor's updates; an undiscovered topology and neither for `connect_lazy`).
    async fn assemble(
        config: Config,
        backend: B,
        connector: Arc<dyn Connector>,
        provider: Arc<dyn CredentialProvider>,
        scope: ScopeSource,
        followed: Followed,
    ) -> Result<Arc<Self>> {
        let Followed {
            registration,
            cluster,
            topology,
            updates,
        } = followed;
        let read_scope = scope.current();
        let fresh = if B::CREDENTIALS_PER_CONNECT {
            HashMap::new()
        } else {
            fetch_credentials(
                &provider,
                &config,
                RoutingTable::<B::Pool>::new_placements(None, &topology, &read_scope),
            )
            .await
        };
        let table =
            RoutingTable::build(None, &topology, &read_scope, &backend, &config, fresh)?.table;
        let core = Arc::new_cyclic(|weak: &Weak<Self>| PoolCore {
            selector: Selector::new(config.reader_host_selector_strategy),
            routing: ArcSwap::from_pointee(table),
            backend,
            cluster: ArcSwapOption::from(cluster),
            registration: registration.map(OnceLock::from).unwrap_or_default(),
            connector,
            discovery_failure: ArcSwapOption::empty(),
            reconciler: OnceLock::new(),
            scope,
            renewer: {
                let weak = weak.clone();
                tokio::spawn(supervise(
                    "credential renewer",
                    config.cluster_id.clone(),
                    move || (!B::CREDENTIALS_PER_CONNECT).then(|| renew_credentials(weak.clone())),
                    std::future::pending(),
                ))
            },
            provider,
            forced_renewal: Throttle::new(),
            routing_version: watch::channel(topology.version()).0,
            closed: AtomicBool::new(false),
            itself: weak.clone(),
            kept_for_handles: ArcSwapOption::empty(),
            config,
        });
        let reconciler = {
            let (weak, scope) = (Arc::downgrade(&core), core.scope.clone());
            let mut first = updates;
            tokio::spawn(supervise(
                "reconciler",
                core.config.cluster_id.clone(),
                move || {
                    // A restart subscribes anew and applies whatever it missed.
                    let core = weak.upgrade()?;
                    let updates = first.take().or_else(|| {
                        let mut updates = core.cluster.load().as_ref()?.subscribe();
                        updates.mark_changed();
                        Some(updates)
                    });
                    match updates {
                        Some(updates) => Some(Box::pin(reconcile_on_updates(
                            weak.clone(),
                            updates,
                            scope.clone(),
                        )) as BoxFuture<'static, ()>),
                        // `connect_lazy`: discovery first, then the same.
                        None if core.is_undiscovered() => Some(Box::pin(
                            lazy::discover_then_follow(weak.clone(), scope.clone()),
                        )),
                        // Through an RDS Proxy: no monitor to follow.
                        None => None,
                    }
                },
                std::future::pending(),
            ))
        };
        let _ = core.reconciler.set(reconciler);
        {
            let weak = Arc::downgrade(&core);
            tokio::spawn(supervise(
                "connection reporter",
                core.config.cluster_id.clone(),
                move || Some(super::tasks::report_connections(weak.clone())),
                std::future::pending(),
            ));
        }
        #[cfg(feature = "metrics")]
        {
            let (weak, cluster_id) = (Arc::downgrade(&core), core.config.cluster_id.clone());
            tokio::spawn(supervise(
                "pool gauges",
                cluster_id.clone(),
                move || {
                    Some(super::tasks::sample_gauges(
                        weak.clone(),
                        cluster_id.clone(),
                    ))
                },
                std::future::pending(),
            ));
        }
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

    /// Keeps this core alive for a role's pool about to be handed out (see
    /// `kept_for_handles`); one lock-free load once done.
    pub(crate) fn keep_alive_for_handles(&self) {
        if self.is_closed() || self.kept_for_handles.load().is_some() {
            return;
        }
        // Racing callers store the same core: no harm.
        self.kept_for_handles.store(self.itself.upgrade());
        // A close that ran meanwhile must not leave the core holding itself.
        if self.is_closed() {
            self.kept_for_handles.store(None);
        }
    }

    /// The writer's pool: it follows the writer for the life of this pool.
    pub(crate) fn writer(&self) -> B::Pool {
        let table = self.routing.load();
        if B::is_closed(&table.writer.pool) && self.replace_closed_pool(&table.writer) {
            return self.routing.load().writer.pool.clone();
        }
        table.writer.pool.clone()
    }

    /// The shared reader pool: it spreads its connections over the reachable readers (the
    /// writer when reads may use it and no reader can) for the life of this pool.
    pub(crate) fn reads(&self) -> B::Pool {
        let table = self.routing.load();
        if B::is_closed(&table.reads.pool) && self.replace_closed_reads(&table) {
            return self.routing.load().reads.pool.clone();
        }
        table.reads.pool.clone()
    }

    /// `err` with what the pool knows now ([`Error::context`]), when it is of a failover
    /// class: on the error path only, never on a checkout that succeeds.
    pub(crate) fn explained(&self, err: Error) -> Error {
        if !err.wants_context() {
            return err;
        }
        let topology = self.routing.load().topology.clone();
        let cluster = self.cluster.load_full();
        let writer = topology.writer();
        let instances = std::iter::once(writer)
            .chain(
                topology
                    .instances()
                    .iter()
                    .filter(|i| i.id() != writer.id()),
            )
            .map(|instance| crate::InstanceState {
                id: instance.id().to_owned(),
                role: instance.role(),
                available: instance.is_available(),
            })
            .collect();
        let context = crate::ErrorContext {
            cluster_id: self.config.cluster_id.clone(),
            topology_version: topology.version(),
            writer: writer.id().to_owned(),
            instances,
            failing_over_for: cluster
                .as_ref()
                .and_then(|cluster| cluster.failing_over_since())
                .and_then(|since| std::time::SystemTime::now().duration_since(since).ok()),
            writer_silent: cluster.as_ref().is_some_and(|c| c.is_writer_silent()),
            recent_events: cluster
                .as_ref()
                .map(|cluster| cluster.recent_events())
                .unwrap_or_default(),
        };
        err.with_context(context)
    }

    /// [`reads`](PoolCore::reads), or an error when no instance may serve reads now.
    pub(crate) fn try_reads(&self) -> Result<B::Pool> {
        if self.is_closed() {
            return Err(Error::closed());
        }
        if self.routing.load().reads.targets.routes().is_empty() {
            return Err(self.explained(self.no_reader()));
        }
        Ok(self.reads())
    }

    /// An error seen on a connection the caller took from a handed-out pool, whose role the
    /// crate does not know: a lost connection makes the monitor re-read the topology at once
    /// and becomes [`Error::is_failover`]. A read-only refusal (25006) also makes it re-check
    /// the writer, but stays the driver's error: on a reader it is the caller's mistake.
    pub(crate) fn classify(&self, err: Error) -> Error {
        if err.class() == ErrorClass::ReadOnly {
            self.request_refresh();
            return err;
        }
        self.classify_for(Role::Reader, err)
    }

    /// `err` read as this cluster's kind means it (see `Dialect::read_error`); for errors
    /// only: it reads the routing table.
    pub(crate) fn in_cluster_dialect(&self, err: Error) -> Error {
        self.routing.load().topology.dialect().read_error(err)
    }

    /// An error seen on a connection taken for `role`: a failover-class one (a lost
    /// connection; a read-only refusal on the writer) makes the monitor re-read the topology
    /// at once and becomes [`Error::is_failover`].
    pub(crate) fn classify_for(&self, role: Role, err: Error) -> Error {
        let err = self.in_cluster_dialect(err);
        // Behind a proxy a read-only refusal is the endpoint's (a read-only proxy endpoint),
        // never a demoted writer: the proxy follows the writer by itself.
        if err.class() == ErrorClass::ReadOnly && self.config.is_rds_proxy() {
            return err;
        }
        if role.fails_over_on(err.class()) {
            self.request_refresh();
            return self.explained(err.into_failover());
        }
        err
    }

    /// Resolves when `instance` stops being usable for `role`: declared unreachable, gone
    /// from the topology, or (for the writer role) no longer the writer.
    pub(crate) async fn instance_lost(&self, instance: &Instance, role: Role) {
        let Some(mut topology) = self.cluster.load().as_ref().map(|c| c.subscribe()) else {
            return std::future::pending().await;
        };
        let lost = |t: &Arc<Topology>| match t.instance(instance.id()) {
            None => true,
            Some(i) => !i.is_available() || (role == Role::Writer && i.role() != Role::Writer),
        };
        if topology.wait_for(lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The cluster monitor this pool follows (none behind RDS Proxy, or once closed).
    pub(crate) fn cluster_handle(&self) -> Option<Arc<ClusterHandle>> {
        self.cluster.load_full()
    }

    /// Asks the cluster monitor to re-read the topology now.
    pub(crate) fn request_refresh(&self) {
        if let Some(cluster) = &*self.cluster.load() {
            cluster.request_refresh();
        }
    }

    /// Cluster events; after `close` the receiver reports the channel closed.
    pub(crate) fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        match &*self.cluster.load() {
            Some(cluster) => cluster.events(),
            None => broadcast::channel(1).1,
        }
    }

    /// Whether any of the pool's pools has a connection open.
    pub(crate) fn has_connections(&self) -> bool {
        let table = self.routing.load();
        table
            .slots()
            .map(|slot| &slot.pool)
            .chain([&table.reads.pool])
            .any(|pool| B::size_and_idle(pool).0 > 0)
    }

    /// The topology the routing table follows.
    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.routing.load().topology.clone()
    }

    pub(crate) fn status(&self) -> PoolStatus {
        self.status_of(&self.routing.load())
    }

    /// The status of the pools in `table`.
    fn status_of(&self, table: &RoutingTable<B::Pool>) -> PoolStatus {
        let (reads_size, reads_idle) = B::size_and_idle(&table.reads.pool);
        PoolStatus {
            topology_version: table.topology.version(),
            through_proxy: self.config.is_rds_proxy(),
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
            reads: ReadsStatus {
                instance_ids: table
                    .reads
                    .targets
                    .routes()
                    .iter()
                    .map(|route| route.instance.id().to_owned())
                    .collect(),
                size: reads_size,
                idle: reads_idle,
                max_connections: self.config.reader.max_connections,
            },
        }
    }

    pub(crate) fn health(&self) -> Health {
        let closed = self.is_closed();
        let table = self.routing.load();
        let cluster = self.cluster.load();
        let (failing_over_since, writer_silent) = match &*cluster {
            Some(cluster) => (cluster.failing_over_since(), cluster.is_writer_silent()),
            None => (None, false),
        };
        Health {
            writes: !closed
                && table.writer.instance.is_available()
                && failing_over_since.is_none()
                && !writer_silent,
            reads: !closed && !table.reads.targets.routes().is_empty(),
            writer: table.writer.instance.id().to_owned(),
            failing_over_since,
            writer_silent,
            closed,
            status: self.status_of(&table),
        }
    }

    /// Applies a new topology: new pools for new placements (with credentials fetched
    /// first), old ones closed.
    pub(crate) async fn reconcile(&self, topology: &Arc<Topology>, scope_changed: bool) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let previous = self.routing.load_full();
        // The same version again carries new lag figures (`max_replica_lag_ms` may route
        // differently); an older one is out of date.
        let stale = previous.topology.version() > topology.version()
            || (previous.topology.version() == topology.version()
                && previous.topology.same_figures(topology));
        if stale && !scope_changed {
            return;
        }
        // The routing change a failover caused belongs to the failover's trace.
        let span = match self
            .cluster
            .load()
            .as_ref()
            .and_then(|c| c.take_failover_span(topology.version()))
        {
            Some(failover) => tracing::info_span!(
                target: "aurora_pool",
                parent: &failover,
                "aurora_pool.failover.retarget",
                cluster_id = %self.config.cluster_id,
                version = topology.version(),
                writer = topology.writer().id(),
            ),
            None => tracing::Span::none(),
        };
        self.follow(topology, previous).instrument(span).await;
    }

    /// Builds and stores the routing table for `topology` (see [`reconcile`](Self::reconcile)).
    async fn follow(&self, topology: &Arc<Topology>, previous: Arc<RoutingTable<B::Pool>>) {
        let scope = self.scope.current();
        let fresh = if B::CREDENTIALS_PER_CONNECT {
            HashMap::new()
        } else {
            fetch_credentials(
                &self.provider,
                &self.config,
                RoutingTable::new_placements(Some(&previous), topology, &scope),
            )
            .await
        };
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut fresh = fresh;
        let mut previous = previous;
        let (retired, writer_left, writer_parked) = loop {
            let built = match RoutingTable::build(
                Some(&previous),
                topology,
                &scope,
                &self.backend,
                &self.config,
                std::mem::take(&mut fresh),
            ) {
                Ok(built) => built,
                Err(err) => {
                    tracing::error!(
                        target: "aurora_pool",
                        cluster_id = %self.config.cluster_id,
                        error = %format_args!("{err:#}"),
                        "routing not updated: an instance pool could not be created"
                    );
                    return;
                }
            };
            let table = Arc::new(built.table);
            let stored = self.routing.compare_and_swap(&previous, table.clone());
            if Arc::ptr_eq(&stored, &previous) {
                break (built.retired, built.writer_left, built.writer_parked);
            }
            // A closed pool was replaced while the credentials were fetched: the pools this
            // build opened are routed nowhere; close them and build on what is routed now.
            for pool in built.opened {
                tokio::spawn(close_bounded::<B>(pool));
            }
            previous = self.routing.load_full();
        };
        self.routing_version.send_replace(topology.version());
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %self.config.cluster_id,
            version = topology.version(),
            writer = topology.writer().id(),
            readers = topology.readers().count(),
            retired_pools = retired.len(),
            writer_moved = writer_left.is_some(),
            "routing updated"
        );
        let is_gone = |instance: &Instance| {
            topology
                .instance(instance.id())
                .is_none_or(|now| !now.is_available())
        };
        let quiet_for = MonitorSettings::from_config(&self.config).quiet_for();
        if let Some(parked) = writer_parked.as_deref() {
            // Connects begun since the writer was declared dead went to it.
            end_connections_behind(parked, quiet_for);
        }
        if let Some(left) = writer_left.as_deref().filter(|i| is_gone(i)) {
            // The writer's pool follows the new writer; what it still has on the dead one
            // ends now instead of waiting on a host that never answers.
            B::abort(&self.routing.load().writer.pool);
            end_connections_behind(left, quiet_for);
        }
        for (instance, pool, targets) in retired {
            let gone = is_gone(&instance);
            if gone {
                targets.set(Vec::new());
                B::abort(&pool);
                end_connections_behind(&instance, quiet_for);
            }
            if !gone && instance.role() == Role::Reader {
                // A reader promoted (or moved out of the read scope) still serves reads: the
                // checkouts of a handed-out pool in flight finish there instead of failing
                // with `PoolClosed`.
                tokio::spawn(async move {
                    tokio::time::sleep(RETIRED_READER_GRACE).await;
                    close_bounded::<B>(pool).await;
                });
            } else {
                tokio::spawn(close_bounded::<B>(pool));
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The routing table checkouts read now.
    pub(crate) fn routing_table(&self) -> Arc<RoutingTable<B::Pool>> {
        self.routing.load_full()
    }

    /// A receiver that sees every new routing table (by topology version).
    pub(crate) fn routing_changes(&self) -> watch::Receiver<u64> {
        self.routing_version.subscribe()
    }

    /// Closes every pool and leaves the cluster monitor.
    pub(crate) fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.closed.store(true, Ordering::Release);
        if let Some(reconciler) = self.reconciler.get() {
            reconciler.abort();
        }
        self.renewer.abort();
        // The handles no longer keep the core: it ends with the last `AuroraPool`.
        self.kept_for_handles.store(None);
        let table = self.routing.load_full();
        let cluster = self.cluster.swap(None);
        let cluster_id = self.config.cluster_id.clone();
        async move {
            for pool in table.slots().map(|s| &s.pool).chain([&table.reads.pool]) {
                close_bounded::<B>(pool.clone()).await;
            }
            drop(cluster);
            tracing::info!(target: "aurora_pool", cluster_id = %cluster_id, "pool closed");
        }
    }
}

impl<B: Backend> Drop for PoolCore<B> {
    fn drop(&mut self) {
        if let Some(reconciler) = self.reconciler.get() {
            reconciler.abort();
        }
        self.renewer.abort();
    }
}

/// What a pool follows: the cluster's topology, and (but through an RDS Proxy, or before a
/// lazy pool's discovery) the cluster monitor with its updates.
struct Followed {
    /// What the pool keeps for the monitor; none before a lazy pool's discovery.
    registration: Option<Arc<Registration>>,
    cluster: Option<Arc<ClusterHandle>>,
    topology: Arc<Topology>,
    updates: Option<watch::Receiver<Arc<Topology>>>,
}

/// Reads the topology through the URL's host (within twice `connect_timeout`).
async fn discover(
    config: &Config,
    connector: &Arc<dyn Connector>,
) -> Result<(topology::Discovered, topology::TopologySource)> {
    let started = Instant::now();
    let seed = config.seed();
    let addressing = config.addressing();
    // Through an RDS Proxy the catalog describes instances the pool must not reach
    // directly: the proxy is the only instance, and it fails over by itself.
    let dialect = match config.is_rds_proxy() {
        true => Some(topology::Dialect::Pg),
        false => config.dialect,
    };
    let discovery = async {
        let target = AdminTarget::new(seed.clone(), None);
        let mut conn = connector.connect(&target, Purpose::Discovery).await?;
        let result = topology::discover(conn.as_mut(), dialect, &seed, &addressing).await;
        conn.close().await;
        result
    }
    .instrument(tracing::info_span!(
        target: "aurora_pool",
        "aurora_pool.discovery",
        cluster_id = %config.cluster_id,
        url_host = %seed,
    ));
    let (discovered, source) = tokio::time::timeout(config.connect_timeout * 2, discovery)
        .await
        .map_err(|_| {
            Error::timeout(format!(
                "topology discovery through {seed} took longer than {:?}",
                config.connect_timeout * 2
            ))
        })?
        .map_err(|err| config.explain_certificate_refusal(err))?;
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
    Ok((discovered, source))
}

/// Joins the cluster monitor with a discovered topology (none through an RDS Proxy, whose
/// topology never changes); returns the registration the pool keeps for the monitor.
fn follow_cluster(
    config: &Config,
    connector: &Arc<dyn Connector>,
    (discovered, source): (topology::Discovered, topology::TopologySource),
) -> Result<Followed> {
    let registration = Arc::new(Registration {
        connector: connector.clone(),
        source,
    });
    super::scope::require_home_region(config, &discovered.topology)?;
    if config.is_rds_proxy() {
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %config.cluster_id,
            url_host = %config.host,
            "RDS Proxy endpoint: connecting through the proxy only, no topology monitor or probes"
        );
        return Ok(Followed {
            registration: Some(registration),
            cluster: None,
            // Newer than a lazy pool's undiscovered topology.
            topology: Arc::new(discovered.topology.with_version(1)),
            updates: None,
        });
    }
    let cluster = monitor::join(
        &config.cluster_id,
        discovered.topology,
        &discovered.connected_to,
        &registration,
        MonitorSettings::from_config(config),
    )?;
    let mut updates = cluster.subscribe();
    let topology = updates.borrow_and_update().clone();
    Ok(Followed {
        registration: Some(registration),
        cluster: Some(cluster),
        topology,
        updates: Some(updates),
    })
}
