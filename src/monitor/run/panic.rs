//! Panic mode: the search for a writer after the writer was lost. Every instance is probed
//! at the high rate, the topology is read from the readers (which also teaches the monitor
//! instances it did not know), claimants are confirmed and judged, and the winner adopted.

use std::time::{Duration, Instant};

use tracing::Instrument;

use super::{Monitor, Monitoring};
use crate::connector::{AdminConnection, AdminTarget, Purpose};
use crate::monitor::HIGH_RATE_WINDOW;
use crate::monitor::confirm;
use crate::monitor::probe::{self, ProbeReport};
use crate::topology::{Dialect, Instance, Topology, query_topology};

/// In panic mode, at most one topology read from a reader (or the URL's host) this often.
const PANIC_READ_EVERY: Duration = Duration::from_millis(500);

/// How long the topologies read in panic mode must agree before the monitor accepts them
/// without a confirmed writer: the JDBC wrapper's rule, 15 s for a regional cluster and
/// 30 s for a global database (its `STABLE_TOPOLOGIES_DURATION_NANO`: a cross-region
/// failover leaves the readers' catalogs naming the old writer for longer).
fn stable_topology_for(dialect: Dialect) -> Duration {
    match dialect {
        Dialect::GlobalAuroraPg => Duration::from_secs(30),
        _ => Duration::from_secs(15),
    }
}

/// Consecutive panic-mode topology reads that said the same thing.
pub(super) struct Agreement {
    /// The writer they name and every instance they list.
    view: (String, Vec<String>),
    since: Instant,
    reads: u32,
}

impl Agreement {
    fn view_of(topology: &Topology) -> (String, Vec<String>) {
        (
            topology.writer().id().to_owned(),
            topology
                .instances()
                .iter()
                .map(|i| i.id().to_owned())
                .collect(),
        )
    }
}

/// One failover's trace: its root span (`aurora_pool.failover`) and the search for the
/// writer under it (`aurora_pool.failover.search`), open until the verdict.
pub(super) struct FailoverSpans {
    root: tracing::Span,
    search: tracing::Span,
}

/// What woke a panic-mode step.
enum PanicWake {
    Report(ProbeReport),
    Read(Option<Topology>),
    Tick,
}

impl Monitor {
    pub(super) fn enter_panic(&mut self, reason: &str) {
        if self.panic_since.is_some() {
            return;
        }
        self.panic_since = Some(Instant::now());
        self.agreement = None;
        self.settle_on(None);
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
        crate::metrics::failover_started(&self.state.cluster_id);
        // A trace of its own: the monitor's task has no caller whose trace it belongs to.
        let root = tracing::info_span!(
            target: "aurora_pool",
            parent: None,
            "aurora_pool.failover",
            cluster_id = %self.state.cluster_id,
            old_writer = %old_writer,
            reason,
            new_writer = tracing::field::Empty,
            outcome = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        let search = tracing::info_span!(
            target: "aurora_pool",
            parent: &root,
            "aurora_pool.failover.search",
            instances = self.probes.len(),
        );
        search.in_scope(|| {
            tracing::warn!(
                target: "aurora_pool",
                cluster_id = %self.state.cluster_id,
                reason,
                instances = self.probes.len(),
                "failover detected: probing every instance for the writer"
            )
        });
        self.failover = Some(FailoverSpans { root, search });
    }

    /// Publishes `topology`, the verdict of the current failover (if one is under way), and
    /// closes its trace: `outcome` (`succeeded`: a writer confirmed; `failed`: the readers'
    /// topology accepted without one) and the writer are recorded, and its root span is
    /// handed to the pools before the topology is published (a pool may follow it at once),
    /// to stay open until the first pool has followed. A verdict that changes nothing lets
    /// it go at once: no pool will follow.
    fn publish_verdict(
        &mut self,
        topology: Topology,
        new_writer: &str,
        outcome: &str,
        elapsed: Duration,
    ) {
        let Some(FailoverSpans { root, search }) = self.failover.take() else {
            self.publish(topology);
            return;
        };
        drop(search);
        root.record("new_writer", new_writer);
        root.record("outcome", outcome);
        root.record("elapsed_ms", elapsed.as_millis() as u64);
        let next = self.state.current().version() + 1;
        self.state.set_failover_span(Some((next, root)));
        if !self.publish(topology) {
            self.state.set_failover_span(None);
        }
    }

    /// The span a verdict on `claimants` runs in: under the failover's trace in panic mode,
    /// a root of its own otherwise (two instances claiming the writer role).
    pub(super) fn confirm_span(&self, claimants: &[String]) -> tracing::Span {
        match &self.failover {
            Some(failover) => tracing::info_span!(
                target: "aurora_pool",
                parent: &failover.root,
                "aurora_pool.failover.confirm",
                claimants = ?claimants,
            ),
            None => tracing::info_span!(
                target: "aurora_pool",
                parent: None,
                "aurora_pool.failover.confirm",
                cluster_id = %self.state.cluster_id,
                claimants = ?claimants,
            ),
        }
    }

    /// One round of panic mode: take in probe reports, and try to confirm a writer
    /// candidate. Two or more candidates get one verdict (see [`Monitor::judge`]).
    pub(super) async fn panic_step(&mut self) {
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
        let mut agreed = None;
        match woke {
            PanicWake::Report(report) => self.on_report(report),
            PanicWake::Read(topology) => {
                self.panic_read = None;
                if let Some(topology) = topology {
                    self.learn_instances(&topology);
                    agreed = self.agrees_for_long(topology);
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
            let span = self.confirm_span(&candidates);
            if self.judge(candidates).instrument(span).await {
                return;
            }
        }
        // The readers' agreement ends panic mode for a writer that is silent to this
        // process only; never for one that is down (refusing connections, starting up or
        // shutting down): that is a slow failover or a restart, and writer checkouts keep
        // waiting for the promotion.
        if let Some(topology) = agreed
            && !self
                .health
                .get(topology.writer().id())
                .is_some_and(|h| h.down)
        {
            self.settle_without_writer(topology);
        }
    }

    /// Records the writer panic mode settled on while it stays silent (`None`: none), for
    /// the monitor and for the pools' writer checkouts.
    pub(super) fn settle_on(&mut self, silent_writer: Option<String>) {
        self.state.set_writer_silent(silent_writer.is_some());
        self.settled_without = silent_writer;
    }

    /// Takes in one topology read in panic mode; returns it once the reads have said the
    /// same for [`stable_topology_for`] its dialect.
    fn agrees_for_long(&mut self, topology: Topology) -> Option<Topology> {
        let view = Agreement::view_of(&topology);
        match &mut self.agreement {
            Some(agreement) if agreement.view == view => agreement.reads += 1,
            _ => {
                self.agreement = Some(Agreement {
                    view,
                    since: Instant::now(),
                    reads: 1,
                });
            }
        }
        let agreement = self.agreement.as_ref()?;
        let window = stable_topology_for(topology.dialect());
        (agreement.reads >= 3 && agreement.since.elapsed() >= window).then_some(topology)
    }

    /// Leaves panic mode with no writer confirmed: the readers have agreed on the topology
    /// for [`stable_topology_for`] its dialect, so it is accepted as it is (a writer that only this
    /// process cannot reach, a writer too busy to confirm). A writer that the probes
    /// declared dead stays unavailable, and its silence does not start panic mode again
    /// until it answers or the catalog names another writer: without that rule the monitor
    /// would fall back into panic at the next probe, and flap.
    fn settle_without_writer(&mut self, topology: Topology) {
        let elapsed = self.panic_since.map(|t| t.elapsed()).unwrap_or_default();
        self.panic_since = None;
        self.agreement = None;
        if let Some(read) = self.panic_read.take() {
            read.abort();
        }
        let writer = topology.writer().id().to_owned();
        let topology_dialect = topology.dialect();
        let old_writer = self.state.current().writer().id().to_owned();
        self.writer_changed(&old_writer, &writer);
        let silent = self.health.get(&writer).is_none_or(|h| h.dead);
        self.settle_on(silent.then(|| writer.clone()));
        self.failures = 0;
        self.publish_verdict(topology, &writer, "failed", elapsed);
        self.state.set_failing_over(false);
        self.update_plan();
        crate::metrics::failover_ended(&self.state.cluster_id, false, elapsed);
        tracing::warn!(
            target: "aurora_pool",
            cluster_id = %self.state.cluster_id,
            writer,
            writer_answers = !silent,
            elapsed_ms = elapsed.as_millis() as u64,
            stable_for_s = stable_topology_for(topology_dialect).as_secs(),
            "panic mode ended without a confirmed writer: the topology read from the readers has not changed for the stable window"
        );
    }

    /// In panic mode the probes only watch the instances the pool knows: a reader added
    /// since the last poll and then promoted would never be found. So the topology is read,
    /// at most every [`PANIC_READ_EVERY`], from a reachable reader (each in turn), or through
    /// the URL's host when none answers; in a task, so that a silent host holds nothing up.
    pub(super) fn start_panic_read(&mut self) {
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
        let readers: Vec<AdminTarget> = current
            .readers()
            .filter(|r| {
                self.health
                    .get(r.id())
                    .is_some_and(|h| !h.dead && h.writer == Some(false))
            })
            .map(AdminTarget::instance)
            .collect();
        let turn = self.panic_reads;
        self.panic_reads += 1;
        // Every third read goes through the URL's host, and every read when no reader
        // answers: the cluster endpoint follows the new writer in DNS, eventually.
        let address = if readers.is_empty() || turn % 3 == 2 {
            AdminTarget::new(registration.source.seed.clone(), None)
        } else {
            readers[turn % readers.len()].clone()
        };
        self.panic_read_at = Some(Instant::now());
        // A connect and a read, each bounded as the probes' are: a silent URL host (the
        // cluster endpoint still naming the silent writer) must not hold up the reads from
        // the readers for a whole `connect_timeout`.
        let settings = &self.state.settings;
        let limit = probe::read_timeout(
            settings.failure_detection_interval,
            settings.connect_timeout,
        ) * 2;
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
                            error = %format_args!("{err:#}"),
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
    pub(super) fn learn_instances(&mut self, read: &Topology) {
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
    pub(super) async fn judge(&mut self, claimants: Vec<String>) -> bool {
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
        // With routine probing the claimant's probe serves the topology reads once it is
        // adopted, so its own connection confirms it too; otherwise the monitor's own
        // connection, which then stays as the monitoring connection.
        let through_probe = settings.failure_detection_enabled;
        for claimant in claimants {
            let Some(probe) = self.probes.get(&claimant) else {
                continue;
            };
            let state = self.state.clone();
            let (target, reads) = (probe.target.clone(), probe.reads.clone());
            let probe_alive = !probe.task.is_finished();
            confirming.spawn(async move {
                let outcome = if through_probe && probe_alive {
                    confirm::through_probe(reads, limit)
                        .await
                        .map(|topology| (None, topology))
                } else {
                    confirm::candidate(&state, &target, limit)
                        .await
                        .map(|(connection, topology)| (Some(connection), topology))
                };
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
                close_behind(connection);
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
            close_behind(connection);
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
    pub(super) fn writer_changed(&mut self, old_writer: &str, new_writer: &str) {
        if old_writer == new_writer {
            return;
        }
        if self.settled_without.as_deref() == Some(old_writer) {
            self.settle_on(None);
        }
        self.high_rate_until = Some(Instant::now() + HIGH_RATE_WINDOW);
        let old = self.health.entry(old_writer.to_owned()).or_default();
        if old.writer != Some(false) {
            old.dead = true;
        }
    }

    /// Makes `candidate`, confirmed as the writer (through `connection`, or through its
    /// probe's when `None`), the writer of the published topology and leaves panic mode.
    pub(super) fn adopt_writer(
        &mut self,
        candidate: &str,
        connection: Option<Box<dyn AdminConnection>>,
        topology: Topology,
    ) {
        let elapsed = self.panic_since.map(|t| t.elapsed()).unwrap_or_default();
        let old_writer = self.state.current().writer().id().to_owned();
        match connection {
            Some(connection)
                if !(self.state.settings.failure_detection_enabled
                    && self.probes.contains_key(candidate)) =>
            {
                self.monitoring = Some(Monitoring {
                    instance: candidate.to_owned(),
                    connection,
                });
            }
            // Its probe serves the topology reads from now on.
            other => close_behind(other),
        }
        let was_failing_over = self.panic_since.take().is_some();
        self.agreement = None;
        self.settle_on(None);
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
        self.publish_verdict(
            topology.with_writer(candidate),
            candidate,
            "succeeded",
            elapsed,
        );
        self.state.set_failing_over(false);
        self.update_plan();
        if was_failing_over {
            crate::metrics::failover_ended(&self.state.cluster_id, true, elapsed);
        }
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
}

/// Closes a confirming connection in the background: one that goes silent must not hold the
/// monitor.
fn close_behind(connection: Option<Box<dyn AdminConnection>>) {
    if let Some(connection) = connection {
        tokio::spawn(connection.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_global_database_waits_longer_for_agreeing_readers() {
        assert_eq!(
            stable_topology_for(Dialect::GlobalAuroraPg),
            Duration::from_secs(30)
        );
        for regional in [
            Dialect::AuroraPg,
            Dialect::RdsMultiAzPg,
            Dialect::RdsPg,
            Dialect::Pg,
        ] {
            assert_eq!(stable_topology_for(regional), Duration::from_secs(15));
        }
    }
}
