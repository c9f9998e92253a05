//! The pool's background work: supervision, the reconciler, credential renewal, filling
//! new pools and closing old ones with a bound.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::backend::Backend;
use super::core::{PoolCore, RETRY_PAUSE};
use super::login;
use super::scope::ScopeSource;
use crate::auth::{CredentialProvider, Credentials};
use crate::config::Config;
use crate::topology::{Instance, Topology};

/// Connections a new pool opens at once while filling up to its minimum.
const PREFILL_CONCURRENCY: usize = 4;

/// New pools wait up to this long (at random) before filling up, so that many processes
/// reacting to one failover do not reach the new writer all at the same moment.
const PREFILL_JITTER: Duration = Duration::from_millis(100);

/// Rounds of connects a new pool makes to fill up to its minimum.
const PREFILL_ROUNDS: u32 = 6;

/// How long closing an instance pool waits for its checked-out connections. A connection
/// stuck on a silent host (sqlx pings every connection it takes back, without a timeout)
/// would otherwise hold `close` forever; past this the pool is closed to new checkouts and
/// the stuck connection is left to the operating system's TCP timeouts.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes `pool`, waiting at most [`CLOSE_WAIT`] for its checked-out connections.
pub(crate) async fn close_bounded<B: Backend>(pool: B::Pool) {
    let _ = tokio::time::timeout(CLOSE_WAIT, B::close(pool)).await;
}

pub(crate) async fn reconcile_on_updates<B: Backend>(
    core: Weak<PoolCore<B>>,
    mut updates: watch::Receiver<Arc<Topology>>,
    mut scope: ScopeSource,
) {
    let mut running = core
        .upgrade()
        .and_then(|core| core.cluster_handle())
        .map(|cluster| {
            let mut running = cluster.running();
            running.mark_changed();
            running
        });
    loop {
        let scope_changed = tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                false
            }
            _ = scope.changed() => true,
            () = monitor_stopped(&mut running) => {
                // The runtime that ran the cluster's monitor shut down: run it on this one.
                if let Some(cluster) = core.upgrade().and_then(|core| core.cluster_handle()) {
                    cluster.restart_if_stopped();
                }
                continue;
            }
        };
        let topology = updates.borrow_and_update().clone();
        let Some(core) = core.upgrade() else { break };
        core.reconcile(&topology, scope_changed).await;
    }
}

/// Resolves when the cluster monitor's task is seen to stop (and at once when it was
/// stopped before the first call); never when there is no monitor to watch (a pool through
/// RDS Proxy) or its state is gone. A monitor that stays stopped (shut down with its last
/// pool) resolves it once.
async fn monitor_stopped(running: &mut Option<watch::Receiver<bool>>) {
    let Some(receiver) = running else {
        return std::future::pending().await;
    };
    loop {
        if receiver.changed().await.is_err() {
            *running = None;
            return std::future::pending().await;
        }
        if !*receiver.borrow_and_update() {
            return;
        }
    }
}

/// How often a pool tells the cluster monitor that it has a connection open.
const CONNECTION_REPORT: Duration = Duration::from_secs(1);

/// Tells the cluster monitor every [`CONNECTION_REPORT`] while any pool of `core` has a
/// connection open (what keeps the monitor from pausing, and wakes a paused one), until the
/// pool closes or is dropped.
pub(crate) async fn report_connections<B: Backend>(core: Weak<PoolCore<B>>) {
    let mut tick = tokio::time::interval(CONNECTION_REPORT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.is_closed() {
            return;
        }
        if core.has_connections()
            && let Some(cluster) = core.cluster_handle()
        {
            cluster.note_connected();
        }
    }
}

/// How often the pools' connection gauges are sampled.
#[cfg(feature = "metrics")]
const GAUGE_SAMPLE: Duration = Duration::from_secs(1);

/// Samples the pools' connection gauges (feature `metrics`) every [`GAUGE_SAMPLE`] until the
/// pool closes or is dropped, then reports them at zero.
#[cfg(feature = "metrics")]
pub(crate) async fn sample_gauges<B: Backend>(core: Weak<PoolCore<B>>, cluster_id: String) {
    let mut gauges = crate::metrics::PoolGauges::default();
    let mut tick = tokio::time::interval(GAUGE_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade().filter(|core| !core.is_closed()) else {
            break;
        };
        gauges.report(&cluster_id, &core.status());
    }
    gauges.clear();
}

/// Fetches credentials for each of `instances` at once, each bounded by the connect timeout.
/// An instance whose fetch fails is left out: its pool opens with none and renews them soon.
pub(crate) async fn fetch_credentials(
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
                error = %format_args!("{err:#}"),
                "no credentials for a new instance pool; retrying shortly"
            ),
        }
    }
    fresh
}

/// Renews each pool's credentials when they are due, for as long as the pool lives.
pub(crate) async fn renew_credentials<B: Backend>(core: Weak<PoolCore<B>>) {
    loop {
        let (due, mut routing) = {
            let Some(core) = core.upgrade() else { return };
            let table = core.routing_table();
            let due = table.slots().filter_map(|s| s.login.renew_at()).min();
            (due, core.routing_changes())
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
        let table = core.routing_table();
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
pub(crate) async fn prefill<B: Backend>(pool: B::Pool, min: u32, instance: String) {
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
                    failed = Some(format!("{err:#}"));
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
