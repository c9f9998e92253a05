//! The driver-independent pool machinery: discovery, the routing table and the reconciler
//! that keeps it in line with the published topology.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::login::{self, SlotLogin};
use super::scope::{ReadScope, ScopeSource};
use super::status::{InstanceStatus, PoolStatus};
use super::transaction::{self, Phase, Status, TransactionOptions};
use crate::auth::{CredentialProvider, Credentials, LoginFailure};
use crate::config::{Config, PoolSizing};
use crate::connector::{BoxFuture, Connector, Purpose};
use crate::error::{Error, ErrorClass, Result};
use crate::monitor::{self, ClusterEvent, ClusterHandle, MonitorSettings, Registration};
use crate::retry::RetryPolicy;
use crate::select::Selector;
use crate::topology::{self, Instance, Role, Topology};

/// What a driver backend provides: a pool per instance.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The driver's pool handle (cheap to clone).
    type Pool: Clone + Send + Sync + 'static;

    /// Whether the backend asks the credential provider on every connect itself; then the
    /// core neither fetches credentials for new pools nor renews them.
    const CREDENTIALS_PER_CONNECT: bool = false;

    /// Creates a pool to `instance` that opens connections lazily, logging in with
    /// `credentials`.
    fn open(
        &self,
        instance: &Instance,
        sizing: PoolSizing,
        credentials: &Credentials,
    ) -> Result<Self::Pool>;

    /// Makes the pool's future connections log in with `credentials`; open connections stay.
    fn set_credentials(&self, pool: &Self::Pool, instance: &Instance, credentials: &Credentials);

    /// Ends the pool's connections at once, checked-out ones included: their instance is
    /// gone. Backends that cannot reach the socket leave them to `close`.
    fn abort(pool: &Self::Pool) {
        let _ = pool;
    }

    /// Closes a pool: idle connections at once, checked-out ones when they are returned.
    fn close(pool: Self::Pool) -> BoxFuture<'static, ()>;

    /// Whether the pool was closed (by the core, or by a user holding a handed-out pool).
    fn is_closed(pool: &Self::Pool) -> bool;

    /// Connections currently open, and how many of them are idle.
    fn size_and_idle(pool: &Self::Pool) -> (u32, u32);

    /// A checked-out connection.
    type Connection: Send + 'static;

    /// Checks out a connection; a pool closed meanwhile yields [`Error::is_closed`].
    fn acquire(pool: &Self::Pool) -> BoxFuture<'static, Result<Self::Connection>>;

    /// Closes a checked-out connection instead of returning it to its pool (its state is
    /// unknown).
    fn discard(connection: Self::Connection);

    /// Opens a transaction with `statement` (`BEGIN` and its options) the way the driver
    /// tracks it: a nested begin inside the work then becomes a savepoint.
    fn begin(connection: &mut Self::Connection, statement: String) -> BoxFuture<'_, Result<()>>;

    /// Commits the transaction `begin` opened.
    fn commit(connection: &mut Self::Connection) -> BoxFuture<'_, Result<()>>;

    /// Rolls back the transaction `begin` opened.
    fn rollback(connection: &mut Self::Connection) -> BoxFuture<'_, Result<()>>;

    /// Runs one query of the simple protocol and returns the first column of its first row
    /// as text (`None` for NULL or no row).
    fn query_value(
        connection: &mut Self::Connection,
        sql: String,
    ) -> BoxFuture<'_, Result<Option<String>>>;
}

/// What one attempt of retried work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The work as it is.
    Plain,
    /// The work between `BEGIN` and `COMMIT`.
    Transaction(TransactionOptions),
}

impl Attempt {
    /// The role the work's errors are classified for: a `READ ONLY` transaction refuses
    /// writes like a reader (25006 is then the caller's mistake, not a demoted writer).
    pub(crate) fn classified_as(self, role: Role) -> Role {
        match self {
            Attempt::Transaction(options) if options.is_read_only() => Role::Reader,
            _ => role,
        }
    }
}

/// A checked-out connection that is closed, not returned to its pool, unless the attempt
/// that used it ended cleanly: dropping a retried call at any await (a client gone, a
/// timeout) never hands the next borrower a connection inside a transaction or mid-query.
struct Held<B: Backend> {
    connection: Option<B::Connection>,
}

impl<B: Backend> Held<B> {
    fn new(connection: B::Connection) -> Held<B> {
        Held {
            connection: Some(connection),
        }
    }

    fn get(&mut self) -> Option<&mut B::Connection> {
        self.connection.as_mut()
    }

    /// Returns the connection to its pool.
    fn release(mut self) {
        drop(self.connection.take());
    }
}

impl<B: Backend> Drop for Held<B> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            B::discard(connection);
        }
    }
}

/// How one attempt ended, and whether its connection may go back to the pool.
struct Ended<T> {
    result: Result<T>,
    reusable: bool,
}

/// One attempt of a caller's work on a checked-out connection, its errors classified.
pub(crate) trait Retried<C, T>: Send {
    fn attempt<'a>(&'a mut self, connection: &'a mut C) -> BoxFuture<'a, Result<T>>
    where
        T: 'a;
}

/// How a checkout that had to wait ended.
enum Waited<C> {
    Done(Result<C>),
    /// A new routing table: take the pool anew.
    RoutingChanged,
    /// `failover_timeout` passed.
    TimedOut,
}

/// Connections a new pool opens at once while filling up to its minimum.
const PREFILL_CONCURRENCY: usize = 4;

/// New pools wait up to this long (at random) before filling up, so that many processes
/// reacting to one failover do not reach the new writer all at the same moment.
const PREFILL_JITTER: Duration = Duration::from_millis(100);

/// Rounds of connects a new pool makes to fill up to its minimum.
const PREFILL_ROUNDS: u32 = 6;

/// How long the pool of a reader that is still up keeps serving the handles taken before
/// the routing moved on (a promoted reader, a reader leaving the read scope).
const RETIRED_READER_GRACE: Duration = Duration::from_secs(10);

/// Longest wait for a `ROLLBACK` after the work failed; a connection that does not roll
/// back in time is closed instead.
const ROLLBACK_WAIT: Duration = Duration::from_secs(5);

/// What became of a transaction whose COMMIT was lost.
enum Resolved {
    Committed,
    /// Rolled back: the error says why it may run again.
    Aborted(Error),
    /// Not known: never run again.
    Unknown(Error),
}

/// Pause between checkout attempts that failed for a failover-class reason.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A pool to one instance in one role.
#[derive(Clone)]
pub(crate) struct Slot<P> {
    pub(crate) instance: Arc<Instance>,
    pub(crate) pool: P,
    pub(crate) login: Arc<SlotLogin>,
}

/// Pools a routing change no longer uses, with the instance each served.
type Retired<P> = Vec<(Arc<Instance>, P)>;

/// Which pool serves which role; swapped atomically, read without locks at checkout.
pub(crate) struct RoutingTable<P> {
    pub(crate) topology: Arc<Topology>,
    pub(crate) writer: Slot<P>,
    pub(crate) readers: Vec<Slot<P>>,
    /// Whether reads with no reader available may use the writer.
    reads_may_use_writer: bool,
}

impl<P: Clone + Send + Sync + 'static> RoutingTable<P> {
    /// The instances of `topology` that need a new pool: those not already in `previous`
    /// with the same role and address.
    fn new_placements<'t>(
        previous: Option<&RoutingTable<P>>,
        topology: &'t Topology,
        scope: &ReadScope,
    ) -> Vec<&'t Instance> {
        let routed = std::iter::once(topology.writer()).chain(Self::readers_in(topology, scope));
        routed
            .filter(|instance| {
                previous.is_none_or(|t| !t.slots().any(|s| s.instance.same_placement(instance)))
            })
            .collect()
    }

    /// Builds the table for `topology`, reusing the pools of `previous` whose instance keeps
    /// its role and address; new pools log in with the `fresh` credentials fetched for their
    /// instance id. Returns the pools no longer used.
    /// The readers that get a pool: reachable ones inside the read scope.
    fn readers_in<'t>(
        topology: &'t Topology,
        scope: &ReadScope,
    ) -> impl Iterator<Item = &'t Instance> {
        topology
            .readers()
            .filter(move |r| r.is_available() && scope.allows(r.id()))
    }

    fn build<B: Backend<Pool = P>>(
        previous: Option<&RoutingTable<P>>,
        topology: &Arc<Topology>,
        scope: &ReadScope,
        backend: &B,
        config: &Config,
        mut fresh: HashMap<String, Credentials>,
    ) -> Result<(RoutingTable<P>, Retired<P>)> {
        let mut old: Vec<&Slot<P>> = previous
            .map(|t| std::iter::once(&t.writer).chain(&t.readers).collect())
            .unwrap_or_default();
        let mut opened: Vec<P> = Vec::new();
        let mut take = |instance: &Instance, sizing: PoolSizing| -> Result<Slot<P>> {
            let (pool, login) = match old.iter().position(|s| s.instance.same_placement(instance)) {
                Some(i) => {
                    let slot = old.swap_remove(i);
                    (slot.pool.clone(), slot.login.clone())
                }
                None => {
                    let login = SlotLogin::new(fresh.remove(instance.id()));
                    tracing::debug!(
                        target: "aurora_pool",
                        instance = instance.id(),
                        role = %instance.role(),
                        address = %instance.address(),
                        "opening instance pool"
                    );
                    let pool = backend.open(instance, sizing, &login.current())?;
                    opened.push(pool.clone());
                    if sizing.min_connections > 0 {
                        tokio::spawn(prefill::<B>(
                            pool.clone(),
                            sizing.min_connections,
                            instance.id().to_owned(),
                        ));
                    }
                    (pool, Arc::new(login))
                }
            };
            Ok(Slot {
                instance: Arc::new(instance.clone()),
                pool,
                login,
            })
        };
        // Unreachable readers, and those outside the scope, get no pool: their connections
        // are closed.
        let slots = take(topology.writer(), config.writer).and_then(|writer| {
            let readers = Self::readers_in(topology, scope)
                .map(|r| take(r, config.reader))
                .collect::<Result<Vec<_>>>()?;
            Ok((writer, readers))
        });
        let (writer, readers) = match slots {
            Ok(slots) => slots,
            Err(err) => {
                for pool in opened {
                    tokio::spawn(close_bounded::<B>(pool));
                }
                return Err(err);
            }
        };
        let retired = old
            .into_iter()
            .map(|s| (s.instance.clone(), s.pool.clone()))
            .collect();
        Ok((
            RoutingTable {
                topology: topology.clone(),
                writer,
                readers,
                reads_may_use_writer: scope.reads_may_use_writer(topology),
            },
            retired,
        ))
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
    /// Taken (emptied) by `close`; read without locks.
    cluster: ArcSwapOption<ClusterHandle>,
    /// Keeps this pool's credentials available to the shared monitor.
    _registration: Arc<Registration>,
    scope: ScopeSource,
    provider: Arc<dyn CredentialProvider>,
    reconciler: JoinHandle<()>,
    renewer: JoinHandle<()>,
    /// When a refused login last made every pool renew its credentials (ms since start).
    last_forced_renewal: std::sync::atomic::AtomicU64,
    started: Instant,
    /// The topology version the routing table follows; checkouts wait on it.
    routing_version: watch::Sender<u64>,
    closed: AtomicBool,
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
        let (table, _) =
            RoutingTable::build(None, &topology, &read_scope, &backend, &config, fresh)?;
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
                ))
            },
            scope,
            renewer: {
                let weak = weak.clone();
                tokio::spawn(supervise(
                    "credential renewer",
                    config.cluster_id.clone(),
                    move || (!B::CREDENTIALS_PER_CONNECT).then(|| renew_credentials(weak.clone())),
                ))
            },
            provider,
            last_forced_renewal: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            routing_version: watch::channel(topology.version()).0,
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

    /// A reachable reader's pool chosen by the strategy; `None` when there is none.
    pub(crate) fn reader(&self) -> Option<B::Pool> {
        let table = self.routing.load();
        self.pick_reader(&table).map(|slot| slot.pool.clone())
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

    /// The pool for `role` right now, falling back from reader to writer when the
    /// failover mode allows it.
    pub(crate) fn pool_for(&self, role: Role) -> Result<B::Pool> {
        self.slot_for(role).map(|slot| slot.pool)
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
                None => Err(Error::no_reader(format!(
                    "cluster `{}` has no reachable reader that reads may use, and reads may not use the writer (failover_mode is strict_reader, or the custom endpoint excludes the writer)",
                    self.config.cluster_id
                ))),
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
    async fn checkout_until(
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
                self.renew(&slot).await;
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
                Some(Err(err)) if err.class().fails_over_for(role) && !err.is_busy() => {
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
        let sizing = match slot.instance.role() {
            Role::Writer => self.config.writer,
            Role::Reader => self.config.reader,
        };
        let pool = match self
            .backend
            .open(&slot.instance, sizing, &slot.login.current())
        {
            Ok(pool) => pool,
            Err(err) => {
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    instance = slot.instance.id(),
                    error = %err,
                    "a closed instance pool could not be replaced"
                );
                return false;
            }
        };
        let replace = |s: &Slot<B::Pool>| {
            if Arc::ptr_eq(&s.instance, &slot.instance) {
                Slot {
                    instance: s.instance.clone(),
                    pool: pool.clone(),
                    login: s.login.clone(),
                }
            } else {
                s.clone()
            }
        };
        let next = RoutingTable {
            topology: table.topology.clone(),
            writer: replace(&table.writer),
            readers: table.readers.iter().map(replace).collect(),
            reads_may_use_writer: table.reads_may_use_writer,
        };
        let swapped = self.routing.compare_and_swap(&table, Arc::new(next));
        if !Arc::ptr_eq(&swapped, &table) {
            // Another checkout replaced it first, or the routing changed.
            tokio::spawn(close_bounded::<B>(pool));
            return true;
        }
        tracing::warn!(
            target: "aurora_pool",
            cluster_id = %self.config.cluster_id,
            instance = slot.instance.id(),
            "an instance pool was closed by its user while still routed to; replaced it"
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

    /// Runs `work` on a checkout for `role`, again on a fresh checkout when it fails because
    /// of a failover ([`Error::is_retryable`]) or its instance is declared lost while it runs,
    /// within the policy's attempts and time limit. The time limit bounds the whole call,
    /// checkouts included. A transaction is run again only when it is known not to have
    /// committed.
    pub(crate) async fn retry<T: Send>(
        &self,
        policy: RetryPolicy,
        role: Role,
        kind: Attempt,
        work: &mut impl Retried<B::Connection, T>,
    ) -> Result<T> {
        let policy = match kind {
            Attempt::Plain => policy,
            Attempt::Transaction(options) => options.retry_policy(),
        };
        let started = Instant::now();
        let limit = policy.time_limit(self.config.failover_timeout);
        let deadline = tokio::time::Instant::now() + limit;
        let gave_up = |attempt: u32, cause: Option<Error>| {
            let err = Error::failover_failed(format!(
                "gave up after {attempt} attempts in {:?} (the retry policy's time limit, {limit:?})",
                started.elapsed()
            ));
            match cause {
                Some(cause) => err.with_source(cause),
                None => err,
            }
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (connection, instance) = self.checkout_until(role, deadline).await?;
            let mut held = Held::<B>::new(connection);
            let phase = std::sync::Mutex::new(Phase::Work);
            // The work's value once COMMIT is on its way: a lost COMMIT that turns out
            // committed returns it.
            let value = std::sync::Mutex::new(None);
            let outcome = match held.get() {
                Some(connection) => tokio::select! {
                    ended = self.attempt(role, kind, connection, work, &phase, &value) => Some(ended),
                    _ = self.instance_lost(&instance, role) => {
                        Some(Ended {
                            result: Err(Error::failover(format!(
                                "instance {} was declared unreachable (or lost its role) while the work was running",
                                instance.id()
                            ))),
                            reusable: false,
                        })
                    }
                    _ = tokio::time::sleep_until(deadline) => None,
                },
                None => None,
            };
            let phase = *phase.lock().unwrap_or_else(PoisonError::into_inner);
            let committed_value = value.lock().unwrap_or_else(PoisonError::into_inner).take();
            let Some(ended) = outcome else {
                // Cut off by the time limit: its connection is closed (the server rolls back
                // unless COMMIT was already sent).
                drop(held);
                let cut = gave_up(attempt, None);
                return Err(match phase {
                    Phase::Work => cut,
                    Phase::Committing(None) => cut,
                    Phase::Committing(Some(xid)) => transaction::unknown(
                        xid,
                        "the retry policy's time limit passed before it could be asked",
                        Some(cut),
                    ),
                });
            };
            if ended.reusable {
                held.release();
            } else {
                drop(held);
            }
            let err = match ended.result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let err = match phase {
                // The connection went during COMMIT: find out what happened before anything
                // is run again.
                Phase::Committing(xid)
                    if err.is_failover() || err.is_transaction_state_unknown() =>
                {
                    match self.resolve_commit(xid, deadline, err).await {
                        Resolved::Committed => match committed_value {
                            Some(value) => return Ok(value),
                            None => {
                                return Err(Error::failover(
                                    "the transaction committed but its value was not kept",
                                )
                                .in_transaction());
                            }
                        },
                        Resolved::Aborted(err) => err,
                        Resolved::Unknown(err) => return Err(err),
                    }
                }
                _ => err,
            };
            let conflict =
                matches!(kind, Attempt::Transaction(options) if options.retries_conflict(&err));
            if !err.is_retryable() && !conflict {
                return Err(err);
            }
            if attempt >= policy.attempts() {
                return Err(err);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(gave_up(attempt, Some(err)));
            }
            tracing::debug!(
                target: "aurora_pool",
                cluster_id = %self.config.cluster_id,
                attempt,
                instance = instance.id(),
                error = %err,
                "retrying after a failover"
            );
            tokio::time::sleep(RetryPolicy::pause(attempt).min(limit)).await;
        }
    }

    /// Finds out on the writer whether the transaction whose COMMIT was lost committed.
    async fn resolve_commit(
        &self,
        xid: Option<u64>,
        deadline: tokio::time::Instant,
        lost: Error,
    ) -> Resolved {
        let Some(xid) = xid else {
            // It wrote nothing: running it again changes nothing that was not changed.
            return Resolved::Aborted(lost);
        };
        let mut last = lost;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Resolved::Unknown(transaction::unknown(
                    xid,
                    "no writer answered within the retry policy's time limit",
                    Some(last),
                ));
            }
            let asked = async {
                let (connection, _) = self.checkout_until(Role::Writer, deadline).await?;
                let mut held = Held::<B>::new(connection);
                let Some(connection) = held.get() else {
                    return Err(Error::closed());
                };
                let status = B::query_value(connection, transaction::status_query(xid)).await;
                if status.is_ok() {
                    held.release();
                }
                status
            };
            let status = match asked.await {
                Ok(status) => Status::parse(status.as_deref()),
                Err(err) if err.is_failover() || err.is_connect() || err.is_timeout() => {
                    last = err;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                // 22023: "transaction ID is in the future": this writer never saw it.
                Err(err) if err.sqlstate() == Some("22023") => Status::Unknown,
                Err(err) => {
                    return Resolved::Unknown(transaction::unknown(
                        xid,
                        "asking the writer failed",
                        Some(err),
                    ));
                }
            };
            tracing::info!(
                target: "aurora_pool",
                cluster_id = %self.config.cluster_id,
                xid,
                status = ?status,
                "outcome of a transaction whose COMMIT was lost"
            );
            match status {
                Status::Committed => return Resolved::Committed,
                Status::Aborted => {
                    return Resolved::Aborted(
                        Error::failover(format!(
                            "the connection was lost during COMMIT of transaction {xid}, which the server rolled back"
                        ))
                        .with_source(last),
                    );
                }
                Status::InProgress => tokio::time::sleep(transaction::IN_PROGRESS_PAUSE).await,
                Status::Unknown => {
                    return Resolved::Unknown(transaction::unknown(
                        xid,
                        "the writer does not know it (too old, or lost with the old writer)",
                        Some(last),
                    ));
                }
            }
        }
    }

    /// One attempt of `work`, in a transaction for [`Attempt::Transaction`]. `phase` tells
    /// whether COMMIT was sent, and `value` keeps the work's value once it was.
    async fn attempt<T: Send>(
        &self,
        role: Role,
        kind: Attempt,
        connection: &mut B::Connection,
        work: &mut impl Retried<B::Connection, T>,
        phase: &std::sync::Mutex<Phase>,
        value: &std::sync::Mutex<Option<T>>,
    ) -> Ended<T> {
        let options = match kind {
            Attempt::Plain => {
                let result = work.attempt(connection).await;
                // A lost connection is closed; one the server answered with an error is fine.
                let reusable = !result.as_ref().is_err_and(Error::is_failover);
                return Ended { result, reusable };
            }
            Attempt::Transaction(options) => options,
        };
        let role = kind.classified_as(role);
        if let Err(err) = B::begin(connection, options.begin_statement()).await {
            return Ended {
                result: Err(self.classify_for(role, err)),
                reusable: false,
            };
        }
        let done = match work.attempt(connection).await {
            Ok(done) => done,
            Err(err) => {
                // Lost before COMMIT was sent: the server rolls back; the connection goes.
                if err.is_failover() {
                    return Ended {
                        result: Err(err),
                        reusable: false,
                    };
                }
                // The caller's own error comes back unchanged, rolled back or not: a
                // connection that cannot roll back is closed, which rolls back too.
                let rollback = tokio::time::timeout(ROLLBACK_WAIT, B::rollback(connection)).await;
                return Ended {
                    result: Err(err),
                    reusable: matches!(rollback, Ok(Ok(()))),
                };
            }
        };
        let xid = match B::query_value(connection, transaction::TRANSACTION_ID.to_owned()).await {
            Ok(text) => transaction::parse_xid(text.as_deref()),
            Err(err) => Err(self.classify_for(role, err)),
        };
        let xid = match xid {
            Ok(xid) => xid,
            Err(err) => {
                // Still before COMMIT: a lost connection rolled back; an error the server
                // sent (an aborted transaction) is rolled back here.
                let reusable = !err.is_failover()
                    && matches!(
                        tokio::time::timeout(ROLLBACK_WAIT, B::rollback(connection)).await,
                        Ok(Ok(()))
                    );
                return Ended {
                    result: Err(err),
                    reusable,
                };
            }
        };
        *phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::Committing(xid);
        *value.lock().unwrap_or_else(PoisonError::into_inner) = Some(done);
        match B::commit(connection).await {
            Ok(()) => {
                let done = value.lock().unwrap_or_else(PoisonError::into_inner).take();
                match done {
                    Some(done) => Ended {
                        result: Ok(done),
                        reusable: true,
                    },
                    None => Ended {
                        result: Err(
                            Error::failover("the committed value was taken").in_transaction()
                        ),
                        reusable: false,
                    },
                }
            }
            // A failed COMMIT the server answered (a serialization failure, a deferred
            // constraint) rolled back; the driver's bookkeeping may not know, so the
            // connection goes either way.
            Err(err) => Ended {
                result: Err(self.classify_for(role, err)),
                reusable: false,
            },
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

    /// Fetches new credentials for `slot`'s pool (its current ones are due).
    async fn renew(&self, slot: &Slot<B::Pool>) {
        let target = login::target(&slot.instance, self.config.user());
        let seen = slot.login.current();
        match login::fetch(self.provider.as_ref(), &target, self.config.connect_timeout).await {
            Ok(credentials) => {
                slot.login.replace(&seen, credentials, |credentials| {
                    self.backend
                        .set_credentials(&slot.pool, &slot.instance, credentials)
                });
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
                slot.login.replace(&rejected, credentials, |credentials| {
                    self.backend
                        .set_credentials(&slot.pool, &slot.instance, credentials)
                });
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
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_forced_renewal.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        self.last_forced_renewal
            .store(now.max(1), Ordering::Relaxed);
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
    async fn reconcile(&self, topology: &Arc<Topology>, scope_changed: bool) {
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
        let (table, retired) = match RoutingTable::build(
            Some(&previous),
            topology,
            &scope,
            &self.backend,
            &self.config,
            fresh,
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
        self.routing.store(Arc::new(table));
        self.routing_version.send_replace(topology.version());
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %self.config.cluster_id,
            version = topology.version(),
            writer = topology.writer().id(),
            readers = topology.readers().count(),
            retired_pools = retired.len(),
            "routing updated"
        );
        for (instance, pool) in retired {
            let gone = topology
                .instance(instance.id())
                .is_none_or(|now| !now.is_available());
            if gone {
                B::abort(&pool);
            }
            if !gone && instance.role() == Role::Reader {
                // A reader promoted (or moved out of the read scope) still serves reads: the
                // checkouts of a handed-out pool in flight finish there instead of failing
                // with `PoolClosed`. A writer's pool closes at once: no write may reach it.
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

    /// Closes every pool and leaves the cluster monitor.
    pub(crate) fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.closed.store(true, Ordering::Release);
        self.reconciler.abort();
        self.renewer.abort();
        let table = self.routing.load_full();
        let cluster = self.cluster.swap(None);
        let cluster_id = self.config.cluster_id.clone();
        async move {
            for slot in table.slots() {
                close_bounded::<B>(slot.pool.clone()).await;
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

/// How long closing an instance pool waits for its checked-out connections. A connection
/// stuck on a silent host (sqlx pings every connection it takes back, without a timeout)
/// would otherwise hold `close` forever; past this the pool is closed to new checkouts and
/// the stuck connection is left to the operating system's TCP timeouts.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes `pool`, waiting at most [`CLOSE_WAIT`] for its checked-out connections.
async fn close_bounded<B: Backend>(pool: B::Pool) {
    let _ = tokio::time::timeout(CLOSE_WAIT, B::close(pool)).await;
}

/// Runs the task `start` makes, and a new one (after a pause) whenever it panics, until it
/// ends by itself or `start` has nothing to run (the pool is gone). Aborting the supervisor
/// aborts the task.
async fn supervise<F, Fut>(task: &'static str, cluster_id: String, mut start: F)
where
    F: FnMut() -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// Aborts the supervised task when the supervisor itself is aborted.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut restarts: u32 = 0;
    while let Some(future) = start() {
        let running = tokio::spawn(future);
        let _guard = AbortOnDrop(running.abort_handle());
        match running.await {
            Err(err) if err.is_panic() => {
                restarts = restarts.saturating_add(1);
                let pause = monitor::restart_pause(restarts);
                tracing::error!(
                    target: "aurora_pool",
                    cluster_id = %cluster_id,
                    task,
                    restarts,
                    pause_ms = pause.as_millis() as u64,
                    "pool task panicked; restarting"
                );
                tokio::time::sleep(pause).await;
            }
            _ => return,
        }
    }
}

async fn reconcile_on_updates<B: Backend>(
    core: Weak<PoolCore<B>>,
    mut updates: watch::Receiver<Arc<Topology>>,
    mut scope: ScopeSource,
) {
    loop {
        let scope_changed = tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                false
            }
            _ = scope.changed() => true,
        };
        let topology = updates.borrow_and_update().clone();
        let Some(core) = core.upgrade() else { break };
        core.reconcile(&topology, scope_changed).await;
    }
}

/// Fetches credentials for each of `instances` at once, each bounded by the connect timeout.
/// An instance whose fetch fails is left out: its pool opens with none and renews them soon.
async fn fetch_credentials(
    provider: &Arc<dyn CredentialProvider>,
    config: &Config,
    instances: Vec<&Instance>,
) -> HashMap<String, Credentials> {
    let mut fetches = tokio::task::JoinSet::new();
    for instance in instances {
        let target = login::target(instance, config.user());
        let (provider, id, timeout) = (
            provider.clone(),
            instance.id().to_owned(),
            config.connect_timeout,
        );
        fetches.spawn(async move { (id, login::fetch(provider.as_ref(), &target, timeout).await) });
    }
    let mut fresh = HashMap::new();
    while let Some(joined) = fetches.join_next().await {
        let Ok((id, result)) = joined else { continue };
        match result {
            Ok(credentials) => {
                fresh.insert(id, credentials);
            }
            Err(err) => tracing::warn!(
                target: "aurora_pool",
                cluster_id = %config.cluster_id,
                instance = id,
                error = %err,
                "no credentials for a new instance pool; retrying shortly"
            ),
        }
    }
    fresh
}

/// Renews each pool's credentials when they are due, for as long as the pool lives.
async fn renew_credentials<B: Backend>(core: Weak<PoolCore<B>>) {
    loop {
        let (due, mut routing) = {
            let Some(core) = core.upgrade() else { return };
            let table = core.routing.load_full();
            let due = table.slots().filter_map(|s| s.login.renew_at()).min();
            (due, core.routing_version.subscribe())
        };
        let wake = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake => {}
            changed = routing.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(core) = core.upgrade() else { return };
        let table = core.routing.load_full();
        let now = Instant::now();
        for slot in table.slots().filter(|s| s.login.is_due(now)) {
            core.renew(slot).await;
        }
    }
}

/// Opens `min` connections in a new pool (at most [`PREFILL_CONCURRENCY`] at a time, after a
/// random delay) and returns them to it idle. Failed connects are retried with backoff
/// ([`PREFILL_ROUNDS`] rounds at most: a new writer may refuse connections for a moment);
/// a pool closed meanwhile ends it.
async fn prefill<B: Backend>(pool: B::Pool, min: u32, instance: String) {
    tokio::time::sleep(PREFILL_JITTER.mul_f64(fastrand::f64())).await;
    let started = Instant::now();
    let mut held = Vec::with_capacity(min as usize);
    let mut failed = None;
    let mut pause = RETRY_PAUSE;
    for round in 1..=PREFILL_ROUNDS {
        let batch = (min as usize - held.len()).min(PREFILL_CONCURRENCY);
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..batch {
            opening.spawn(B::acquire(&pool));
        }
        let mut closed = false;
        while let Some(result) = opening.join_next().await {
            match result {
                Ok(Ok(connection)) => held.push(connection),
                Ok(Err(err)) => {
                    closed |= err.is_closed();
                    failed = Some(err.to_string());
                }
                Err(err) => failed = Some(err.to_string()),
            }
        }
        if held.len() >= min as usize || closed {
            break;
        }
        if failed.is_some() && round < PREFILL_ROUNDS {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
    let opened = held.len();
    drop(held);
    if opened >= min as usize {
        tracing::info!(
            target: "aurora_pool",
            instance,
            connections = opened,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pool filled to its minimum"
        );
    } else {
        tracing::warn!(
            target: "aurora_pool",
            instance,
            connections = opened,
            error = failed.unwrap_or_default(),
            "filling the pool to its minimum stopped"
        );
    }
}
