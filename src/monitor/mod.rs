//! One topology monitor per `cluster_id` in the process, shared by every pool created with
//! that id.
//!
//! The [registry](join) hands out [`ClusterHandle`]s. The monitor task lives as long as at
//! least one handle does, holds one connection (to the writer when it can), reads the
//! topology every `cluster_topology_refresh_rate` and publishes a new versioned snapshot
//! whenever membership, roles or addresses change.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::connector::{AdminConnection, Connector, Purpose};
use crate::error::{Error, Result};
use crate::topology::{Topology, TopologySource, query_topology};

/// What a pool brings to the monitor: how to connect (its credentials) and how to read and
/// address the topology. The monitor uses the first registration still alive, so credentials
/// are never pinned to the first pool once it is gone.
pub(crate) struct Registration {
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) source: TopologySource,
}

struct MonitorState {
    cluster_id: String,
    topology: watch::Sender<Arc<Topology>>,
    registrations: Mutex<Vec<Weak<Registration>>>,
    refresh_now: Notify,
    refresh_rate: Duration,
}

impl MonitorState {
    fn registration(&self) -> Option<Arc<Registration>> {
        let mut registrations = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        registrations.retain(|r| r.strong_count() > 0);
        registrations.iter().find_map(Weak::upgrade)
    }

    /// Publishes `topology` when its shape differs from the current one.
    fn publish(&self, topology: Topology) -> bool {
        let mut changed = None;
        self.topology.send_if_modified(|current| {
            if current.same_shape(&topology) {
                return false;
            }
            let next = Arc::new(topology.clone().with_version(current.version() + 1));
            changed = Some((current.clone(), next.clone()));
            *current = next;
            true
        });
        if let Some((old, new)) = &changed {
            tracing::info!(
                target: "aurora_pool",
                cluster_id = %self.cluster_id,
                version = new.version(),
                old_writer = old.writer().id(),
                new_writer = new.writer().id(),
                instances = new.instances().len(),
                topology = %new,
                "topology changed"
            );
        }
        changed.is_some()
    }
}

/// A pool's share of a cluster's monitor. The monitor stops when the last handle is dropped.
pub(crate) struct ClusterHandle {
    state: Arc<MonitorState>,
    shutdown: watch::Sender<bool>,
}

impl ClusterHandle {
    /// The current topology snapshot.
    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.state.topology.borrow().clone()
    }

    /// A receiver that sees every published snapshot.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.state.topology.subscribe()
    }

    /// Asks the monitor to read the topology now instead of at its next tick.
    #[allow(dead_code)] // used by the failover path
    pub(crate) fn request_refresh(&self) {
        self.state.refresh_now.notify_one();
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
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
    refresh_rate: Duration,
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
                         already cached under this id ({current}) does not know at that address; give each physical cluster its own `cluster_id`"
                    ),
                ));
            }
            handle
                .state
                .registrations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(registration));
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
            registrations: Mutex::new(vec![Arc::downgrade(registration)]),
            refresh_now: Notify::new(),
            refresh_rate,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(supervise(state.clone(), shutdown_rx));
        let handle = Arc::new(ClusterHandle { state, shutdown });
        registry.insert(cluster_id.to_owned(), Arc::downgrade(&handle));
        tracing::info!(
            target: "aurora_pool",
            cluster_id,
            refresh_rate_ms = refresh_rate.as_millis() as u64,
            topology = %handle.topology(),
            "cluster monitor started"
        );
        return Ok(handle);
    }
}

/// Runs the monitor loop and restarts it (with backoff) if it panics.
async fn supervise(state: Arc<MonitorState>, mut shutdown: watch::Receiver<bool>) {
    let mut restarts: u32 = 0;
    loop {
        let run = tokio::spawn(run(state.clone(), shutdown.clone()));
        match run.await {
            Ok(()) => break,
            Err(err) if err.is_panic() => {
                restarts += 1;
                let delay = backoff(restarts);
                tracing::error!(
                    target: "aurora_pool",
                    cluster_id = %state.cluster_id,
                    restarts,
                    delay_ms = delay.as_millis() as u64,
                    "cluster monitor panicked; restarting"
                );
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(_) => break,
        }
    }
    tracing::info!(target: "aurora_pool", cluster_id = %state.cluster_id, "cluster monitor stopped");
}

fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.pow(failures.min(6));
    base.min(Duration::from_secs(10))
}

/// The monitoring connection and the instance it is on.
struct Monitoring {
    instance: String,
    connection: Box<dyn AdminConnection>,
}

async fn run(state: Arc<MonitorState>, mut shutdown: watch::Receiver<bool>) {
    let mut monitoring: Option<Monitoring> = None;
    let mut failures: u32 = 0;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.changed() => break,
            outcome = refresh(&state, &mut monitoring) => outcome,
        };
        let delay = match outcome {
            Ok(()) => {
                failures = 0;
                state.refresh_rate
            }
            Err(err) => {
                failures += 1;
                let delay = backoff(failures).min(state.refresh_rate);
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %state.cluster_id,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %err,
                    "topology refresh failed"
                );
                delay
            }
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(delay) => {}
            _ = state.refresh_now.notified() => {}
        }
    }
    if let Some(m) = monitoring.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), m.connection.close()).await;
    }
}

async fn refresh(state: &MonitorState, monitoring: &mut Option<Monitoring>) -> Result<()> {
    let Some(registration) = state.registration() else {
        return Ok(()); // every pool is gone; the handle's drop stops us
    };
    let started = Instant::now();
    if monitoring.is_none() {
        *monitoring = Some(connect(state, &registration).await?);
    }
    let Some(m) = monitoring.as_mut() else {
        return Ok(());
    };
    let result = query_topology(m.connection.as_mut(), &registration.source).await;
    let topology = match result {
        Ok(topology) => topology,
        Err(err) => {
            if err.is_connect() {
                // The connection is gone; reconnect on the next round.
                *monitoring = None;
            }
            return Err(err);
        }
    };
    let writer = topology.writer().id().to_owned();
    let changed = state.publish(topology);
    tracing::debug!(
        target: "aurora_pool",
        cluster_id = %state.cluster_id,
        changed,
        elapsed_us = started.elapsed().as_micros() as u64,
        "topology polled"
    );
    // Keep the monitoring connection on the writer: it sees changes first.
    if let Some(old) = monitoring.take_if(|m| m.instance != writer) {
        old.connection.close().await;
    }
    Ok(())
}

/// Connects to the writer if it can, else to any other instance.
async fn connect(state: &MonitorState, registration: &Registration) -> Result<Monitoring> {
    let topology = state.topology.borrow().clone();
    let writer = topology.writer();
    let candidates = std::iter::once(writer).chain(topology.readers());
    let mut last_error = None;
    for instance in candidates {
        match registration
            .connector
            .connect(instance.address(), Purpose::Monitor)
            .await
        {
            Ok(connection) => {
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %state.cluster_id,
                    instance = instance.id(),
                    address = %instance.address(),
                    "monitoring connection opened"
                );
                return Ok(Monitoring {
                    instance: instance.id().to_owned(),
                    connection,
                });
            }
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::topology("the topology lists no instance")))
}
