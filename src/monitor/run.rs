//! The monitor task: normal polling, the probes it runs, and its connection. What the
//! probes report is weighed in [`reports`]; the search for a new writer is [`panic`].

mod panic;
mod reports;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::probe::{self, ProbePlan, ProbeReport};
use super::{MonitorState, Registration};
use crate::connector::{AdminConnection, AdminTarget, Purpose};
use crate::error::{Error, ErrorClass, Result};
use crate::supervise;
use crate::topology::{Instance, Topology, query_topology};
use reports::Health;

/// Probe reports waiting for the monitor; probes wait when it is full.
const REPORT_CAPACITY: usize = 256;

/// How often instances declared dead are re-probed when routine probing is off.
const DEAD_RECHECK: Duration = Duration::from_secs(1);

/// Runs the monitor and restarts it (with backoff) if it panics.
pub(super) async fn supervise(state: Arc<MonitorState>, shutdown: watch::Receiver<bool>) {
    let mut stopped = shutdown.clone();
    let (runs, start_with) = (state.clone(), shutdown);
    supervise::supervise(
        "cluster monitor",
        state.cluster_id.clone(),
        move || {
            if *start_with.borrow() {
                return None;
            }
            // A run that panicked may have been searching for a writer: checkouts must not
            // wait on a search nobody runs. The new run starts a search of its own if the
            // writer is still missing.
            runs.set_failing_over(false);
            runs.set_writer_silent(false);
            Some(run(runs.clone(), start_with.clone()))
        },
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    )
    .await;
    state.set_failing_over(false);
    state.set_writer_silent(false);
    tracing::info!(target: "aurora_pool", cluster_id = %state.cluster_id, "cluster monitor stopped");
}

async fn run(state: Arc<MonitorState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let mut monitor = Monitor::new(state.clone());
        let pause = loop {
            tokio::select! {
                _ = shutdown.changed() => break false,
                _ = monitor.step() => {}
            }
            if monitor.panic_since.is_none() && state.idle_long_enough() {
                break true;
            }
        };
        monitor.stop().await;
        if !pause {
            return;
        }
        // No pool of the cluster has a connection open: nothing to keep current, and an
        // Aurora Serverless v2 instance pauses only with no connection at all. The next
        // connection (or checkout, or refresh request) wakes the monitor, which then starts
        // afresh from the topology it had.
        state.paused.store(true, Ordering::Release);
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %state.cluster_id,
            idle_for_ms = state.settings.idle_pause.unwrap_or_default().as_millis() as u64,
            "cluster monitor paused: no pool of the cluster has a connection open"
        );
        let woken = tokio::select! {
            _ = shutdown.changed() => false,
            _ = state.wake.notified() => true,
        };
        state.paused.store(false, Ordering::Release);
        if !woken {
            return;
        }
        *state
            .last_connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %state.cluster_id,
            "cluster monitor resumed"
        );
    }
}

/// The monitoring connection and the instance it is on.
pub(super) struct Monitoring {
    instance: String,
    connection: Box<dyn AdminConnection>,
}

/// How long the verdict on a dead instance outlives its leaving the topology.
const DEPARTED_DEAD_KEPT: Duration = Duration::from_secs(300);

struct Probe {
    target: AdminTarget,
    task: JoinHandle<()>,
    /// The monitor's topology reads, when this instance is the writer.
    reads: mpsc::Sender<probe::TopologyRead>,
}

struct Monitor {
    state: Arc<MonitorState>,
    monitoring: Option<Monitoring>,
    /// Set while searching for a new writer.
    panic_since: Option<Instant>,
    high_rate_until: Option<Instant>,
    /// Poll without waiting: set at start so that the monitoring connection opens at once.
    poll_now: bool,
    /// When the last poll started: the next one is due a refresh interval later, however
    /// many probe reports arrive meanwhile.
    last_poll: Instant,
    failures: u32,
    health: BTreeMap<String, Health>,
    /// Instances whose claim to the writer role lost a verdict, until they answer as
    /// readers.
    rejected: BTreeSet<String>,
    /// Another instance claims the writer role while the writer answers as one: judge.
    verdict_due: Option<String>,
    /// When the last such verdict was made.
    last_verdict: Option<Instant>,
    probes: BTreeMap<String, Probe>,
    plan: watch::Sender<ProbePlan>,
    reports: mpsc::Receiver<ProbeReport>,
    report_sender: mpsc::Sender<ProbeReport>,
    /// In panic mode: a topology read from a reader (or through the URL's host) in flight.
    panic_read: Option<JoinHandle<Option<Topology>>>,
    /// When the last such read started, and how many there were.
    panic_read_at: Option<Instant>,
    panic_reads: usize,
    /// In panic mode: how long the topology reads have agreed.
    agreement: Option<panic::Agreement>,
    /// Panic mode ended on the readers' agreement while this writer stays silent: its
    /// silence does not start panic mode again until it answers or another writer is named.
    settled_without: Option<String>,
    /// The current failover's trace, from panic mode's start to its verdict.
    failover: Option<panic::FailoverSpans>,
    /// The replica lag last reported to the metrics.
    lags: crate::metrics::LagGauges,
}

impl Monitor {
    fn new(state: Arc<MonitorState>) -> Monitor {
        let (report_sender, reports) = mpsc::channel(REPORT_CAPACITY);
        let settings = &state.settings;
        let plan = ProbePlan {
            fast: None,
            routine: settings.failure_detection_enabled.then_some((
                settings.failure_detection_interval,
                settings.failure_detection_time,
            )),
            dead: BTreeSet::new(),
            recheck: DEAD_RECHECK.min(settings.failure_detection_interval),
        };
        Monitor {
            state,
            monitoring: None,
            panic_since: None,
            high_rate_until: None,
            poll_now: true,
            last_poll: Instant::now(),
            failures: 0,
            health: BTreeMap::new(),
            rejected: BTreeSet::new(),
            verdict_due: None,
            last_verdict: None,
            probes: BTreeMap::new(),
            plan: watch::channel(plan).0,
            reports,
            report_sender,
            panic_read: None,
            panic_read_at: None,
            panic_reads: 0,
            agreement: None,
            settled_without: None,
            failover: None,
            lags: crate::metrics::LagGauges::default(),
        }
    }

    async fn step(&mut self) {
        self.sync_probes();
        if self.panic_since.is_some() {
            self.panic_step().await;
        } else {
            self.normal_step().await;
        }
    }

    /// Waits for the next poll (or a probe report, or a refresh request), then polls.
    async fn normal_step(&mut self) {
        // At most one verdict per probe interval: a claimant reports every interval, and
        // judging at each report would starve the topology polls.
        let judged_lately = self
            .last_verdict
            .is_some_and(|at| at.elapsed() < self.state.settings.failure_detection_interval);
        if !judged_lately && let Some(claimant) = self.verdict_due.take() {
            let current = self.state.current().writer().id().to_owned();
            self.last_verdict = Some(Instant::now());
            let claimants = vec![current, claimant];
            let span = self.confirm_span(&claimants);
            self.judge(claimants).instrument(span).await;
            return;
        }
        if std::mem::take(&mut self.poll_now) {
            self.poll(false).await;
            return;
        }
        let settings = &self.state.settings;
        let delay = if self.failures > 0 {
            supervise::backoff(self.failures).min(settings.refresh_rate)
        } else if self
            .high_rate_until
            .is_some_and(|until| Instant::now() < until)
        {
            settings.high_refresh_rate
        } else {
            settings.refresh_rate
        };
        let closed = async {
            match self.monitoring.as_mut() {
                Some(m) => m.connection.closed().await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = tokio::time::sleep_until((self.last_poll + delay).into()) => false,
            _ = self.state.refresh_now.notified() => true,
            Some(report) = self.reports.recv() => {
                self.on_report(report);
                return;
            }
            _ = closed => {
                // The server ended the monitoring connection: a crash (RST or FIN) or a
                // shutdown (57P01). Read the topology anew at once; the instance's probe,
                // which watches its own connection, gives the verdict on the instance.
                if let Some(m) = self.monitoring.take() {
                    tracing::info!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        instance = %m.instance,
                        "monitoring connection closed by the server"
                    );
                }
                false
            }
        };
        self.poll(forced).await;
    }

    /// Reads the topology; `forced` when a pool asked for the read (a failing query).
    async fn poll(&mut self, forced: bool) {
        let Some(registration) = self.state.registration() else {
            return; // every pool is gone; the handle's drop stops us
        };
        let started = Instant::now();
        self.last_poll = started;
        // The read may take up to connect_timeout on a silent instance: the probes' reports
        // are taken in meanwhile, so that a verdict on the writer never waits for it.
        let mut monitoring = self.monitoring.take();
        let state = self.state.clone();
        let through_probe = self.writer_probe_reads();
        if through_probe.is_some()
            && let Some(old) = monitoring.take()
        {
            // The writer's probe reads the topology now: one background connection to the
            // writer, not two.
            tokio::spawn(old.connection.close());
        }
        let result = {
            let read = async {
                match through_probe {
                    Some(reads) => read_through_probe(reads, &state).await,
                    None => read_topology(&state, &registration, &mut monitoring).await,
                }
            };
            tokio::pin!(read);
            loop {
                tokio::select! {
                    result = &mut read => break Some(result),
                    Some(report) = self.reports.recv() => {
                        self.on_report(report);
                        // A probe found the writer gone: the search starts now, not when a
                        // read hung on that writer gives up.
                        if self.panic_since.is_some() {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(result) = result else {
            // What the old connection was reading is stale; it may hang: dropped unread.
            drop(monitoring);
            return;
        };
        if self.panic_since.is_some() {
            if let Some(old) = monitoring {
                tokio::spawn(old.connection.close());
            }
            return;
        }
        self.monitoring = monitoring;
        match result {
            Ok(topology) => {
                self.failures = 0;
                let writer = topology.writer().id().to_owned();
                // A failover the catalog shows first (the monitoring connection closed and
                // the reconnect found the promoted instance) is followed like one the probes
                // found.
                let old_writer = self.state.current().writer().id().to_owned();
                self.writer_changed(&old_writer, &writer);
                self.lags.report(&self.state.cluster_id, &topology);
                let changed = self.publish(topology);
                crate::metrics::topology_read(&self.state.cluster_id, started.elapsed(), forced);
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %self.state.cluster_id,
                    changed,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "topology polled"
                );
                // Keep the monitoring connection on the writer: it sees changes first (unless
                // the writer is the silent one panic mode settled on).
                let settled = self.settled_without.is_some();
                if let Some(old) = self
                    .monitoring
                    .take_if(|m| m.instance != writer && !settled)
                {
                    tokio::spawn(old.connection.close());
                }
            }
            Err(err) => {
                self.failures += 1;
                // A refused login is a credentials problem: the instances are fine, and a
                // failover would not help. A busy instance is alive.
                let lost =
                    err.class() == ErrorClass::Network || err.is_timeout() || err.is_topology();
                if lost && err.class() != ErrorClass::Login && !err.is_busy() {
                    self.enter_panic(&format!("topology refresh failed: {err:#}"));
                } else {
                    tracing::warn!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        failures = self.failures,
                        error = %format_args!("{err:#}"),
                        "topology refresh failed"
                    );
                }
            }
        }
    }

    /// Publishes a topology read from the catalog, with the health probes' verdicts applied.
    fn publish(&mut self, topology: Topology) -> bool {
        self.state.publish(topology.with_unavailable(&self.dead()))
    }

    /// The instances the probes declared dead, and those whose claim to the writer role
    /// was rejected (a second primary serves no reads).
    fn dead(&self) -> BTreeSet<String> {
        self.health
            .iter()
            .filter(|(_, h)| h.dead)
            .map(|(id, _)| id.clone())
            .chain(self.rejected.iter().cloned())
            .collect()
    }

    /// Re-publishes the current topology after a health change.
    fn republish(&mut self) {
        let current = Topology::clone(&self.state.current());
        self.publish(current);
        self.update_plan();
    }

    /// The writer's probe's read channel, when the probes run routinely (they then watch the
    /// writer, and one of its connections serves both).
    fn writer_probe_reads(&self) -> Option<mpsc::Sender<probe::TopologyRead>> {
        // A writer accepted while silent cannot serve reads: a reader does.
        if !self.state.settings.failure_detection_enabled || self.settled_without.is_some() {
            return None;
        }
        let writer = self.state.current().writer().id().to_owned();
        self.probes
            .get(&writer)
            .filter(|p| !p.task.is_finished())
            .map(|p| p.reads.clone())
    }

    /// Tells the probes how to run now.
    fn update_plan(&mut self) {
        let dead = self.dead();
        // Probing at half the high rate puts the new writer's first answer within
        // `cluster_topology_high_refresh_rate / 2` of its promotion.
        let fast = self
            .panic_since
            .map(|_| self.state.settings.high_refresh_rate / 2);
        self.plan.send_if_modified(|plan| {
            let changed = plan.fast != fast || plan.dead != dead;
            plan.fast = fast;
            plan.dead = dead;
            changed
        });
    }

    /// One probe per instance of the current topology: new instances get one, departed
    /// ones lose theirs, crashed probe tasks are restarted.
    fn sync_probes(&mut self) {
        let topology = self.state.current();
        let wanted: BTreeMap<&str, &Instance> =
            topology.instances().iter().map(|i| (i.id(), i)).collect();
        self.probes.retain(|id, probe| {
            let keep = wanted.get(id.as_str()).is_some_and(|i| {
                AdminTarget::instance(i) == probe.target && !probe.task.is_finished()
            });
            if !keep {
                probe.task.abort();
            }
            keep
        });
        let now = Instant::now();
        self.health.retain(|id, health| {
            if wanted.contains_key(id.as_str()) {
                health.departed = None;
                return true;
            }
            let departed = *health.departed.get_or_insert(now);
            health.dead && now.duration_since(departed) < DEPARTED_DEAD_KEPT
        });
        for (id, instance) in wanted {
            if self.probes.contains_key(id) {
                continue;
            }
            let (reads, read_requests) = mpsc::channel(1);
            let target = AdminTarget::instance(instance);
            let task = tokio::spawn(probe::run(
                self.state.clone(),
                id.to_owned(),
                target.clone(),
                self.plan.subscribe(),
                self.report_sender.clone(),
                read_requests,
            ));
            self.probes.insert(
                id.to_owned(),
                Probe {
                    target,
                    task,
                    reads,
                },
            );
        }
    }

    /// Stops the probes (they close their connections) and closes the monitoring connection.
    async fn stop(mut self) {
        if let Some(read) = self.panic_read.take() {
            read.abort();
        }
        // Closing the plan channel tells every probe to finish.
        let (closed, _) = watch::channel(self.plan.borrow().clone());
        drop(std::mem::replace(&mut self.plan, closed));
        for (_, probe) in std::mem::take(&mut self.probes) {
            let abort = probe.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), probe.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(m) = self.monitoring.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), m.connection.close()).await;
        }
    }
}

/// Reads the topology on the monitoring connection, opening one (writer first) if needed.
async fn read_topology(
    state: &MonitorState,
    registration: &Registration,
    monitoring: &mut Option<Monitoring>,
) -> Result<Topology> {
    if monitoring.is_none() {
        *monitoring = Some(connect_writer_first(state, registration).await?);
    }
    let Some(current) = monitoring.as_mut() else {
        return Err(Error::topology("no monitoring connection"));
    };
    let limit = state.settings.connect_timeout;
    match tokio::time::timeout(
        limit,
        query_topology(current.connection.as_mut(), &registration.source),
    )
    .await
    {
        Ok(Ok(topology)) => Ok(topology),
        Ok(Err(err)) => {
            // A broken connection, or a server shutting it down (57P01-57P03).
            if err.class() == ErrorClass::Network {
                *monitoring = None;
            }
            Err(err)
        }
        Err(_) => {
            // A connection that stopped answering is dropped, never reused.
            *monitoring = None;
            Err(Error::timeout(format!(
                "the topology query took longer than {limit:?}"
            )))
        }
    }
}

/// Reads the topology through the writer's probe, within twice `connect_timeout` (the probe
/// may be in the middle of a probe first).
async fn read_through_probe(
    reads: mpsc::Sender<probe::TopologyRead>,
    state: &MonitorState,
) -> Result<Topology> {
    probe::ask(&reads, false, state.settings.connect_timeout * 2).await
}

async fn connect_writer_first(
    state: &MonitorState,
    registration: &Registration,
) -> Result<Monitoring> {
    let topology = state.current();
    let writer = topology.writer();
    let others = topology.readers().filter(|r| r.is_available());
    let mut writer_error = None;
    // A writer the probes declared dead is tried last: panic mode may have accepted it
    // while it stays silent, and a connect to it waits out `connect_timeout`.
    let (first, last) = match writer.is_available() {
        true => (Some(writer), None),
        false => (None, Some(writer)),
    };
    for instance in first.into_iter().chain(others).chain(last) {
        match registration
            .connector
            .connect(&AdminTarget::instance(instance), Purpose::Monitor)
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
            // The writer's own answer decides what the failure means (a full or starting
            // writer is busy, not lost), whatever the readers said after it.
            Err(err) => {
                if writer_error.is_none() {
                    writer_error = Some(err);
                }
            }
        }
    }
    Err(writer_error.unwrap_or_else(|| Error::topology("the topology lists no instance")))
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(read) = &self.panic_read {
            read.abort();
        }
        for probe in self.probes.values() {
            probe.task.abort();
        }
    }
}
