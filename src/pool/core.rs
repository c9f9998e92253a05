//! The driver-independent pool: discovery, the checkout that rides through a failover,
//! credentials per instance pool, and applying a new topology to the routing table.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::backend::{Backend, Follows};
use super::login;
use super::routing::{RoutingTable, Slot};
use super::scope::ScopeSource;
use super::status::{InstanceStatus, PoolStatus};
use super::targets::Targets;
use super::tasks::{close_bounded, fetch_credentials, reconcile_on_updates, renew_credentials};
use crate::auth::{CredentialProvider, LoginFailure};
use crate::config::{Config, PoolSizing};
use crate::connector::{BoxFuture, Connector, Purpose};
use crate::error::{Error, ErrorClass, Result};
use crate::monitor::{self, ClusterEvent, ClusterHandle, MonitorSettings, Registration};
use crate::select::Selector;
use crate::supervise::supervise;
use crate::throttle::Throttle;
use crate::topology::{self, Instance, Role, Topology};

/// How a checkout that had to wait ended.
enum Waited<C> {
    Done(Result<C>),
    /// A new routing table: take the pool anew.
    RoutingChanged,
    /// `failover_timeout` passed.
    TimedOut,
}

/// How long the pool of a reader that is still up keeps serving the handles taken before
/// the routing moved on (a promoted reader, a reader leaving the read scope).
const RETIRED_READER_GRACE: Duration = Duration::from_secs(10);

/// At most one forced renewal of every pool's credentials in this long.
const FORCED_RENEWAL_GAP: Duration = Duration::from_secs(1);

/// Pause between checkout attempts that failed for a failover-class reason.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A renewal claimed with [`SlotLogin::start_renewal`], released on drop.
struct RenewalClaim(Arc<super::login::SlotLogin>);

impl Drop for RenewalClaim {
    fn drop(&mut self) {
        self.0.renewal_done();
    }
}

/// The state behind every clone of a pool.
pub(crate) struct PoolCore<B: Backend> {
    config: Config,
    routing: ArcSwap<RoutingTable<B::Pool>>,
    selector: Selector,
    backend: B,
    /// Taken (emptied) by `close`; read without locks.
    cluster: ArcSwapOption<ClusterHandle>,
    /// Keeps this pool's credentials available to the shared monitor.
    _registration: Arc<Registration>,
    scope: ScopeSource,
    provider: Arc<dyn CredentialProvider>,
    reconciler: JoinHandle<()>,
    renewer: JoinHandle<()>,
    /// Refused logins that make every pool renew its credentials, at most one a second.
    forced_renewal: Throttle,
    /// The topology version the routing table follows; checkouts wait on it.
    routing_version: watch::Sender<u64>,
    closed: AtomicBool,
    /// This core, for the tasks it starts on the checkout path.
    itself: Weak<PoolCore<B>>,
}

impl<B: Backend> PoolCore<B> {
    /// Discovers the topology through the URL's host, joins the cluster monitor and builds
    /// the routing table.
    pub(crate) async fn start(
        config: Config,
        backend: B,
        connector: Arc<dyn Connector>,
        provider: Arc<dyn CredentialProvider>,
        scope: ScopeSource,
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
            MonitorSettings::from_config(&config),
        )?;
        let mut updates = cluster.subscribe();
        let topology = updates.borrow_and_update().clone();
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
            cluster: ArcSwapOption::from(Some(cluster)),
            _registration: registration,
            reconciler: {
                let (weak, scope) = (weak.clone(), scope.clone());
                let mut first = Some(updates);
                tokio::spawn(supervise(
                    "reconciler",
                    config.cluster_id.clone(),
                    move || {
                        // A restart subscribes anew and applies whatever it missed.
                        let updates = first.take().or_else(|| {
                            let core = weak.upgrade()?;
                            let mut updates = core.cluster.load().as_ref()?.subscribe();
                            updates.mark_changed();
                            Some(updates)
                        })?;
                        Some(reconcile_on_updates(weak.clone(), updates, scope.clone()))
                    },
                    std::future::pending(),
                ))
            },
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

    /// [`reads`](PoolCore::reads), or an error when no instance may serve reads now.
    pub(crate) fn try_reads(&self) -> Result<B::Pool> {
        if self.is_closed() {
            return Err(Error::closed());
        }
        if self.routing.load().reads.targets.routes().is_empty() {
            return Err(self.no_reader());
        }
        Ok(self.reads())
    }

    fn no_reader(&self) -> Error {
        Error::no_reader(format!(
            "cluster `{}` has no reachable reader that reads may use, and reads may not use the writer (failover_mode is strict_reader, or the custom endpoint excludes the writer)",
            self.config.cluster_id
        ))
    }

    fn pick_reader<'t>(&self, table: &'t RoutingTable<B::Pool>) -> Option<&'t Slot<B::Pool>> {
        if table.readers.is_empty() {
            return None;
        }
        let index = self.selector.pick(table.readers.len(), |i| {
            let (size, idle) = B::size_and_idle(&table.readers[i].pool);
            size.saturating_sub(idle) as usize
        });
        table.readers.get(index)
    }

    fn slot_for(&self, role: Role) -> Result<Slot<B::Pool>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        let table = self.routing.load();
        match role {
            Role::Writer => Ok(table.writer.clone()),
            Role::Reader => match self.pick_reader(&table) {
                Some(slot) => Ok(slot.clone()),
                None if table.reads_may_use_writer => Ok(table.writer.clone()),
                None => Err(self.no_reader()),
            },
        }
    }

    /// Checks out a connection for `role`, riding through a failover: a writer checkout
    /// waits (up to `failover_timeout`) while the monitor looks for the new writer, and a
    /// pool retired by a routing change is replaced by the new one. Returns the instance the
    /// connection is on.
    pub(crate) async fn checkout(&self, role: Role) -> Result<(B::Connection, Arc<Instance>)> {
        let deadline = tokio::time::Instant::now() + self.config.failover_timeout;
        self.checkout_until(role, deadline).await
    }

    /// [`checkout`](PoolCore::checkout) that gives up at `deadline`.
    pub(crate) async fn checkout_until(
        &self,
        role: Role,
        deadline: tokio::time::Instant,
    ) -> Result<(B::Connection, Arc<Instance>)> {
        let mut routing = self.routing_version.subscribe();
        let mut last_error: Option<Error> = None;
        // Instances whose refused credentials were renewed once already: each instance pool
        // holds its own, so a retry on another reader may need its own renewal.
        let mut login_renewed: Vec<Arc<Instance>> = Vec::new();
        loop {
            if self.is_closed() {
                return Err(Error::closed());
            }
            let cluster = self.cluster.load_full();
            let waiting_for_writer =
                role == Role::Writer && cluster.as_ref().is_some_and(|c| c.is_failing_over());
            let slot = match self.slot_for(role) {
                Ok(slot)
                    if role == Role::Writer
                        && !waiting_for_writer
                        && !self.routing.load().topology.writer().is_available() =>
                {
                    // Accepted as the writer by the readers' topology while the probes
                    // find it silent: waiting on it would only wait out a connect.
                    return Err(Error::failover(format!(
                        "writer {} of cluster `{}` is unreachable from here, and no other instance holds the writer role",
                        slot.instance.id(),
                        self.config.cluster_id
                    )));
                }
                Ok(slot) if !waiting_for_writer => Some(slot),
                Ok(_) => None,
                Err(err) if err.is_no_reader() => {
                    last_error = Some(err);
                    None
                }
                Err(err) => return Err(err),
            };
            routing.borrow_and_update();
            let Some(slot) = slot else {
                // Wait for the routing (or, for a writer checkout, the failover state) to
                // change. A reader checkout with no reader waits on the routing alone: the
                // failover state may be settled already, and waiting on it would spin.
                let mut failing_over = cluster
                    .filter(|_| waiting_for_writer)
                    .map(|c| c.failing_over());
                let failover_ended = async {
                    match failing_over.as_mut() {
                        Some(f) => {
                            let _ = f.wait_for(|busy| !busy).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = routing.changed() => {}
                    _ = failover_ended => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(self.failover_failed(role, last_error));
                    }
                }
                continue;
            };
            drop(cluster);
            if !B::CREDENTIALS_PER_CONNECT && slot.login.is_due(Instant::now()) {
                self.renew_behind(&slot);
            }
            let acquire = B::acquire(&slot.pool);
            tokio::pin!(acquire);
            // An idle connection is handed out at once: no timer, no waiting on the routing
            // (registering both costs every checkout that has to wait, see BENCHMARKS.md).
            let ready = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
            let outcome = match ready {
                Poll::Ready(result) => Some(result),
                Poll::Pending => match self.wait_for(acquire, &mut routing, deadline).await {
                    Waited::Done(result) => Some(result),
                    Waited::RoutingChanged => None,
                    Waited::TimedOut => return Err(self.failover_failed(role, last_error)),
                },
            };
            match outcome {
                None => continue, // a new routing table: take the pool anew
                Some(Ok(connection)) => return Ok((connection, slot.instance)),
                // Retired by a routing change that may not have reached us yet, or closed by
                // its user: a routing that still holds it gets a new pool for the instance.
                Some(Err(err)) if err.is_closed() => {
                    if !self.replace_closed_pool(&slot) {
                        tokio::select! {
                            _ = routing.changed() => {}
                            _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        }
                    }
                    last_error = Some(err);
                }
                Some(Err(err))
                    if err.is_login_rejected()
                        && !B::CREDENTIALS_PER_CONNECT
                        && !login_renewed.iter().any(|i| i.id() == slot.instance.id()) =>
                {
                    login_renewed.push(slot.instance.clone());
                    if !self.renew_rejected(&slot).await {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
                // Full or starting up: alive; wait a moment and ask again (no topology
                // signal), until the deadline.
                Some(Err(err)) if err.is_busy() => {
                    last_error = Some(err);
                    tokio::select! {
                        _ = routing.changed() => {}
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
                Some(Err(err)) if err.class().fails_over_for(role) => {
                    self.request_refresh();
                    last_error = Some(err);
                    tokio::select! {
                        _ = routing.changed() => {}
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
                Some(Err(err)) => return Err(err),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.failover_failed(role, last_error));
            }
        }
    }

    /// Waits for a checkout that could not be served at once. A busy pool is no topology
    /// signal: the probes watch the instance, so waiting here asks the monitor nothing.
    async fn wait_for(
        &self,
        mut acquire: std::pin::Pin<&mut BoxFuture<'static, Result<B::Connection>>>,
        routing: &mut watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> Waited<B::Connection> {
        tokio::select! {
            result = &mut acquire => Waited::Done(result),
            _ = routing.changed() => Waited::RoutingChanged,
            _ = tokio::time::sleep_until(deadline) => Waited::TimedOut,
        }
    }

    /// `slot`'s pool was found closed while the routing table still routes to it (its user
    /// closed a handed-out pool): puts a new pool for the same instance in its place.
    /// Returns whether it did; `false` when the routing moved on meanwhile.
    fn replace_closed_pool(&self, slot: &Slot<B::Pool>) -> bool {
        if self.is_closed() {
            return false;
        }
        let table = self.routing.load_full();
        let still_routed = table
            .slots()
            .any(|s| Arc::ptr_eq(&s.instance, &slot.instance) && B::is_closed(&s.pool));
        if !still_routed {
            return false;
        }
        let (sizing, follows) = if Arc::ptr_eq(&table.writer.instance, &slot.instance) {
            (self.config.writer, Follows::Role)
        } else {
            (self.config.reader, Follows::Instance)
        };
        self.swap_in_new_pool(
            &table,
            &format!("the pool of {}", slot.instance.id()),
            (slot.instance.role(), follows, sizing, slot.targets.clone()),
            |table, pool| table.with_pool(&slot.instance, pool),
        )
    }

    /// The shared reader pool was found closed (its user closed a handed-out pool): puts a
    /// new one in its place. Returns whether it did.
    fn replace_closed_reads(&self, table: &Arc<RoutingTable<B::Pool>>) -> bool {
        if self.is_closed() {
            return false;
        }
        self.swap_in_new_pool(
            table,
            "the readers' pool",
            (
                Role::Reader,
                Follows::Role,
                self.config.reader,
                table.reads.targets.clone(),
            ),
            |table, pool| table.with_reads(pool),
        )
    }

    /// Opens a pool (`role`, `follows`, `sizing`, `targets`) and stores the table `place`
    /// builds with it over `table`; when the routing moved on meanwhile the new pool is
    /// closed. Returns whether a pool is in place (this one or another checkout's).
    fn swap_in_new_pool(
        &self,
        table: &Arc<RoutingTable<B::Pool>>,
        what: &str,
        (role, follows, sizing, targets): (Role, Follows, PoolSizing, Arc<Targets>),
        place: impl FnOnce(&RoutingTable<B::Pool>, B::Pool) -> RoutingTable<B::Pool>,
    ) -> bool {
        let pool = match self.backend.open(role, follows, sizing, targets) {
            Ok(pool) => pool,
            Err(err) => {
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    error = %err,
                    "{what} was closed and could not be replaced"
                );
                return false;
            }
        };
        let swapped = self
            .routing
            .compare_and_swap(table, Arc::new(place(table, pool.clone())));
        if !Arc::ptr_eq(&swapped, table) {
            // Another checkout replaced it first, or the routing changed.
            tokio::spawn(close_bounded::<B>(pool));
            return true;
        }
        tracing::warn!(
            target: "aurora_pool",
            cluster_id = %self.config.cluster_id,
            "{what} was closed by its user while still routed to; replaced it"
        );
        true
    }

    fn failover_failed(&self, role: Role, cause: Option<Error>) -> Error {
        let err = Error::failover_failed(format!(
            "no {role} of cluster `{}` could be reached within failover_timeout ({:?})",
            self.config.cluster_id, self.config.failover_timeout
        ));
        match cause {
            Some(cause) => err.with_source(cause),
            None => err,
        }
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

    /// An error seen on a connection taken for `role`: a failover-class one (a lost
    /// connection; a read-only refusal on the writer) makes the monitor re-read the topology
    /// at once and becomes [`Error::is_failover`].
    pub(crate) fn classify_for(&self, role: Role, err: Error) -> Error {
        if err.class().fails_over_for(role) {
            self.request_refresh();
            return err.into_failover();
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

    /// Renews `slot`'s due credentials in a task of their own, one at a time: a checkout
    /// never waits on the provider (an idle pooled connection needs no login, and a new one
    /// logs in with the current credentials meanwhile; a refusal renews them on its own).
    fn renew_behind(&self, slot: &Slot<B::Pool>) {
        let Some(core) = self.itself.upgrade() else {
            return;
        };
        if !slot.login.start_renewal() {
            return;
        }
        let slot = slot.clone();
        tokio::spawn(async move {
            // Released however the task ends (a panic, the runtime shutting down).
            let _claim = RenewalClaim(slot.login.clone());
            core.renew(&slot).await;
        });
    }

    /// Fetches new credentials for `slot`'s pool (its current ones are due).
    pub(crate) async fn renew(&self, slot: &Slot<B::Pool>) {
        let target = login::target(&slot.instance, self.config.user());
        let seen = slot.login.current();
        match login::fetch(self.provider.as_ref(), &target, self.config.connect_timeout).await {
            Ok(credentials) => {
                slot.login
                    .replace(&seen, credentials, || self.credentials_renewed(slot));
            }
            Err(err) => {
                slot.login.retry_soon();
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    instance = slot.instance.id(),
                    error = %err,
                    "renewing credentials failed; new connections keep the current ones"
                );
            }
        }
    }

    /// `slot`'s credentials were renewed: the pools that connect to its instance use them
    /// from their next connection.
    fn credentials_renewed(&self, slot: &Slot<B::Pool>) {
        self.backend.retarget(&slot.pool, &slot.targets);
        let table = self.routing.load();
        self.backend
            .retarget(&table.reads.pool, &table.reads.targets);
    }

    /// A login with `slot`'s credentials was refused: asks the provider for new ones.
    /// Returns whether it gave some.
    async fn renew_rejected(&self, slot: &Slot<B::Pool>) -> bool {
        let target = login::target(&slot.instance, self.config.user());
        let rejected = slot.login.current();
        let failure = LoginFailure::new(&target, &rejected, 1, Duration::ZERO);
        let renewed = tokio::time::timeout(
            self.config.connect_timeout,
            login::unwind_safe(self.provider.login_rejected(failure)),
        )
        .await;
        match renewed {
            Ok(Ok(Some(credentials))) => {
                // Replaced meanwhile by a concurrent renewal: retry with those.
                slot.login
                    .replace(&rejected, credentials, || self.credentials_renewed(slot));
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(err)) => {
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    instance = slot.instance.id(),
                    error = %err,
                    "renewing refused credentials failed"
                );
                false
            }
            Err(_) => false,
        }
    }

    /// A login was refused on a connection the caller took from one of the pools: every
    /// pool asks for new credentials (at most once a second).
    pub(crate) fn login_rejected_somewhere(self: &Arc<Self>) {
        if !self.forced_renewal.pass(FORCED_RENEWAL_GAP) {
            return;
        }
        let core = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(core) = core.upgrade() else { return };
            let table = core.routing.load_full();
            for slot in table.slots() {
                core.renew_rejected(slot).await;
            }
        });
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

    /// Applies a new topology: new pools for new placements (with credentials fetched
    /// first), old ones closed.
    pub(crate) async fn reconcile(&self, topology: &Arc<Topology>, scope_changed: bool) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let previous = self.routing.load_full();
        if previous.topology.version() >= topology.version() && !scope_changed {
            return;
        }
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
        let (retired, writer_left) = loop {
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
                        error = %err,
                        "routing not updated: an instance pool could not be created"
                    );
                    return;
                }
            };
            let table = Arc::new(built.table);
            let stored = self.routing.compare_and_swap(&previous, table.clone());
            if Arc::ptr_eq(&stored, &previous) {
                break (built.retired, built.writer_left);
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
        if writer_left.as_deref().is_some_and(is_gone) {
            // The writer's pool follows the new writer; what it still has on the dead one
            // ends now instead of waiting on a host that never answers.
            B::abort(&self.routing.load().writer.pool);
        }
        for (instance, pool, targets) in retired {
            let gone = is_gone(&instance);
            if gone {
                targets.set(Vec::new());
                B::abort(&pool);
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
        self.reconciler.abort();
        self.renewer.abort();
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
        self.reconciler.abort();
        self.renewer.abort();
    }
}
