//! Where a pool's new connections go. A pool is opened once per role and lives as long as
//! the `AuroraPool`: when its instance changes (a new writer, a reader gone) the pool is
//! pointed at the new one instead of being replaced, so a handle taken at startup follows its
//! role. A connection to an instance the routes dropped, opened before they dropped it, is
//! stale: the backends close it at checkout and on return instead of handing it out again.
//! The backends tell each connection's instance where they can (the deadpool manager
//! exactly, the sqlx backend by when the connection was opened), so that one reader leaving
//! ends only its own connections; a connection whose instance is not known is stale after
//! any instance left.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};

use super::login::SlotLogin;
use crate::topology::{Dialect, Instance};

/// One instance a pool connects to, with the credentials it logs in with there.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) instance: Arc<Instance>,
    pub(crate) login: Arc<SlotLogin>,
}

impl Route {
    fn same_instance(&self, other: &Route) -> bool {
        self.instance.id() == other.instance.id()
            && self.instance.address() == other.instance.address()
    }
}

/// The instances a pool's new connections go to, taken in turn.
pub(crate) struct Targets {
    routes: ArcSwap<Vec<Route>>,
    /// The last routes that were not empty: what a pool that was parked compares its new
    /// routes with.
    routed: ArcSwap<Vec<Route>>,
    next: AtomicUsize,
    /// Bumped by every change of the routes.
    generation: AtomicU64,
    /// Connections of unknown instance opened before this many nanoseconds after `origin`
    /// are stale; 0 while no instance has left.
    stale_before: AtomicU64,
    /// Each instance the routes dropped, with when they dropped it last (nanoseconds after
    /// `origin`): its connections opened before then are stale. One entry per instance.
    left: std::sync::Mutex<Vec<(String, u64)>>,
    origin: Instant,
    /// Where a driver that must always have an address points a pool with no routes: an
    /// instance that answers, whose connections the pool's connect check holds until the
    /// routes change, then refuses.
    parked: ArcSwapOption<Route>,
    /// The generation, for those who wait for the routes to change.
    changes: tokio::sync::watch::Sender<u64>,
    /// The cluster's dialect, which tells what a new connection asks its server
    /// ([`Dialect::instance_check`]).
    dialect: std::sync::OnceLock<Dialect>,
    /// Since when the routes point at an instance that replaced one that left, and which:
    /// until the pool's first connection there (see [`recovered_on`](Targets::recovered_on)).
    recovering: std::sync::Mutex<Option<(Instant, String)>>,
    /// Set for the role pools of a pool from `connect_lazy` until its first discovered
    /// routes: a connect with nowhere to go waits for them instead of failing.
    awaiting_discovery: std::sync::atomic::AtomicBool,
    /// When an instance last joined routes that kept others (nanoseconds after `origin`; 0:
    /// never): the connections opened before are replaced one at a time, so that a pool
    /// spreading over its routes spreads over the new one too instead of waiting for its
    /// connections to expire. One at a time, so that each replacement is opened where the
    /// pool's turn points after the one before.
    joined_at: AtomicU64,
    /// The earliest moment of the next replacement (nanoseconds after `origin`).
    next_replacement: AtomicU64,
    /// The pause between two replacements: [`REBALANCE_WINDOW`] over the pool's size.
    replacement_step: AtomicU64,
}

/// How long after an instance joins a pool's routes every connection opened before has been
/// replaced, at the latest (each at its next checkout or return after its turn): a pool of
/// 10 connections replaces one a second.
pub(crate) const REBALANCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

impl Targets {
    pub(crate) fn new(routes: Vec<Route>) -> Arc<Targets> {
        Arc::new(Targets {
            routed: ArcSwap::from_pointee(routes.clone()),
            routes: ArcSwap::from_pointee(routes),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            stale_before: AtomicU64::new(0),
            left: std::sync::Mutex::new(Vec::new()),
            origin: Instant::now(),
            parked: ArcSwapOption::empty(),
            changes: tokio::sync::watch::channel(0).0,
            dialect: std::sync::OnceLock::new(),
            recovering: std::sync::Mutex::new(None),
            awaiting_discovery: std::sync::atomic::AtomicBool::new(false),
            joined_at: AtomicU64::new(0),
            next_replacement: AtomicU64::new(0),
            replacement_step: AtomicU64::new(
                u64::try_from(REBALANCE_WINDOW.as_nanos()).unwrap_or(u64::MAX),
            ),
        })
    }

    /// Forgets the change [`recovered_on`](Targets::recovered_on) would measure: a lazy
    /// pool's move from its stand-in to the writer it discovered is no failover.
    pub(crate) fn forget_recovery(&self) {
        *self.recovering.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Paces the replacements after a join so that a pool of `size` connections has
    /// replaced them all within [`REBALANCE_WINDOW`].
    pub(crate) fn pace_rebalancing(&self, size: u32) {
        let window = u64::try_from(REBALANCE_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        self.replacement_step
            .store(window / u64::from(size.max(1)), Ordering::Release);
    }

    /// Marks the pool as waiting for its cluster's first discovery (see the field).
    pub(crate) fn await_discovery(&self) {
        self.awaiting_discovery.store(true, Ordering::Release);
    }

    /// Whether the pool waits for its cluster's first discovery: its routes were never set
    /// from a discovered topology.
    #[cfg_attr(not(feature = "deadpool"), allow(dead_code))]
    pub(crate) fn awaits_discovery(&self) -> bool {
        self.awaiting_discovery.load(Ordering::Acquire)
    }

    /// The pool of one instance.
    pub(crate) fn single(route: Route) -> Arc<Targets> {
        Targets::new(vec![route])
    }

    pub(crate) fn routes(&self) -> Arc<Vec<Route>> {
        self.routes.load_full()
    }

    /// The route of the next new connection; `None` when the pool has nowhere to connect.
    pub(crate) fn next(&self) -> Option<Route> {
        let routes = self.routes.load();
        if routes.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        routes.get(turn % routes.len()).cloned()
    }

    /// The route new connections go to now, without taking a turn.
    pub(crate) fn current(&self) -> Option<Route> {
        let routes = self.routes.load();
        if routes.is_empty() {
            return None;
        }
        routes
            .get(self.next.load(Ordering::Relaxed) % routes.len())
            .cloned()
    }

    /// Sets the cluster's dialect (once: a cluster keeps its dialect).
    pub(crate) fn set_dialect(&self, dialect: Dialect) {
        let _ = self.dialect.set(dialect);
    }

    /// What a new connection asks its server: `pg_is_in_recovery()` and the instance's id
    /// where the dialect tells it (none before the dialect is set).
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn instance_check(&self) -> &'static str {
        self.dialect
            .get()
            .copied()
            .unwrap_or(Dialect::Pg)
            .instance_check()
    }

    /// Where to point a pool that has no routes (see [`set_parked`](Targets::set_parked)).
    pub(crate) fn parked(&self) -> Option<Route> {
        self.parked.load_full().map(|route| Route::clone(&route))
    }

    /// Sets where a pool with no routes points its driver; returns whether that moved the
    /// driver of a pool that has no routes now (it must be pointed there again).
    pub(crate) fn set_parked(&self, route: Route) -> bool {
        let moved = self
            .parked
            .swap(Some(Arc::new(route.clone())))
            .is_none_or(|old| !old.same_instance(&route));
        moved && self.is_unrouted()
    }

    /// Bumped by every change (the deadpool manager reopens a connection that raced one).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `route` is still one of the routes.
    #[cfg_attr(not(feature = "deadpool"), allow(dead_code))]
    pub(crate) fn contains(&self, route: &Route) -> bool {
        self.routes.load().iter().any(|r| r.same_instance(route))
    }

    /// Waits until the routes change after `generation` (or `limit` passes): a connect that
    /// found nowhere to go waits for somewhere, instead of trying the same place again.
    pub(crate) async fn changed_after(&self, generation: u64, limit: std::time::Duration) {
        let mut changes = self.changes.subscribe();
        let _ = tokio::time::timeout(limit, changes.wait_for(|now| *now != generation)).await;
    }

    /// Whether the pool has nowhere to connect now (it is parked, or has no address).
    pub(crate) fn is_unrouted(&self) -> bool {
        self.routes.load().is_empty()
    }

    /// Leaves the pool without routes while its instance is unavailable, keeping the
    /// connections it has: an instance that answers again (a false verdict on a loaded
    /// writer, a saturated one) is routed to again with them, instead of reconnecting into
    /// the same overload. A dead instance's connections are ended by the sockets it faces
    /// (`sockets::end_connections_to`); whatever is left becomes stale when the routes
    /// return to another instance.
    pub(crate) fn park(&self) {
        let old = self.swap(Arc::new(Vec::new()));
        if !old.is_empty() {
            self.routed.store(old);
        }
    }

    /// Puts `routes` in place, bumps the generation and tells its waiters; returns the
    /// routes replaced.
    fn swap(&self, routes: Arc<Vec<Route>>) -> Arc<Vec<Route>> {
        self.awaiting_discovery.store(false, Ordering::Release);
        let old = self.routes.swap(routes);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changes.send_replace(generation);
        old
    }

    /// Replaces the routes. An instance of the last routes (before the pool was
    /// [parked](Targets::park), if it was) that is not among the new ones has left: its
    /// connections opened until now become stale. Returns whether an instance left.
    pub(crate) fn set(&self, routes: Vec<Route>) -> bool {
        let routes = Arc::new(routes);
        let old = self.swap(routes.clone());
        let old = if old.is_empty() {
            self.routed.load_full()
        } else {
            old
        };
        if !routes.is_empty() {
            self.routed.store(routes.clone());
        }
        let new = routes;
        let kept = new.iter().any(|n| old.iter().any(|o| o.same_instance(n)));
        let joined = new.iter().any(|n| !old.iter().any(|o| o.same_instance(n)));
        if kept && joined {
            let now = self.nanos(Instant::now()).max(1);
            self.next_replacement.store(now, Ordering::Release);
            self.joined_at.store(now, Ordering::Release);
        }
        let gone: Vec<&Route> = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.same_instance(o)))
            .collect();
        if gone.is_empty() {
            return false;
        }
        *self.recovering.lock().unwrap_or_else(|e| e.into_inner()) = new
            .first()
            .map(|route| (Instant::now(), route.instance.id().to_owned()));
        // Marked after the routes changed: a connection that completes later may still have
        // been opened to the old instance (its connect began before the change); the
        // backends' instance check and their generation check catch those.
        let now = self.nanos(Instant::now()).max(1);
        {
            let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
            for route in gone {
                let id = route.instance.id();
                match left.iter_mut().find(|(l, _)| l == id) {
                    Some((_, when)) => *when = now,
                    None => left.push((id.to_owned(), now)),
                }
            }
        }
        self.stale_before.fetch_max(now, Ordering::AcqRel);
        true
    }

    /// A connection to `instance` (its id) was opened and checked: when it is the first
    /// since the routes replaced an instance that left with this one, how long after that
    /// change (the recovery of a failover, for the writer's pool). Once per change, and
    /// only within `limit` (the pool's checkout timeout): a first connection later than
    /// that served no checkout that waited through the failover (a pool with nothing to
    /// write meanwhile), and is no recovery.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn recovered_on(
        &self,
        instance: &str,
        limit: std::time::Duration,
    ) -> Option<std::time::Duration> {
        let mut recovering = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        match recovering.as_ref() {
            Some((since, id)) if id == instance => {
                let took = since.elapsed();
                *recovering = None;
                (took <= limit).then_some(took)
            }
            _ => None,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether any instance has left (until then no connection is stale: one atomic load).
    pub(crate) fn any_left(&self) -> bool {
        self.stale_before.load(Ordering::Acquire) != 0
    }

    /// Whether a connection opened at `opened` is to be replaced now, to spread the pool
    /// over an instance that joined its routes since (see `joined_at`): it was opened
    /// before the join, and the next replacement is due (this one takes it). One atomic load
    /// while no instance has joined.
    pub(crate) fn is_rebalanced(&self, opened: Instant) -> bool {
        self.joined_at.load(Ordering::Acquire) != 0 && self.rebalanced_by(opened, Instant::now())
    }

    /// [`is_rebalanced`](Targets::is_rebalanced) at `now`.
    fn rebalanced_by(&self, opened: Instant, now: Instant) -> bool {
        let joined = self.joined_at.load(Ordering::Acquire);
        if joined == 0 || self.nanos(opened) >= joined {
            return false;
        }
        let now = self.nanos(now);
        let due = self.next_replacement.load(Ordering::Acquire);
        let step = self.replacement_step.load(Ordering::Acquire);
        now >= due
            && self
                .next_replacement
                .compare_exchange(
                    due,
                    now.saturating_add(step),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Whether any connection may have to be replaced (an instance left or joined): until
    /// then, one atomic load each.
    pub(crate) fn may_replace(&self) -> bool {
        self.any_left() || self.joined_at.load(Ordering::Acquire) != 0
    }

    /// Whether a connection of unknown instance opened at `opened` must not be handed out
    /// again: it may be to any instance that left since.
    pub(crate) fn is_stale(&self, opened: Instant) -> bool {
        let before = self.stale_before.load(Ordering::Acquire);
        before != 0 && self.nanos(opened) < before
    }

    /// Whether a connection to `instance` (its id) opened at `opened` must not be handed out
    /// again: it was opened before that instance left.
    pub(crate) fn is_stale_on(&self, instance: &str, opened: Instant) -> bool {
        if !self.any_left() {
            return false;
        }
        let at = self.nanos(opened);
        let left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.iter().any(|(id, when)| id == instance && at < *when)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::HostPort;
    use crate::topology::Role;

    fn route(id: &str, port: u16) -> Route {
        Route {
            instance: Arc::new(Instance::for_test(
                id,
                HostPort {
                    host: "127.0.0.1".into(),
                    port,
                },
                Role::Reader,
            )),
            login: Arc::new(SlotLogin::new(None)),
        }
    }

    #[test]
    fn routes_are_taken_in_turn() {
        let targets = Targets::new(vec![route("a", 1), route("b", 2)]);
        let ids: Vec<String> = (0..4)
            .map(|_| targets.next().unwrap().instance.id().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "a", "b"]);
    }

    #[test]
    fn only_a_dropped_instance_makes_connections_stale() {
        let targets = Targets::new(vec![route("a", 1)]);
        let before = Instant::now();
        assert!(!targets.set(vec![route("a", 1), route("b", 2)]));
        assert!(!targets.is_stale(before));
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(targets.set(vec![route("b", 2)]));
        assert!(targets.is_stale(before));
        assert!(!targets.is_stale(Instant::now()));
    }

    #[test]
    fn an_instance_leaving_makes_only_its_own_connections_stale() {
        let targets = Targets::new(vec![route("a", 1), route("b", 2), route("c", 3)]);
        let before = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(!targets.any_left());
        assert!(targets.set(vec![route("a", 1), route("c", 3)]));
        assert!(targets.is_stale_on("b", before));
        assert!(!targets.is_stale_on("a", before), "a stayed");
        assert!(!targets.is_stale_on("c", before), "c stayed");
        // A connection to b opened after b came back is not stale; one from before is.
        assert!(!targets.set(vec![route("a", 1), route("b", 2), route("c", 3)]));
        let after = Instant::now();
        assert!(!targets.is_stale_on("b", after));
        assert!(targets.is_stale_on("b", before));
        // A connection whose instance is not known may be to b.
        assert!(targets.is_stale(before));
        // An address change is a new instance: the old address's connections go.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(targets.set(vec![route("a", 1), route("b", 4), route("c", 3)]));
        assert!(targets.is_stale_on("b", after));
        assert!(!targets.is_stale_on("a", after));
    }

    #[test]
    fn a_parked_pool_keeps_its_connections_for_the_same_instance() {
        let targets = Targets::new(vec![route("a", 1)]);
        let before = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        targets.park();
        assert!(targets.is_unrouted());
        assert!(!targets.is_stale(before), "parking made connections stale");
        assert!(
            !targets.set(vec![route("a", 1)]),
            "the same instance came back"
        );
        assert!(!targets.is_stale(before));
        targets.park();
        assert!(
            targets.set(vec![route("b", 2)]),
            "another instance took over"
        );
        assert!(targets.is_stale(before));
        // Retiring (no routes for good) makes everything stale.
        let retired = Targets::new(vec![route("a", 1)]);
        let before = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        retired.park();
        assert!(retired.set(Vec::new()));
        assert!(retired.is_stale(before));
    }

    #[test]
    fn recovery_is_measured_once_on_the_instance_that_took_over() {
        let limit = std::time::Duration::from_secs(30);
        let targets = Targets::new(vec![route("a", 1)]);
        assert_eq!(
            targets.recovered_on("a", limit),
            None,
            "no instance left yet"
        );
        targets.park();
        assert!(!targets.set(vec![route("a", 1)]));
        assert_eq!(
            targets.recovered_on("a", limit),
            None,
            "the same instance came back"
        );
        targets.park();
        assert!(targets.set(vec![route("b", 2)]));
        assert_eq!(
            targets.recovered_on("a", limit),
            None,
            "a connection to the old one"
        );
        assert!(targets.recovered_on("b", limit).is_some());
        assert_eq!(targets.recovered_on("b", limit), None, "measured once");
        // A first connection later than the limit is no recovery, and not measured later.
        targets.park();
        assert!(targets.set(vec![route("c", 3)]));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let short = std::time::Duration::from_millis(1);
        assert_eq!(targets.recovered_on("c", short), None);
        assert_eq!(targets.recovered_on("c", limit), None);
    }

    #[test]
    fn an_empty_pool_has_nowhere_to_connect() {
        let targets = Targets::new(Vec::new());
        assert!(targets.next().is_none());
        assert!(targets.current().is_none());
    }

    #[test]
    fn a_joined_instance_replaces_the_connections_opened_before_one_at_a_time() {
        let targets = Targets::new(vec![route("a", 1)]);
        targets.pace_rebalancing(10);
        let before = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(!targets.may_replace());
        assert!(!targets.is_rebalanced(before), "nothing joined");
        targets.set(vec![route("a", 1), route("b", 2)]);
        let joined = Instant::now();
        assert!(targets.may_replace());
        let step = REBALANCE_WINDOW / 10;
        // The first at once, the next a step later, whichever connection asks.
        assert!(targets.rebalanced_by(before, joined));
        assert!(!targets.rebalanced_by(before, joined));
        assert!(!targets.rebalanced_by(before, joined + step / 2));
        assert!(targets.rebalanced_by(before, joined + step * 2));
        // A connection opened after the join never is.
        let after = Instant::now();
        assert!(!targets.rebalanced_by(after, joined + REBALANCE_WINDOW * 3));
        // A move (nothing kept) or a departure is no join.
        let moved = Targets::new(vec![route("a", 1)]);
        moved.set(vec![route("b", 2)]);
        let shrunk = Targets::new(vec![route("a", 1), route("b", 2)]);
        shrunk.set(vec![route("a", 1)]);
        let late = Instant::now() + REBALANCE_WINDOW * 2;
        assert!(!moved.rebalanced_by(before, late));
        assert!(!shrunk.rebalanced_by(before, late));
    }
}
