//! One topology monitor per `cluster_id` in the process, shared by every pool created with
//! that id.
//!
//! The [registry](join) hands out [`ClusterHandle`]s. The monitor task lives as long as at
//! least one handle does. In normal mode it holds one connection (to the writer when it
//! can) and reads the topology every `cluster_topology_refresh_rate`; health probes (one
//! connection per instance) catch silent failures. When the monitoring connection fails or
//! a probe finds the writer gone or demoted, it enters *panic mode*: every instance is
//! probed at `cluster_topology_high_refresh_rate` until one confirms it is the writer, the
//! new topology is published, and the high rate is kept for 30 s.

mod confirm;
mod events;
mod probe;
mod run;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, broadcast, watch};

pub use events::ClusterEvent;

use crate::config::Config;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::throttle::Throttle;
use crate::topology::{Topology, TopologySource};

/// What a pool brings to the monitor: how to connect (its credentials) and how to read and
/// address the topology. The monitor uses the first registration still alive, so credentials
/// are never pinned to the first pool once it is gone.
pub(crate) struct Registration {
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) source: TopologySource,
}

/// The monitor's timing, taken from the first pool of the `cluster_id`.
#[derive(Debug, Clone)]
pub(crate) struct MonitorSettings {
    pub(crate) refresh_rate: Duration,
    pub(crate) high_refresh_rate: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) failure_detection_enabled: bool,
    pub(crate) failure_detection_time: Duration,
    pub(crate) failure_detection_interval: Duration,
    pub(crate) failure_detection_count: u32,
    pub(crate) idle_pause: Option<Duration>,
}

impl MonitorSettings {
    /// How long a connection to an instance declared dead must have heard nothing from it to
    /// be ended: one probe's timeout (a verdict takes two or more).
    pub(crate) fn quiet_for(&self) -> Duration {
        probe::probe_timeout(self.failure_detection_interval, self.connect_timeout)
    }

    pub(crate) fn from_config(config: &Config) -> MonitorSettings {
        MonitorSettings {
            refresh_rate: config.cluster_topology_refresh_rate,
            high_refresh_rate: config.cluster_topology_high_refresh_rate,
            connect_timeout: config.connect_timeout,
            failure_detection_enabled: config.failure_detection_enabled,
            failure_detection_time: config.failure_detection_time,
            failure_detection_interval: config.failure_detection_interval,
            failure_detection_count: config.failure_detection_count,
            idle_pause: config.monitor_idle_pause,
        }
    }
}

/// How long the monitor keeps the high refresh rate after finding a new writer.
const HIGH_RATE_WINDOW: Duration = Duration::from_secs(30);

/// Events kept for slow subscribers; a subscriber that falls further behind is told how
/// many it missed.
const EVENT_CAPACITY: usize = 128;

struct MonitorState {
    cluster_id: String,
    topology: watch::Sender<Arc<Topology>>,
    events: broadcast::Sender<ClusterEvent>,
    failing_over: watch::Sender<bool>,
    /// Mirrors `failing_over` for lock-free reads on the checkout path.
    failing_over_now: AtomicBool,
    /// When the current search for the writer began (for the health view).
    failing_over_since: Mutex<Option<SystemTime>>,
    /// Panic mode ended on the readers' agreement while the writer they name stays silent:
    /// writer checkouts fail at once instead of waiting on it.
    writer_silent: AtomicBool,
    /// The span of the failover that published a topology version, until a pool's routing
    /// follows that version under it (see [`ClusterHandle::take_failover_span`]).
    failover_span: Mutex<Option<(u64, tracing::Span)>>,
    registrations: Mutex<Vec<Weak<Registration>>>,
    refresh_now: Notify,
    /// Forced refreshes let through, at most one per high refresh rate.
    forced_refresh: Throttle,
    settings: MonitorSettings,
    /// True while a task runs the monitor. The task runs on the runtime of the pool that
    /// started it; when that runtime shuts down (one `#[tokio::test]` of many ending) the
    /// task is dropped, this turns false, and a pool on another runtime starts it again
    /// there ([`ClusterHandle::keep_running`]).
    running: watch::Sender<bool>,
    /// The last events published, with when, for errors' context.
    recent: Mutex<VecDeque<(Instant, ClusterEvent)>>,
    /// When a pool of the cluster last had a connection open (see
    /// [`ClusterHandle::note_connected`]): what pauses the monitor after `idle_pause`.
    last_connected: Mutex<Instant>,
    /// True while the monitor is paused (no probes, no connection of its own).
    paused: AtomicBool,
    /// Wakes a paused monitor.
    wake: Notify,
}

/// Held by the task that runs the monitor: marks it stopped however the task ends (its
/// runtime shut down, the monitor stopped).
struct Running(Arc<MonitorState>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.send_replace(false);
    }
}

impl MonitorState {
    fn set_failing_over(&self, failing_over: bool) {
        {
            let mut since = self
                .failing_over_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match failing_over {
                true => {
                    since.get_or_insert_with(SystemTime::now);
                }
                false => *since = None,
            }
        }
        self.failing_over_now.store(failing_over, Ordering::Release);
        self.failing_over.send_replace(failing_over);
    }

    /// Keeps the span of the failover that publishes a topology version, for the pools'
    /// routing (`None`: lets it go).
    fn set_failover_span(&self, kept: Option<(u64, tracing::Span)>) {
        *self
            .failover_span
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = kept;
    }

    fn set_writer_silent(&self, silent: bool) {
        self.writer_silent.store(silent, Ordering::Release);
    }

    fn registration(&self) -> Option<Arc<Registration>> {
        let mut registrations = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        registrations.retain(|r| r.strong_count() > 0);
        registrations.iter().find_map(Weak::upgrade)
    }

    fn current(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Publishes `topology` when its shape (members, roles, addresses, availability)
    /// differs from the current one, with the events that lead to it.
    fn publish(&self, topology: Topology) -> bool {
        let mut changed = None;
        self.topology.send_if_modified(|current| {
            if current.same_shape(&topology) {
                if current.same_figures(&topology) {
                    return false;
                }
                // The same shape with new lag and CPU figures: the same version carries them
                // (routing by `max_replica_lag_ms`, `status()`), with no event.
                *current = Arc::new(topology.clone().with_version(current.version()));
                return true;
            }
            let next = Arc::new(topology.clone().with_version(current.version() + 1));
            changed = Some((current.clone(), next.clone()));
            *current = next;
            true
        });
        let Some((old, new)) = changed else {
            return false;
        };
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %self.cluster_id,
            version = new.version(),
            old_writer = old.writer().id(),
            new_writer = new.writer().id(),
            topology = %new,
            "topology changed"
        );
        let events = events::between(&old, &new);
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            for event in &events {
                if recent.len() == crate::ErrorContext::EVENTS_KEPT {
                    recent.pop_front();
                }
                recent.push_back((now, event.clone()));
            }
        }
        for event in events {
            // No subscriber is fine.
            let _ = self.events.send(event);
        }
        end_connections_to_the_newly_dead(&old, &new, self.settings.quiet_for());
        true
    }
}

/// Ends this process's connections to each instance `new` declares unreachable and `old`
/// did not: queries and connects in flight on a silent host end now instead of when TCP
/// gives up, and the capacity they held goes back to their pools (DESIGN invariant 14).
fn end_connections_to_the_newly_dead(old: &Topology, new: &Topology, quiet_for: Duration) {
    for instance in new.instances() {
        let was_up = old
            .instance(instance.id())
            .is_some_and(|before| before.is_available());
        if was_up && !instance.is_available() {
            let address = instance.address().clone();
            tokio::spawn(
                async move { crate::sockets::end_connections_to(&address, quiet_for).await },
            );
        }
    }
}

/// A pool's share of a cluster's monitor. The monitor stops when the last handle is dropped.
pub(crate) struct ClusterHandle {
    state: Arc<MonitorState>,
    shutdown: watch::Sender<bool>,
}

impl ClusterHandle {
    /// Starts the monitor's task on the current runtime unless one runs, or the monitor
    /// was stopped, or there is no runtime here. Returns whether it started one.
    pub(crate) fn keep_running(&self) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let claimed = self.state.running.send_if_modified(|running| {
            let claimed = !*running;
            *running = true;
            claimed
        });
        if !claimed {
            return false;
        }
        let running = Running(self.state.clone());
        let (state, shutdown) = (self.state.clone(), self.shutdown.subscribe());
        runtime.spawn(async move {
            let _running = running;
            run::supervise(state, shutdown).await;
        });
        true
    }

    /// The last cluster events, oldest first, with how long ago each happened.
    pub(crate) fn recent_events(&self) -> Vec<crate::RecentEvent> {
        let now = Instant::now();
        self.state
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(at, event)| crate::RecentEvent {
                ago: now.saturating_duration_since(*at),
                event: event.clone(),
            })
            .collect()
    }

    /// Runs the monitor again on the current runtime when the runtime that ran it shut down.
    pub(crate) fn restart_if_stopped(&self) {
        if self.keep_running() {
            tracing::info!(
                target: "aurora_pool",
                cluster_id = %self.state.cluster_id,
                "cluster monitor restarted on this pool's runtime: the runtime that ran it shut down"
            );
        }
    }

    /// A receiver that is true while a task runs the monitor (see
    /// [`keep_running`](Self::keep_running)).
    pub(crate) fn running(&self) -> watch::Receiver<bool> {
        self.state.running.subscribe()
    }

    /// The current topology snapshot.
    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.state.current()
    }

    /// A receiver that sees every published snapshot.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.state.topology.subscribe()
    }

    /// A receiver of cluster events.
    pub(crate) fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.state.events.subscribe()
    }

    /// A receiver that is true while the monitor searches for a new writer.
    pub(crate) fn failing_over(&self) -> watch::Receiver<bool> {
        self.state.failing_over.subscribe()
    }

    /// Whether the monitor searches for a new writer right now (lock-free).
    pub(crate) fn is_failing_over(&self) -> bool {
        self.state.failing_over_now.load(Ordering::Acquire)
    }

    /// When the current search for the writer began; `None` when there is none.
    pub(crate) fn failing_over_since(&self) -> Option<SystemTime> {
        *self
            .state
            .failing_over_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The span of the failover that published `version` (or an older one), once: the
    /// first pool whose routing follows it does so in a span under it, so that a failover
    /// and the routing change it caused are one trace.
    pub(crate) fn take_failover_span(&self, version: u64) -> Option<tracing::Span> {
        let mut kept = self
            .state
            .failover_span
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match kept.as_ref() {
            Some((published, _)) if *published <= version => kept.take().map(|(_, span)| span),
            _ => None,
        }
    }

    /// Whether the writer is known silent with no other instance holding the role (panic
    /// mode ended on the readers' agreement without it): writer checkouts fail at once.
    pub(crate) fn is_writer_silent(&self) -> bool {
        self.state.writer_silent.load(Ordering::Acquire)
    }

    /// Asks the monitor to read the topology now instead of at its next tick. Requests
    /// coalesce (many callers cause one read) and are rate-limited to one per
    /// `cluster_topology_high_refresh_rate_ms`: a storm of failing queries must not become a
    /// storm of catalog reads.
    pub(crate) fn request_refresh(&self) {
        let state = &self.state;
        self.wake_if_paused();
        if state.forced_refresh.pass(state.settings.high_refresh_rate) {
            state.refresh_now.notify_one();
        }
    }

    /// A pool of the cluster has a connection open now (each pool tells every second while
    /// it does): the monitor does not pause, and a paused one wakes.
    pub(crate) fn note_connected(&self) {
        *self
            .state
            .last_connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.wake_if_paused();
    }

    /// Wakes the monitor if it is paused (a checkout through the crate wakes it at once;
    /// one on a handed-out pool within a second, by [`note_connected`](Self::note_connected)).
    pub(crate) fn wake_if_paused(&self) {
        if self.state.paused.load(Ordering::Acquire) {
            self.state.wake.notify_one();
        }
    }
}

impl MonitorState {
    /// Whether no pool of the cluster has had a connection open for `idle_pause`.
    fn idle_long_enough(&self) -> bool {
        self.settings.idle_pause.is_some_and(|pause| {
            self.last_connected
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                >= pause
        })
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        if registry
            .get(&self.state.cluster_id)
            .is_some_and(|entry| entry.strong_count() == 0)
        {
            registry.remove(&self.state.cluster_id);
        }
    }
}

static REGISTRY: LazyLock<Mutex<BTreeMap<String, Weak<ClusterHandle>>>> =
    LazyLock::new(Default::default);

/// Joins the monitor of `cluster_id`, starting it with the discovered topology when none runs.
///
/// `connected_to` is the instance the pool's discovery connection landed on: when a monitor
/// already runs for this id and does not know that instance at the address this pool
/// found it, two different clusters share one `cluster_id`, which is refused.
pub(crate) fn join(
    cluster_id: &str,
    topology: Topology,
    connected_to: &str,
    registration: &Arc<Registration>,
    settings: MonitorSettings,
) -> Result<Arc<ClusterHandle>> {
    loop {
        // Upgrade outside the lock: dropping a handle takes the lock too.
        let existing = REGISTRY
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster_id)
            .and_then(Weak::upgrade);
        if let Some(handle) = existing {
            let current = handle.topology();
            let cached = current.instance(connected_to).map(|i| i.address());
            let discovered = topology.instance(connected_to).map(|i| i.address());
            if cached.is_none() || cached != discovered {
                return Err(Error::cluster_id_mismatch(
                    cluster_id,
                    format!(
                        "this pool's URL leads to instance `{connected_to}`, which the topology \
                         already cached under this id ({current}) does not know at that address; \
                         give each physical cluster its own `cluster_id`"
                    ),
                ));
            }
            handle
                .state
                .registrations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(registration));
            handle.restart_if_stopped();
            tracing::debug!(target: "aurora_pool", cluster_id, "pool joined the running cluster monitor");
            return Ok(handle);
        }
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        if registry
            .get(cluster_id)
            .is_some_and(|entry| entry.strong_count() > 0)
        {
            continue; // another pool started it meanwhile
        }
        let (sender, _) = watch::channel(Arc::new(topology.with_version(1)));
        let state = Arc::new(MonitorState {
            cluster_id: cluster_id.to_owned(),
            topology: sender,
            events: broadcast::channel(EVENT_CAPACITY).0,
            failing_over: watch::channel(false).0,
            failing_over_now: AtomicBool::new(false),
            failing_over_since: Mutex::new(None),
            writer_silent: AtomicBool::new(false),
            failover_span: Mutex::new(None),
            registrations: Mutex::new(vec![Arc::downgrade(registration)]),
            refresh_now: Notify::new(),
            forced_refresh: Throttle::new(),
            settings,
            running: watch::channel(false).0,
            recent: Mutex::new(VecDeque::new()),
            last_connected: Mutex::new(Instant::now()),
            paused: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let (shutdown, _) = watch::channel(false);
        let handle = Arc::new(ClusterHandle { state, shutdown });
        handle.keep_running();
        registry.insert(cluster_id.to_owned(), Arc::downgrade(&handle));
        tracing::info!(
            target: "aurora_pool",
            cluster_id,
            settings = ?handle.state.settings,
            topology = %handle.topology(),
            "cluster monitor started"
        );
        return Ok(handle);
    }
}
