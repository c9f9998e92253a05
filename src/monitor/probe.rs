//! Health probes: one task per instance, each with its own connection, asking
//! `pg_is_in_recovery()` on a schedule the monitor sets. They catch silent failures
//! (black-holed hosts) and role changes, and drive the search for a new writer during a
//! failover.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::MonitorState;
use crate::connector::{AdminConnection, AdminTarget, Purpose, TextRow};
use crate::error::{Error, ErrorClass, Result};
use crate::topology::{IS_READER, Topology, confirm_writer, query_topology};

/// The monitor's topology read, run by the writer's probe on its own connection between two
/// probes: one background connection to the writer, not two. Also the judge's check of a
/// claimant: on the connection whose probe just found it out of recovery, without a new
/// connect (the time a writer's promotion takes to be followed).
pub(super) struct TopologyRead {
    /// Confirm the instance is the writer first (its catalog and `pg_is_in_recovery()`);
    /// one that is not answers [`NOT_THE_WRITER`].
    pub(super) confirm_writer: bool,
    pub(super) reply: oneshot::Sender<Result<Topology>>,
}

/// Why a [`TopologyRead`] that confirms the writer found none.
const NOT_THE_WRITER: &str = "it is not the writer";

/// Sends a [`TopologyRead`] to a probe and waits for its answer, within `limit` (the probe
/// may be in the middle of a probe first): the one way the monitor asks a probe's
/// connection for the topology, confirming the writer first when `confirm_writer` says so.
pub(super) async fn ask(
    reads: &mpsc::Sender<TopologyRead>,
    confirm_writer: bool,
    limit: Duration,
) -> Result<Topology> {
    let (reply, answer) = oneshot::channel();
    let read = async {
        reads
            .send(TopologyRead {
                confirm_writer,
                reply,
            })
            .await
            .map_err(|_| Error::topology("the instance's probe stopped"))?;
        answer
            .await
            .map_err(|_| Error::topology("the instance's probe dropped the read"))?
    };
    tokio::time::timeout(limit, read).await.map_err(|_| {
        Error::timeout(format!(
            "the instance's probe did not read the topology within {limit:?}"
        ))
    })?
}

/// How the probes should run now; published by the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProbePlan {
    /// Probe every instance at this interval (a failover is in progress).
    pub(super) fast: Option<Duration>,
    /// Routine health probing: interval and grace before the first probe.
    pub(super) routine: Option<(Duration, Duration)>,
    /// Instances declared dead: probed at `recheck` even without routine probing, so that
    /// their return is noticed.
    pub(super) dead: BTreeSet<String>,
    pub(super) recheck: Duration,
}

/// What one probe found.
#[derive(Debug)]
pub(super) struct ProbeReport {
    pub(super) instance: String,
    pub(super) at: Instant,
    pub(super) outcome: ProbeOutcome,
}

#[derive(Debug)]
pub(super) enum ProbeOutcome {
    /// Reachable; `writer` is `!pg_is_in_recovery()`.
    Reachable { writer: bool },
    /// Not reachable. `definitive` when the host actively refused or closed the connection
    /// (a crash or restart), as opposed to a timeout (a silent failure).
    Unreachable {
        definitive: bool,
        /// No answer within the probe's time: the next probe runs at once.
        timed_out: bool,
        error: String,
    },
    /// The probe could not ask (no credentials from the provider, every pool gone, a query
    /// error that is not about the connection): it says nothing about the instance.
    Unknown { error: String },
    /// The instance answered but refused the login: a credentials problem, not a dead host.
    LoginRejected { error: String },
    /// The instance answered but would not start a session now (53300 too many connections,
    /// 57P03 starting up, a broken-off TLS handshake): alive, busy.
    Busy {
        error: String,
        /// 57P03: the server is starting up or shutting down (a switchover stops the old
        /// writer cleanly): its state changes within moments, so it is asked again soon.
        changing: bool,
    },
}

/// How soon an instance that is starting up or shutting down, or that just ended the probe's
/// session, is probed again.
const CHANGING_RECHECK: Duration = Duration::from_millis(50);

/// Which outcomes are probed again soon ([`CHANGING_RECHECK`]) instead of after the interval.
#[derive(Debug, Default)]
struct Rechecks {
    /// The last probe failed without timing out.
    lost_before: bool,
}

impl Rechecks {
    /// A server starting up or shutting down, every time; a session or connect the server
    /// ended (57P01 in a switchover's clean shutdown, an end of stream), once, as a
    /// connection closed while idle is: a second such failure in a row waits the interval.
    fn soon_after(&mut self, outcome: &ProbeOutcome) -> bool {
        let lost = matches!(
            outcome,
            ProbeOutcome::Unreachable {
                timed_out: false,
                ..
            }
        );
        let soon = matches!(outcome, ProbeOutcome::Busy { changing: true, .. })
            || (lost && !self.lost_before);
        self.lost_before = lost;
        soon
    }
}

/// What a probe task does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing until the plan changes.
    Idle,
    /// Sleep this long first (the grace period before routine probing).
    Wait(Duration),
    /// Probe now, then again after this interval.
    Probe(Duration),
}

impl ProbePlan {
    fn step(&self, instance: &str, since_start: Duration) -> Step {
        if let Some(fast) = self.fast {
            return Step::Probe(fast);
        }
        if self.dead.contains(instance) {
            return Step::Probe(self.recheck);
        }
        match self.routine {
            None => Step::Idle,
            Some((_, grace)) if since_start < grace => Step::Wait(grace - since_start),
            Some((interval, _)) => Step::Probe(interval),
        }
    }
}

/// Bound on one probe: twice the interval, at least half a second, at most the connect
/// timeout. A silent instance is declared dead `failure_detection_count` timeouts after its
/// last answer (the probes after a timeout run at once).
pub(crate) fn probe_timeout(interval: Duration, connect_timeout: Duration) -> Duration {
    (interval * 2)
        .max(MIN_PROBE_TIMEOUT)
        .min(connect_timeout.max(MIN_PROBE_TIMEOUT))
}

/// How long a topology read on an open connection may take. The catalog query is heavier
/// than a probe's: a loaded instance gets more time for it than for a probe, and only then
/// does its silence count as an unanswered probe.
pub(crate) fn read_timeout(interval: Duration, connect_timeout: Duration) -> Duration {
    probe_timeout(interval, connect_timeout)
        .max(MIN_READ_TIMEOUT)
        .min(connect_timeout.max(MIN_PROBE_TIMEOUT))
}

/// A topology read on a probe's connection is given at least this long.
const MIN_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// No probe is given less than this to answer: a fresh connection needs a TCP, TLS and
/// SCRAM exchange, and a loaded but healthy instance must not be declared dead.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Each pause between probes is the interval stretched or shrunk by up to this fraction, and
/// a probe task starts at a random point of its first interval, so that many processes do
/// not probe an instance in lockstep.
const JITTER: f64 = 0.1;

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * fastrand::f64())
}

/// Longest pause between the reconnects of an instance's probe that goes on timing out.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// The pause after `timeouts` unanswered probes in a row. Until the verdict (`count` of
/// them) the next probe runs at once: the verdict should not wait an interval more. After
/// it, each reconnect waits twice as long as the one before, from the interval up to
/// [`MAX_RECONNECT_PAUSE`], jittered: a slow but alive instance (a false verdict) must not
/// receive a new session every probe timeout from every process, and many processes must
/// not reconnect in step.
fn pause_after_timeouts(timeouts: u32, count: u32, interval: Duration) -> Duration {
    if timeouts < count.max(1) {
        return Duration::ZERO;
    }
    let doublings = (timeouts - count.max(1)).min(8);
    jittered(
        interval
            .saturating_mul(1 << doublings)
            .min(MAX_RECONNECT_PAUSE),
    )
}

/// Probes `instance` at `target` until the plan channel closes (the monitor stopped).
///
/// Between probes it watches its connection: when the server ends it (a crash sends RST or
/// FIN), it probes at once instead of at the next interval. A probe that timed out is
/// followed at once by another on a new connection until the instance is declared dead, then
/// after a growing pause ([`pause_after_timeouts`]).
pub(super) async fn run(
    state: Arc<MonitorState>,
    instance: String,
    target: AdminTarget,
    mut plan: watch::Receiver<ProbePlan>,
    reports: mpsc::Sender<ProbeReport>,
    mut reads: mpsc::Receiver<TopologyRead>,
) {
    let started = Instant::now();
    let mut connection: Option<Box<dyn AdminConnection>> = None;
    // Unanswered probes in a row: each opens a new connection.
    let mut timeouts = 0u32;
    let mut rechecks = Rechecks::default();
    // A random start spreads the probes of many processes over the interval.
    let first = plan.borrow().routine.map(|(interval, _)| interval);
    if let Some(interval) = first.filter(|_| plan.borrow().fast.is_none()) {
        let offset = interval.mul_f64(fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(offset) => {}
            _ = plan.changed() => {}
        }
    }
    loop {
        let step = plan.borrow_and_update().step(&instance, started.elapsed());
        let pause = match step {
            Step::Idle => None,
            Step::Wait(pause) => Some(pause),
            Step::Probe(interval) => {
                let timeout = probe_timeout(interval, state.settings.connect_timeout);
                let outcome = probe_once(&state, &target, &mut connection, timeout).await;
                let timed_out = matches!(
                    outcome,
                    ProbeOutcome::Unreachable {
                        timed_out: true,
                        ..
                    }
                );
                let recheck_soon = rechecks.soon_after(&outcome);
                let report = ProbeReport {
                    instance: instance.clone(),
                    at: Instant::now(),
                    outcome,
                };
                if reports.send(report).await.is_err() {
                    break;
                }
                timeouts = if timed_out {
                    timeouts.saturating_add(1)
                } else {
                    0
                };
                Some(match (timed_out, recheck_soon) {
                    (true, _) => pause_after_timeouts(
                        timeouts,
                        state.settings.failure_detection_count,
                        interval,
                    ),
                    (false, true) => jittered(interval).min(CHANGING_RECHECK),
                    (false, false) => jittered(interval),
                })
            }
        };
        // Waits out the pause (or, idle, for a new plan), serving the monitor's topology
        // reads meanwhile, and probes at once when the server ends the connection.
        let until = pause.map(|pause| tokio::time::Instant::now() + pause);
        let go_on = loop {
            let closed = async {
                match connection.as_mut() {
                    Some(conn) => conn.closed().await,
                    None => std::future::pending().await,
                }
            };
            let slept = async {
                match until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = slept => break true,
                _ = closed => {
                    connection = None;
                    break true;
                }
                changed = plan.changed() => break changed.is_ok(),
                Some(read) = reads.recv() => {
                    let interval = plan
                        .borrow()
                        .routine
                        .map_or(state.settings.failure_detection_interval, |(i, _)| i);
                    let timeout = read_timeout(interval, state.settings.connect_timeout);
                    let answer = read_topology(
                        &state,
                        &target,
                        &mut connection,
                        timeout,
                        read.confirm_writer,
                    )
                    .await;
                    let timed_out = answer.as_ref().is_err_and(Error::is_timeout);
                    let _ = read.reply.send(answer);
                    if timed_out {
                        // As an unanswered probe: the verdict on a silent writer keeps its
                        // schedule whether a probe or a read met the silence.
                        let report = ProbeReport {
                            instance: instance.clone(),
                            at: Instant::now(),
                            outcome: ProbeOutcome::Unreachable {
                                definitive: false,
                                timed_out: true,
                                error: format!("no answer to a topology read within {timeout:?}"),
                            },
                        };
                        break reports.send(report).await.is_ok();
                    }
                }
            }
        };
        if !go_on {
            break;
        }
    }
    if let Some(connection) = connection.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
    }
}

/// Reads the topology on the probe's connection (opening one if needed) within `timeout`,
/// having confirmed the instance is the writer first when `confirm` says so; a broken or
/// silent connection is dropped.
async fn read_topology(
    state: &MonitorState,
    target: &AdminTarget,
    connection: &mut Option<Box<dyn AdminConnection>>,
    timeout: Duration,
    confirm: bool,
) -> Result<Topology> {
    let registration = state.registration().ok_or_else(Error::closed)?;
    if connection.is_none() {
        // As for a probe: the provider's time is not the instance's.
        credentials_ready(state, target).await?;
    }
    let read = async {
        let conn = connected(state, target, connection).await?;
        if confirm && !confirm_writer(conn, registration.source.dialect).await? {
            return Err(Error::topology(NOT_THE_WRITER));
        }
        query_topology(conn, &registration.source).await
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(topology)) => Ok(topology),
        Ok(Err(err)) => {
            if err.class() == ErrorClass::Network || err.is_connect() {
                *connection = None;
            }
            Err(err)
        }
        Err(_) => {
            *connection = None;
            Err(Error::timeout(format!(
                "the topology read on {target} took longer than {timeout:?}"
            )))
        }
    }
}

/// Asks the provider for the instance's credentials before a timed connect (providers cache
/// them): a provider that hangs or fails must not look like a silent instance.
async fn credentials_ready(state: &MonitorState, target: &AdminTarget) -> Result<()> {
    let registration = state.registration().ok_or_else(Error::closed)?;
    let limit = state.settings.connect_timeout;
    tokio::time::timeout(limit, registration.connector.prepare(target))
        .await
        .unwrap_or_else(|_| {
            Err(Error::credentials(format!(
                "the credential provider gave nothing for {target} within {limit:?}"
            )))
        })
}

/// Runs the probe query, connecting first when there is no connection.
async fn ask_is_reader(
    state: &MonitorState,
    target: &AdminTarget,
    connection: &mut Option<Box<dyn AdminConnection>>,
) -> Result<Vec<TextRow>> {
    connected(state, target, connection)
        .await?
        .query(IS_READER)
        .await
}

/// The probe's connection, opened first when there is none.
async fn connected<'c>(
    state: &MonitorState,
    target: &AdminTarget,
    connection: &'c mut Option<Box<dyn AdminConnection>>,
) -> Result<&'c mut (dyn AdminConnection + 'static)> {
    if connection.is_none() {
        let registration = state.registration().ok_or_else(Error::closed)?;
        *connection = Some(
            registration
                .connector
                .connect(target, Purpose::Probe)
                .await?,
        );
    }
    connection.as_deref_mut().ok_or_else(Error::closed)
}

/// What a probe that failed with `err` says of its instance.
fn outcome_of_failure(err: Error) -> ProbeOutcome {
    let error = format!("{err:#}");
    if err.class() == ErrorClass::Login {
        return ProbeOutcome::LoginRejected { error };
    }
    if err.is_busy() {
        let changing = err.sqlstate() == Some("57P03");
        return ProbeOutcome::Busy { error, changing };
    }
    let network = err.class() == ErrorClass::Network || err.is_connect() || err.is_timeout();
    if err.is_credentials() || err.is_closed() || !network {
        return ProbeOutcome::Unknown { error };
    }
    ProbeOutcome::Unreachable {
        // A refusal or a close is proof; a failed name lookup is not (DNS fails on its
        // own, and the instance may be fine).
        definitive: err.is_refused_or_closed() && !err.is_timeout(),
        timed_out: err.is_timeout(),
        error,
    }
}

async fn probe_once(
    state: &MonitorState,
    target: &AdminTarget,
    connection: &mut Option<Box<dyn AdminConnection>>,
    timeout: Duration,
) -> ProbeOutcome {
    if connection.is_none()
        && let Err(err) = credentials_ready(state, target).await
    {
        // No credentials to log in with: nothing is known about the instance.
        return ProbeOutcome::Unknown {
            error: format!("{err:#}"),
        };
    }
    let attempt = async {
        let reused = connection.is_some();
        match ask_is_reader(state, target, connection).await {
            // A connection the server ended (an administrator, an idle-session limit) says
            // nothing about the instance: only a new connection can.
            Err(err) if reused && err.is_connect() => {
                *connection = None;
                ask_is_reader(state, target, connection).await
            }
            other => other,
        }
    };
    let dialect = state.current().dialect();
    let result = tokio::time::timeout(timeout, attempt)
        .await
        .map(|answer| answer.map_err(|err| dialect.read_error(err)));
    match result {
        Ok(Ok(rows)) => {
            let in_recovery = rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.as_deref());
            ProbeOutcome::Reachable {
                writer: matches!(in_recovery, Some("f" | "false")),
            }
        }
        Ok(Err(err)) => {
            // A failed probe's connection is never reused.
            *connection = None;
            outcome_of_failure(err)
        }
        Err(_) => {
            // A hung connection is dropped, never reused.
            *connection = None;
            ProbeOutcome::Unreachable {
                definitive: false,
                timed_out: true,
                error: format!("no answer within {timeout:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only proof makes a failed probe definitive: a refused or reset connection; a name
    /// that did not resolve is one missed probe (issue 24, item 7).
    #[test]
    fn a_failed_name_lookup_is_no_proof_of_death() {
        let connect = |kind: std::io::ErrorKind, text: &str| {
            Error::connect("connecting to instance-1:5432 failed")
                .with_source(std::io::Error::new(kind, text.to_owned()))
        };
        let definitive = |err: Error| match outcome_of_failure(err) {
            ProbeOutcome::Unreachable { definitive, .. } => definitive,
            other => panic!("not unreachable: {other:?}"),
        };
        assert!(definitive(connect(
            std::io::ErrorKind::ConnectionRefused,
            "refused"
        )));
        assert!(definitive(connect(
            std::io::ErrorKind::ConnectionReset,
            "reset"
        )));
        assert!(!definitive(connect(
            std::io::ErrorKind::Other,
            "failed to lookup address information: Name or service not known"
        )));
        assert!(!definitive(Error::timeout("no answer")));
        let login =
            Error::driver("password authentication failed").with_sqlstate(Some("28P01".into()));
        assert!(matches!(
            outcome_of_failure(login),
            ProbeOutcome::LoginRejected { .. }
        ));
        // A server starting up or shutting down is asked again soon; a full one is not.
        let busy = |sqlstate: &str| {
            outcome_of_failure(Error::driver("busy").with_sqlstate(Some(sqlstate.into())))
        };
        assert!(matches!(
            busy("57P03"),
            ProbeOutcome::Busy { changing: true, .. }
        ));
        assert!(matches!(
            busy("53300"),
            ProbeOutcome::Busy {
                changing: false,
                ..
            }
        ));
    }

    fn plan() -> ProbePlan {
        ProbePlan {
            fast: None,
            routine: Some((Duration::from_secs(5), Duration::from_secs(30))),
            dead: BTreeSet::new(),
            recheck: Duration::from_secs(1),
        }
    }

    #[test]
    fn reconnects_back_off_after_the_verdict() {
        let interval = Duration::from_millis(500);
        // Until the verdict (2 unanswered probes), at once.
        assert_eq!(pause_after_timeouts(1, 2, interval), Duration::ZERO);
        let within = |pause: Duration, nominal: Duration| {
            pause >= nominal.mul_f64(1.0 - JITTER) && pause <= nominal.mul_f64(1.0 + JITTER)
        };
        assert!(within(pause_after_timeouts(2, 2, interval), interval));
        assert!(within(pause_after_timeouts(3, 2, interval), interval * 2));
        for timeouts in 4..100 {
            let pause = pause_after_timeouts(timeouts, 2, interval);
            assert!(
                pause <= MAX_RECONNECT_PAUSE.mul_f64(1.0 + JITTER),
                "{timeouts}: {pause:?}"
            );
        }
        // Jittered: many processes do not reconnect in step.
        let pauses: BTreeSet<Duration> = (0..20)
            .map(|_| pause_after_timeouts(5, 2, interval))
            .collect();
        assert!(pauses.len() > 1);
    }

    #[test]
    fn routine_probing_waits_for_the_grace_period() {
        let p = plan();
        assert_eq!(
            p.step("a", Duration::from_secs(10)),
            Step::Wait(Duration::from_secs(20))
        );
        assert_eq!(
            p.step("a", Duration::from_secs(31)),
            Step::Probe(Duration::from_secs(5))
        );
    }

    #[test]
    fn failover_and_dead_instances_override_the_routine() {
        let mut p = plan();
        p.dead.insert("a".into());
        assert_eq!(
            p.step("a", Duration::ZERO),
            Step::Probe(Duration::from_secs(1))
        );
        p.fast = Some(Duration::from_millis(100));
        assert_eq!(
            p.step("b", Duration::ZERO),
            Step::Probe(Duration::from_millis(100))
        );
        p.fast = None;
        p.routine = None;
        assert_eq!(
            p.step("b", Duration::ZERO),
            Step::Idle,
            "no routine probing when disabled"
        );
        assert_eq!(
            p.step("a", Duration::ZERO),
            Step::Probe(Duration::from_secs(1))
        );
    }

    #[test]
    fn probe_timeouts_are_bounded() {
        assert_eq!(
            probe_timeout(Duration::from_millis(100), Duration::from_secs(10)),
            Duration::from_millis(500)
        );
        assert_eq!(
            probe_timeout(Duration::from_millis(500), Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            probe_timeout(Duration::from_secs(60), Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..1000 {
            let pause = jittered(Duration::from_millis(1000));
            assert!(pause >= Duration::from_millis(900) && pause <= Duration::from_millis(1100));
        }
    }

    #[test]
    fn an_ended_session_is_probed_again_soon_once() {
        let lost = || ProbeOutcome::Unreachable {
            definitive: false,
            timed_out: false,
            error: "terminating connection due to administrator command".into(),
        };
        let mut rechecks = Rechecks::default();
        assert!(rechecks.soon_after(&lost()), "first loss: soon");
        assert!(
            !rechecks.soon_after(&lost()),
            "second loss in a row: the interval"
        );
        assert!(!rechecks.soon_after(&ProbeOutcome::Reachable { writer: false }));
        assert!(
            rechecks.soon_after(&lost()),
            "a loss after an answer: soon again"
        );
        let silent = ProbeOutcome::Unreachable {
            definitive: false,
            timed_out: true,
            error: "no answer".into(),
        };
        assert!(
            !rechecks.soon_after(&silent),
            "a timeout has its own schedule"
        );
        let changing = || ProbeOutcome::Busy {
            error: "the database system is shutting down".into(),
            changing: true,
        };
        assert!(rechecks.soon_after(&changing()));
        assert!(
            rechecks.soon_after(&changing()),
            "starting up or shutting down: every time"
        );
    }
}
