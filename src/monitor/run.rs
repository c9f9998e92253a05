//! The monitor task: normal polling, health bookkeeping and panic mode.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::confirm;
use super::probe::{self, ProbeOutcome, ProbePlan, ProbeReport};
use super::{HIGH_RATE_WINDOW, MonitorState, Registration};
use crate::connector::{AdminConnection, Purpose};
use crate::endpoint::HostPort;
use crate::error::{Error, ErrorClass, Result};
use crate::supervise;
use crate::topology::{Instance, Topology, query_topology};

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
            Some(run(runs.clone(), start_with.clone()))
        },
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    )
    .await;
    state.set_failing_over(false);
    tracing::info!(target: "aurora_pool", cluster_id = %state.cluster_id, "cluster monitor stopped");
}

async fn run(state: Arc<MonitorState>, mut shutdown: watch::Receiver<bool>) {
    let mut monitor = Monitor::new(state);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = monitor.step() => {}
        }
    }
    monitor.stop().await;
}

/// The monitoring connection and the instance it is on.
struct Monitoring {
    instance: String,
    connection: Box<dyn AdminConnection>,
}

/// What the probes told about one instance.
#[derive(Debug, Default)]
struct Health {
    /// When the current run of failed probes began.
    failing_since: Option<Instant>,
    /// Failed probes in a row.
    failures: u32,
    dead: bool,
    /// The role the last successful probe saw.
    writer: Option<bool>,
    /// The last probe's login was refused.
    login_rejected: bool,
    /// When the instance left the topology. A dead instance's verdict is kept for a while
    /// after it left: a catalog read mid-failover can drop the old writer's row and the
    /// next one bring it back, and it must not come back as a healthy reader.
    departed: Option<Instant>,
}

/// In panic mode, at most one topology read from a reader (or the URL's host) this often.
const PANIC_READ_EVERY: Duration = Duration::from_millis(500);

/// What woke a panic-mode step.
enum PanicWake {
    Report(ProbeReport),
    Read(Option<Topology>),
    Tick,
}

/// How long the verdict on a dead instance outlives its leaving the topology.
const DEPARTED_DEAD_KEPT: Duration = Duration::from_secs(300);

struct Probe {
    address: HostPort,
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
            self.judge(vec![current, claimant]).await;
            return;
        }
        if std::mem::take(&mut self.poll_now) {
            self.poll().await;
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
        tokio::select! {
            _ = tokio::time::sleep_until((self.last_poll + delay).into()) => {}
            _ = self.state.refresh_now.notified() => {}
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
            }
        }
        self.poll().await;
    }

    async fn poll(&mut self) {
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
                let changed = self.publish(topology);
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %self.state.cluster_id,
                    changed,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "topology polled"
                );
                // Keep the monitoring connection on the writer: it sees changes first.
                if let Some(old) = self.monitoring.take_if(|m| m.instance != writer) {
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
                    self.enter_panic(&format!("topology refresh failed: {err}"));
                } else {
                    tracing::warn!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        failures = self.failures,
                        error = %err,
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

    fn on_report(&mut self, report: ProbeReport) {
        let settings = &self.state.settings;
        let current = self.state.current();
        let is_writer = current.writer().id() == report.instance;
        // Whether the current writer answers as the writer: then another claimant is judged,
        // not followed blindly.
        let current_is_writer = self
            .health
            .get(current.writer().id())
            .is_some_and(|h| h.writer == Some(true) && !h.dead);
        let health = self.health.entry(report.instance.clone()).or_default();
        let mut health_changed = false;
        let mut panic_reason = None;
        match report.outcome {
            ProbeOutcome::Reachable { writer } => {
                health.failing_since = None;
                health.failures = 0;
                health.login_rejected = false;
                health.writer = Some(writer);
                // An instance back as a second writer is no usable reader: it stays out of
                // the routing until judged (or until it answers as a reader).
                let second_writer = writer && !is_writer;
                if health.dead && !second_writer {
                    health.dead = false;
                    health_changed = true;
                    tracing::info!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        instance = %report.instance,
                        "instance reachable again"
                    );
                }
                if !writer && self.rejected.remove(&report.instance) {
                    // A rejected claimant answers as a reader now: it may serve reads.
                    health_changed = true;
                }
                if self.panic_since.is_none() {
                    if writer && !is_writer && self.rejected.contains(&report.instance) {
                        // Judged already: its claim lost.
                    } else if writer && !is_writer && current_is_writer {
                        // Two instances claim the writer role: one verdict, no failover.
                        self.verdict_due = Some(report.instance.clone());
                    } else if writer && !is_writer {
                        panic_reason =
                            Some(format!("{} reports itself as the writer", report.instance));
                    } else if !writer && is_writer {
                        panic_reason = Some(format!("writer {} is read-only now", report.instance));
                    }
                }
            }
            ProbeOutcome::Unknown { error } => {
                // The probe could not ask (no credentials, the pool going away): nothing is
                // learned about the instance.
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %self.state.cluster_id,
                    instance = %report.instance,
                    error = %error,
                    "health probe could not run"
                );
            }
            ProbeOutcome::Busy { error } => {
                // Alive: full, starting up, or mid-handshake. Never a reason to fail over;
                // the role is unknown until it answers.
                health.failing_since = None;
                health.failures = 0;
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %self.state.cluster_id,
                    instance = %report.instance,
                    error = %error,
                    "instance busy"
                );
            }
            ProbeOutcome::LoginRejected { error } => {
                // Alive, but the credentials are wrong (or rotating): not a reason to
                // declare the instance dead, and no role is known.
                health.writer = None;
                health.failing_since = None;
                health.failures = 0;
                if !std::mem::replace(&mut health.login_rejected, true) {
                    tracing::error!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        instance = %report.instance,
                        error = %error,
                        "health probe login rejected: check the pool's credentials"
                    );
                }
            }
            ProbeOutcome::Unreachable {
                definitive, error, ..
            } => {
                health.writer = None;
                let since = *health.failing_since.get_or_insert(report.at);
                health.failures = health.failures.saturating_add(1);
                if !health.dead
                    && (definitive || health.failures >= settings.failure_detection_count)
                {
                    health.dead = true;
                    health_changed = true;
                    tracing::warn!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        instance = %report.instance,
                        failing_for_ms = report.at.duration_since(since).as_millis() as u64,
                        error = %error,
                        "instance declared unreachable"
                    );
                }
                if health.dead && is_writer && self.panic_since.is_none() {
                    panic_reason = Some(format!(
                        "writer {} is unreachable: {error}",
                        report.instance
                    ));
                }
            }
        }
        if health_changed {
            self.republish();
        }
        if let Some(reason) = panic_reason {
            self.enter_panic(&reason);
        }
    }

    fn enter_panic(&mut self, reason: &str) {
        if self.panic_since.is_some() {
            return;
        }
        self.panic_since = Some(Instant::now());
        // The monitoring connection may be hung or on a demoted writer, and what the probes
        // last said about the old writer is stale: it becomes a candidate again only by
        // answering as the writer (re-elected).
        self.monitoring = None;
        // An earlier verdict does not hold when the writer it kept is gone: a claimant it
        // rejected may be the writer now.
        self.rejected.clear();
        let old_writer = self.state.current().writer().id().to_owned();
        if let Some(health) = self.health.get_mut(&old_writer) {
            health.writer = None;
        }
        self.state.set_failing_over(true);
        self.update_plan();
        tracing::warn!(
            target: "aurora_pool",
            cluster_id = %self.state.cluster_id,
            reason,
            instances = self.probes.len(),
            "failover detected: probing every instance for the writer"
        );
    }

    /// One round of panic mode: take in probe reports, and try to confirm a writer
    /// candidate. Two or more candidates get one verdict (see [`Monitor::judge`]).
    async fn panic_step(&mut self) {
        let high_rate = self.state.settings.high_refresh_rate;
        self.start_panic_read();
        let woke = {
            let (reports, read) = (&mut self.reports, &mut self.panic_read);
            let learned = async {
                match read.as_mut() {
                    Some(task) => task.await.ok().flatten(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(report) = reports.recv() => PanicWake::Report(report),
                topology = learned => PanicWake::Read(topology),
                _ = tokio::time::sleep(high_rate) => PanicWake::Tick,
            }
        };
        match woke {
            PanicWake::Report(report) => self.on_report(report),
            PanicWake::Read(topology) => {
                self.panic_read = None;
                if let Some(topology) = topology {
                    self.learn_instances(&topology);
                }
            }
            PanicWake::Tick => {}
        }
        while let Ok(report) = self.reports.try_recv() {
            self.on_report(report);
        }
        let candidates: Vec<String> = self
            .health
            .iter()
            .filter(|(id, h)| h.writer == Some(true) && !self.rejected.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if !candidates.is_empty() {
            self.judge(candidates).await;
        }
    }

    /// In panic mode the probes only watch the instances the pool knows: a reader added
    /// since the last poll and then promoted would never be found. So the topology is read,
    /// at most every [`PANIC_READ_EVERY`], from a reachable reader (each in turn), or through
    /// the URL's host when none answers; in a task, so that a silent host holds nothing up.
    fn start_panic_read(&mut self) {
        if self.panic_read.is_some()
            || self
                .panic_read_at
                .is_some_and(|at| at.elapsed() < PANIC_READ_EVERY)
        {
            return;
        }
        let Some(registration) = self.state.registration() else {
            return;
        };
        let current = self.state.current();
        let readers: Vec<HostPort> = current
            .readers()
            .filter(|r| {
                self.health
                    .get(r.id())
                    .is_some_and(|h| !h.dead && h.writer == Some(false))
            })
            .map(|r| r.address().clone())
            .collect();
        let turn = self.panic_reads;
        self.panic_reads += 1;
        // Every third read goes through the URL's host, and every read when no reader
        // answers: the cluster endpoint follows the new writer in DNS, eventually.
        let address = if readers.is_empty() || turn % 3 == 2 {
            registration.source.seed.clone()
        } else {
            readers[turn % readers.len()].clone()
        };
        self.panic_read_at = Some(Instant::now());
        let limit = self.state.settings.connect_timeout;
        let cluster_id = self.state.cluster_id.clone();
        self.panic_read = Some(tokio::spawn(async move {
            let read = async {
                let mut connection = registration
                    .connector
                    .connect(&address, Purpose::Monitor)
                    .await
                    .ok()?;
                let topology = query_topology(connection.as_mut(), &registration.source).await;
                connection.close().await;
                match topology {
                    Ok(topology) => Some(topology),
                    Err(err) => {
                        tracing::debug!(
                            target: "aurora_pool",
                            cluster_id = %cluster_id,
                            address = %address,
                            error = %err,
                            "panic mode: reading the topology failed"
                        );
                        None
                    }
                }
            };
            tokio::time::timeout(limit, read).await.ok().flatten()
        }));
    }

    /// Adds the instances of `read` the published topology lacks, as readers: their probes
    /// start at the next step, and one that answers as the writer is judged like any
    /// claimant.
    fn learn_instances(&mut self, read: &Topology) {
        let current = self.state.current();
        let unknown: Vec<&Instance> = read
            .instances()
            .iter()
            .filter(|i| current.instance(i.id()).is_none())
            .collect();
        if unknown.is_empty() {
            return;
        }
        tracing::info!(
            target: "aurora_pool",
            cluster_id = %self.state.cluster_id,
            instances = ?unknown.iter().map(|i| i.id()).collect::<Vec<_>>(),
            "panic mode: instances the pool did not know, learned from a topology read"
        );
        let learned = current.with_readers(unknown.into_iter().cloned());
        self.publish(learned);
        self.sync_probes();
        self.update_plan();
    }

    /// Confirms each of `claimants` as a writer and reads the topology from its catalog, then
    /// adopts one: the one whose catalog has the newest writer row (Aurora's rule for two
    /// writer rows), the current writer on a tie, else the smallest id. The others are
    /// rejected: unavailable, and their claim ignored, until they answer as readers. One
    /// verdict per claim, never a flap between them. Returns whether a writer was adopted.
    async fn judge(&mut self, claimants: Vec<String>) -> bool {
        let current = self.state.current().writer().id().to_owned();
        // All at once, each bounded like a probe: a claimant that went silent (the old
        // writer behind a black hole) must not hold up the verdict on the others.
        let settings = &self.state.settings;
        let limit = probe::probe_timeout(
            settings.failure_detection_interval,
            settings.connect_timeout,
        );
        let mut confirming = tokio::task::JoinSet::new();
        let current_claims = self.panic_since.is_none() && claimants.contains(&current);
        for claimant in claimants {
            let Some(address) = self.probes.get(&claimant).map(|p| p.address.clone()) else {
                continue;
            };
            let state = self.state.clone();
            confirming.spawn(async move {
                let outcome = confirm::candidate(&state, &address, limit).await;
                (claimant, outcome)
            });
        }
        // A claimant whose catalog has a newer writer row than the one the pool follows wins
        // at once: the others (the old writer among them, perhaps silent) are not waited for.
        let following_since = self.state.current().writer_since();
        let mut confirmed = Vec::new();
        let mut newer_claimant = false;
        while let Some(joined) = confirming.join_next().await {
            let Ok((claimant, outcome)) = joined else {
                continue;
            };
            match outcome {
                Ok((connection, topology)) => {
                    let newer = claimant != current
                        && topology.writer_since().is_some()
                        && topology.writer_since() > following_since;
                    confirmed.push((claimant, connection, topology));
                    if newer {
                        newer_claimant = true;
                        confirming.abort_all();
                        break;
                    }
                }
                Err(why) => {
                    tracing::debug!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        candidate = claimant,
                        why,
                        "writer candidate not confirmed"
                    );
                    if let Some(h) = self.health.get_mut(&claimant) {
                        h.writer = None;
                    }
                }
            }
        }
        // Outside panic mode the writer the pool follows keeps its role unless it answers
        // as the loser or a newer writer row shows up: a writer that is merely slow to take
        // a new session (loaded, full) does not lose the verdict by not showing up.
        if current_claims && !newer_claimant && !confirmed.iter().any(|(id, _, _)| *id == current) {
            for (_, connection, _) in confirmed {
                tokio::spawn(connection.close());
            }
            return false;
        }
        let best = confirmed
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                a.2.writer_since()
                    .cmp(&b.2.writer_since())
                    .then_with(|| (a.0 == current).cmp(&(b.0 == current)))
                    .then_with(|| b.0.cmp(&a.0))
            })
            .map(|(i, _)| i);
        let Some(best) = best else {
            return false;
        };
        let (winner, connection, topology) = confirmed.swap_remove(best);
        for (loser, connection, _) in confirmed {
            // Not awaited: a connection that goes silent must not hold the monitor.
            tokio::spawn(connection.close());
            tracing::warn!(
                target: "aurora_pool",
                cluster_id = %self.state.cluster_id,
                winner,
                rejected = loser,
                "two instances claim the writer role: the one with the newer writer row in its catalog wins"
            );
            if let Some(h) = self.health.get_mut(&loser) {
                h.writer = None;
            }
            self.rejected.insert(loser);
        }
        self.adopt_writer(&winner, connection, topology);
        true
    }

    /// What follows any change of writer, however it was found: the topology is read at the
    /// high rate for a while (the catalog settles: the old writer's row comes back as a
    /// reader's), and the old writer gets no reader pool until a probe finds it answering
    /// as a reader (it may be dead but not yet declared so, and reads sent there would hang).
    fn writer_changed(&mut self, old_writer: &str, new_writer: &str) {
        if old_writer == new_writer {
            return;
        }
        self.high_rate_until = Some(Instant::now() + HIGH_RATE_WINDOW);
        let old = self.health.entry(old_writer.to_owned()).or_default();
        if old.writer != Some(false) {
            old.dead = true;
        }
    }

    /// The writer's probe's read channel, when the probes run routinely (they then watch the
    /// writer, and one of its connections serves both).
    fn writer_probe_reads(&self) -> Option<mpsc::Sender<probe::TopologyRead>> {
        if !self.state.settings.failure_detection_enabled {
            return None;
        }
        let writer = self.state.current().writer().id().to_owned();
        self.probes
            .get(&writer)
            .filter(|p| !p.task.is_finished())
            .map(|p| p.reads.clone())
    }

    /// Makes `candidate`, confirmed as the writer through `connection`, the writer of the
    /// published topology and leaves panic mode.
    fn adopt_writer(
        &mut self,
        candidate: &str,
        connection: Box<dyn AdminConnection>,
        topology: Topology,
    ) {
        let elapsed = self.panic_since.map(|t| t.elapsed()).unwrap_or_default();
        let old_writer = self.state.current().writer().id().to_owned();
        if self.state.settings.failure_detection_enabled && self.probes.contains_key(candidate) {
            // Its probe serves the topology reads from now on.
            tokio::spawn(connection.close());
        } else {
            self.monitoring = Some(Monitoring {
                instance: candidate.to_owned(),
                connection,
            });
        }
        let was_failing_over = self.panic_since.take().is_some();
        if let Some(read) = self.panic_read.take() {
            read.abort();
        }
        self.failures = 0;
        if let Some(h) = self.health.get_mut(candidate) {
            h.dead = false;
            h.failing_since = None;
        }
        self.rejected.remove(candidate);
        self.high_rate_until = Some(Instant::now() + HIGH_RATE_WINDOW);
        self.writer_changed(&old_writer, candidate);
        self.publish(topology.with_writer(candidate));
        self.state.set_failing_over(false);
        self.update_plan();
        if was_failing_over || old_writer != candidate {
            tracing::info!(
                target: "aurora_pool",
                cluster_id = %self.state.cluster_id,
                old_writer,
                new_writer = candidate,
                elapsed_ms = elapsed.as_millis() as u64,
                "failover finished: writer confirmed"
            );
        }
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
            let keep = wanted
                .get(id.as_str())
                .is_some_and(|i| *i.address() == probe.address && !probe.task.is_finished());
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
            let task = tokio::spawn(probe::run(
                self.state.clone(),
                id.to_owned(),
                instance.address().clone(),
                self.plan.subscribe(),
                self.report_sender.clone(),
                read_requests,
            ));
            self.probes.insert(
                id.to_owned(),
                Probe {
                    address: instance.address().clone(),
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
    let limit = state.settings.connect_timeout * 2;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let read = async {
        reads
            .send(probe::TopologyRead { reply })
            .await
            .map_err(|_| Error::topology("the writer's probe stopped"))?;
        answer
            .await
            .map_err(|_| Error::topology("the writer's probe dropped the read"))?
    };
    tokio::time::timeout(limit, read).await.map_err(|_| {
        Error::timeout(format!(
            "the writer's probe did not read the topology within {limit:?}"
        ))
    })?
}

async fn connect_writer_first(
    state: &MonitorState,
    registration: &Registration,
) -> Result<Monitoring> {
    let topology = state.current();
    let writer = topology.writer();
    let others = topology.readers().filter(|r| r.is_available());
    let mut writer_error = None;
    for instance in std::iter::once(writer).chain(others) {
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
