//! The checkout that rides through a failover: which pool serves a role, waiting while the
//! monitor looks for a writer, and replacing a pool its user closed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::PoolCore;
use crate::config::PoolSizing;
use crate::error::{Error, Result};
use crate::pool::backend::{Backend, Follows};
use crate::pool::routing::{RoutingTable, Slot};
use crate::pool::targets::Targets;
use crate::pool::tasks::close_bounded;
use crate::topology::{Instance, Role};

/// How a checkout that had to wait ended.
enum Waited<C> {
    Done(Result<C>),
    /// A new routing table: take the pool anew.
    RoutingChanged,
    /// The failover ended (with or without a writer).
    Settled,
    /// `failover_timeout` passed.
    TimedOut,
}

/// Pause between checkout attempts that failed for a failover-class reason.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long a checkout queued in the parked writer's pool waits for the routing after the
/// failover ended, before it looks again (the failover may have ended without a writer).
const SETTLE_GRACE: Duration = Duration::from_millis(500);

/// Whether a connection handed out to a checkout that queued in the parked writer's pool
/// is on the writer the routing names.
enum OnWriter {
    Yes(Arc<Instance>),
    /// The pool is still parked: the connection is to the instance it is parked on.
    NotRoutedYet,
    /// A read-only instance, or another one than the routed writer.
    No,
}

/// Resolves when the failover `failing_over` watches ends; never without one.
async fn settled(failing_over: Option<&mut watch::Receiver<bool>>) {
    match failing_over {
        Some(f) => {
            let _ = f.wait_for(|busy| !busy).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Waits until the routing changes, the failover `failing_over` watches ends, or `pause`
/// (when given) passes; `false` when `deadline` came first.
async fn changed_or_settled(
    routing: &mut watch::Receiver<u64>,
    failing_over: Option<&mut watch::Receiver<bool>>,
    pause: Option<Duration>,
    deadline: tokio::time::Instant,
) -> bool {
    let paused = async {
        match pause {
            Some(pause) => tokio::time::sleep(pause).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = routing.changed() => true,
        _ = settled(failing_over) => true,
        _ = paused => true,
        _ = tokio::time::sleep_until(deadline) => false,
    }
}

impl<B: Backend> PoolCore<B> {
    pub(super) fn no_reader(&self) -> Error {
        Error::no_reader(format!(
            "cluster `{}` has no reachable reader that reads may use, and reads may not use the writer (failover_mode is strict_reader, or the custom endpoint excludes the writer)",
            self.config.cluster_id
        ))
    }

    pub(super) fn pick_reader<'t>(
        &self,
        table: &'t RoutingTable<B::Pool>,
    ) -> Option<&'t Slot<B::Pool>> {
        if table.readers.is_empty() {
            return None;
        }
        let index = self.selector.pick(table.readers.len(), |i| {
            let (size, idle) = B::size_and_idle(&table.readers[i].pool);
            size.saturating_sub(idle) as usize
        });
        table.readers.get(index)
    }

    pub(super) fn slot_for(&self, role: Role) -> Result<Slot<B::Pool>> {
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
        #[cfg(feature = "metrics")]
        let (started, _pending) = (
            std::time::Instant::now(),
            crate::metrics::Pending::start(&self.config.cluster_id, role),
        );
        let result = self.checkout_until(role, deadline).await;
        #[cfg(feature = "metrics")]
        self.record_checkout(role, started, &result);
        result.map_err(|err| self.explained(err))
    }

    /// Records a checkout begun at `started` in the connection metrics: its wait, and a
    /// give-up (no instance in time) as a timeout.
    #[cfg(feature = "metrics")]
    pub(crate) fn record_checkout(
        &self,
        role: Role,
        started: std::time::Instant,
        result: &Result<(B::Connection, Arc<Instance>)>,
    ) {
        let cluster_id = &self.config.cluster_id;
        match result {
            Ok((_, instance)) => {
                crate::metrics::checkout(cluster_id, role, Some(instance.id()), started.elapsed())
            }
            Err(err) if err.is_failover_failed() || err.is_timeout() => {
                crate::metrics::checkout(cluster_id, role, None, started.elapsed())
            }
            Err(_) => {}
        }
    }

    /// [`checkout`](PoolCore::checkout) that gives up at `deadline`.
    pub(crate) async fn checkout_until(
        &self,
        role: Role,
        deadline: tokio::time::Instant,
    ) -> Result<(B::Connection, Arc<Instance>)> {
        if let Some(cluster) = &*self.cluster.load() {
            // A monitor paused while the pools had no connection wakes with this checkout.
            cluster.wake_if_paused();
        }
        let mut routing = self.routing_version.subscribe();
        let mut last_error: Option<Error> = None;
        // Refused logins per instance so far: each instance pool holds its own credentials,
        // so a retry on another reader may need its own renewal. The provider decides how
        // long to keep renewing (a rotation window: `secrets_manager_connect_retry_timeout_ms`)
        // from the attempt number and the time since the first refusal.
        let mut refusals: Vec<(Arc<Instance>, u32, Instant)> = Vec::new();
        // Instances whose refused plain login this checkout already tried again over TLS.
        let mut retried_with_tls: Vec<Arc<Instance>> = Vec::new();
        loop {
            if self.is_closed() {
                return Err(Error::closed());
            }
            // The failover state, read without taking a reference on the cluster (a shared
            // count every checkout would bump).
            let (failing_over, writer_silent) = match (role, &*self.cluster.load()) {
                (Role::Writer, Some(cluster)) => (
                    cluster.is_failing_over().then(|| cluster.failing_over()),
                    cluster.is_writer_silent(),
                ),
                _ => (None, false),
            };
            let waiting_for_writer = failing_over.is_some();
            // Whether this checkout queues in a writer pool parked while the monitor looks
            // for the writer (see below).
            let mut queued_while_parked = false;
            let slot = match self.slot_for(role) {
                Ok(slot) if role == Role::Writer && !waiting_for_writer && writer_silent => {
                    // Accepted as the writer by the readers' topology while the probes
                    // find it silent: waiting on it would only wait out a connect.
                    return Err(Error::failover(format!(
                        "writer {} of cluster `{}` is unreachable from here, and no other instance holds the writer role",
                        slot.instance.id(),
                        self.config.cluster_id
                    )));
                }
                Ok(slot) if !waiting_for_writer => Some(slot),
                // The writer's pool is parked on a reader: its new connections wait there
                // for the next writer. Queue in it now, in turn with the callers of the
                // handed-out `writer()` pool (queued there since the writer went), instead
                // of behind all of them once the routes change; what it hands out is
                // checked below. (Parked on the lost writer itself, a connect would only
                // back off between refusals: wait for the routing instead.)
                Ok(slot)
                    if role == Role::Writer
                        && slot.targets.is_unrouted()
                        && slot
                            .targets
                            .parked()
                            .is_some_and(|route| route.instance.role() == Role::Reader) =>
                {
                    queued_while_parked = true;
                    Some(slot)
                }
                Ok(_) => None,
                Err(err) if err.is_no_reader() => {
                    last_error = Some(err);
                    None
                }
                Err(err) => return Err(err),
            };
            routing.borrow_and_update();
            let mut failing_over = failing_over;
            let Some(mut slot) = slot else {
                // Wait for the routing (or, for a writer checkout, the failover state) to
                // change. A reader checkout with no reader waits on the routing alone: the
                // failover state may be settled already, and waiting on it would spin.
                if !changed_or_settled(&mut routing, failing_over.as_mut(), None, deadline).await {
                    return Err(self.failover_failed(role, last_error));
                }
                continue;
            };
            if !B::CREDENTIALS_PER_CONNECT && slot.login.is_due(Instant::now()) {
                self.renew_behind(&slot);
            }
            let acquire = B::acquire(&slot.pool);
            tokio::pin!(acquire);
            // An idle connection is handed out at once: no timer, no waiting on the routing
            // (registering both costs every checkout that has to wait, see BENCHMARKS.md).
            let ready = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
            let ready = ready.map(|result| result.map_err(|err| self.in_cluster_dialect(err)));
            let outcome = match ready {
                Poll::Ready(result) => Some(result),
                Poll::Pending => {
                    // Until when this wait goes on: the deadline, or a moment after the
                    // failover ended with the pool still parked (the routing follows the
                    // end of a failover that found a writer at once).
                    let mut wait_until = deadline;
                    loop {
                        // Queued in a parked pool: the failover may also end without a
                        // writer (watched until it ends once).
                        let settled = failing_over.as_mut().filter(|_| queued_while_parked);
                        let waited = self
                            .wait_for(acquire.as_mut(), &mut routing, settled, wait_until)
                            .await;
                        match waited {
                            Waited::Done(result) => {
                                break Some(result.map_err(|err| self.in_cluster_dialect(err)));
                            }
                            // A change elsewhere (a reader came or went, a refresh that kept
                            // this route) leaves a connect to an unchanged instance running:
                            // dropping it would throw a half-done login away.
                            Waited::RoutingChanged if self.still_routes(role, &slot) => {}
                            // Queued in the parked writer's pool, still parked or now
                            // pointed at the next writer: keep this place in its queue (it
                            // hands out no connection to an instance it left), and check
                            // what it hands out.
                            Waited::RoutingChanged | Waited::Settled if queued_while_parked => {
                                let table = self.routing.load();
                                if !Arc::ptr_eq(&table.writer.targets, &slot.targets) {
                                    break None;
                                }
                                slot = table.writer.clone();
                                if matches!(waited, Waited::Settled) {
                                    failing_over = None;
                                }
                                wait_until = match table.writer.targets.is_unrouted() {
                                    true if failing_over.is_none() => {
                                        deadline.min(tokio::time::Instant::now() + SETTLE_GRACE)
                                    }
                                    _ => deadline,
                                };
                            }
                            Waited::RoutingChanged | Waited::Settled => break None,
                            // The failover ended and no writer was routed: look again.
                            Waited::TimedOut if tokio::time::Instant::now() < deadline => {
                                break None;
                            }
                            Waited::TimedOut => {
                                return Err(self.failover_failed(role, last_error));
                            }
                        }
                    }
                }
            };
            match outcome {
                None => continue, // a new routing table: take the pool anew
                Some(Ok(connection)) if !queued_while_parked => {
                    return Ok((connection, slot.instance));
                }
                Some(Ok(mut connection)) => {
                    match self.on_routed_writer(&mut connection, deadline).await {
                        Ok(OnWriter::Yes(instance)) => return Ok((connection, instance)),
                        // An idle connection to the instance the pool is parked on (the
                        // monitor's verdict may be false): back to the pool, which keeps
                        // it for that instance's return; ask again once something changed.
                        Ok(OnWriter::NotRoutedYet) => {
                            drop(connection);
                            if !changed_or_settled(
                                &mut routing,
                                failing_over.as_mut(),
                                None,
                                deadline,
                            )
                            .await
                            {
                                return Err(self.failover_failed(role, last_error));
                            }
                        }
                        Ok(OnWriter::No) => B::discard(connection),
                        Err(err) => {
                            B::discard(connection);
                            last_error = Some(err);
                        }
                    }
                }
                // Queued in a parked pool: what failed is the wait, or a connect to the
                // reader it is parked on, not the writer's instance (its login, its
                // certificate). The failover may still end within `failover_timeout`:
                // wait for a change, a moment at most, and take the writer's pool anew.
                Some(Err(err)) if queued_while_parked => {
                    last_error = Some(err);
                    if !changed_or_settled(
                        &mut routing,
                        failing_over.as_mut(),
                        Some(RETRY_PAUSE),
                        deadline,
                    )
                    .await
                    {
                        return Err(self.failover_failed(role, last_error));
                    }
                }
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
                // `sslmode=allow`: the instance wants TLS; its pools now connect with it.
                Some(Err(err))
                    if !retried_with_tls
                        .iter()
                        .any(|i| Arc::ptr_eq(i, &slot.instance))
                        && self
                            .backend
                            .plain_login_refused(slot.instance.address(), &err) =>
                {
                    retried_with_tls.push(slot.instance.clone());
                    self.credentials_renewed(&slot);
                    last_error = Some(err);
                }
                Some(Err(err)) if err.is_login_rejected() && !B::CREDENTIALS_PER_CONNECT => {
                    let index = match refusals
                        .iter()
                        .position(|(i, ..)| i.id() == slot.instance.id())
                    {
                        Some(index) => index,
                        None => {
                            refusals.push((slot.instance.clone(), 0, Instant::now()));
                            refusals.len() - 1
                        }
                    };
                    let (_, attempts, first) = &mut refusals[index];
                    *attempts += 1;
                    let (attempt, elapsed) = (*attempts, first.elapsed());
                    let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if !self.renew_rejected(&slot, attempt, elapsed, limit).await {
                        // A pool opened while the provider failed has no credentials: the
                        // refusal is the provider's doing, not a wrong password.
                        if slot.login.current().password().is_none() {
                            return Err(Error::credentials(format!(
                                "no credentials to log in to instance {}: the credential provider has given none since its pool opened (see the warnings logged)",
                                slot.instance.id()
                            ))
                            .with_source(err));
                        }
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
                Some(Err(err)) if role.fails_over_on(err.class()) => {
                    self.request_refresh();
                    last_error = Some(err);
                    tokio::select! {
                        _ = routing.changed() => {}
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
                // A refused certificate names the instance: the driver's checkout error may
                // not say where it was connecting.
                Some(Err(err)) if err.is_certificate_refused() => {
                    return Err(err.with_hint(&format!(
                        "instance {} at {}",
                        slot.instance.id(),
                        slot.instance.address()
                    )));
                }
                Some(Err(err)) => return Err(err),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.failover_failed(role, last_error));
            }
        }
    }

    /// The writer instance a connection of the writer's pool is on, when it is the one the
    /// routing names now: what a checkout that queued while the pool was parked, or across
    /// a routing change, was handed (an idle connection to the instance the pool was parked
    /// on is refused: the monitor has not confirmed it). One round trip.
    async fn on_routed_writer(
        &self,
        connection: &mut B::Connection,
        deadline: tokio::time::Instant,
    ) -> Result<OnWriter> {
        let table = self.routing.load_full();
        let writer = &table.writer;
        if writer.targets.is_unrouted() || !writer.instance.is_available() {
            return Ok(OnWriter::NotRoutedYet);
        }
        let check = format!(
            "SELECT CASE WHEN c.read_only THEN NULL ELSE coalesce(c.id, '') END FROM ({}) AS c(read_only, id)",
            writer.targets.instance_check()
        );
        // Bounded as a connect is: a new writer gone silent meanwhile must not hold the
        // checkout until the sockets give up.
        let limit = self.config.connect_timeout;
        let until = deadline.min(tokio::time::Instant::now() + limit);
        let answer = tokio::time::timeout_at(until, B::query_value(connection, check))
            .await
            .map_err(|_| {
                Error::connect(format!(
                    "the new writer did not answer the check of a connection within connect_timeout ({limit:?})"
                ))
            })??;
        Ok(match answer {
            Some(id) if id.is_empty() || id == writer.instance.id() => {
                OnWriter::Yes(writer.instance.clone())
            }
            _ => OnWriter::No,
        })
    }

    /// Whether the routing still sends `role` to `slot`'s pool: the same instance (id and
    /// address), the same pool, and for the writer, still available.
    fn still_routes(&self, role: Role, slot: &Slot<B::Pool>) -> bool {
        let table = self.routing.load();
        let same = |other: &Slot<B::Pool>| {
            Arc::ptr_eq(&other.targets, &slot.targets)
                && other.instance.id() == slot.instance.id()
                && other.instance.address() == slot.instance.address()
        };
        match role {
            Role::Writer => same(&table.writer) && table.writer.instance.is_available(),
            Role::Reader => table.readers.iter().any(same),
        }
    }

    /// Waits for a checkout that could not be served at once. A busy pool is no topology
    /// signal: the probes watch the instance, so waiting here asks the monitor nothing.
    /// `failing_over`, when given, also ends the wait when the failover ends.
    async fn wait_for(
        &self,
        mut acquire: std::pin::Pin<&mut impl Future<Output = Result<B::Connection>>>,
        routing: &mut watch::Receiver<u64>,
        failing_over: Option<&mut watch::Receiver<bool>>,
        deadline: tokio::time::Instant,
    ) -> Waited<B::Connection> {
        tokio::select! {
            result = &mut acquire => Waited::Done(result),
            _ = routing.changed() => Waited::RoutingChanged,
            _ = settled(failing_over) => Waited::Settled,
            _ = tokio::time::sleep_until(deadline) => Waited::TimedOut,
        }
    }

    /// `slot`'s pool was found closed while the routing table still routes to it (its user
    /// closed a handed-out pool): puts a new pool for the same instance in its place.
    /// Returns whether it did; `false` when the routing moved on meanwhile.
    pub(super) fn replace_closed_pool(&self, slot: &Slot<B::Pool>) -> bool {
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
    pub(super) fn replace_closed_reads(&self, table: &Arc<RoutingTable<B::Pool>>) -> bool {
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
    pub(super) fn swap_in_new_pool(
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
                    error = %format_args!("{err:#}"),
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

    pub(crate) fn failover_failed(&self, role: Role, cause: Option<Error>) -> Error {
        let err = Error::failover_failed(format!(
            "no {role} of cluster `{}` could be reached within failover_timeout ({:?})",
            self.config.cluster_id, self.config.failover_timeout
        ));
        match self.discovery_failure().or(cause) {
            Some(cause) => err.with_source(cause),
            None => err,
        }
    }
}
