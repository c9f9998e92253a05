//! What the health probes report, and what the monitor makes of it: an instance's health,
//! when it is declared dead, and which reports start panic mode or a verdict.

use std::time::Instant;

use super::Monitor;
use crate::monitor::probe::{ProbeOutcome, ProbeReport};

/// What the probes told about one instance.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// When the current run of failed probes began.
    pub(super) failing_since: Option<Instant>,
    /// Failed probes in a row.
    pub(super) failures: u32,
    pub(super) dead: bool,
    /// The last probe was refused or reset, or answered that the server is starting up or
    /// shutting down (the instance is down: crashed, restarting, stopping), not left
    /// unanswered (silent to this process only, perhaps).
    pub(super) down: bool,
    /// The role the last successful probe saw.
    pub(super) writer: Option<bool>,
    /// The last probe's login was refused.
    pub(super) login_rejected: bool,
    /// When the instance left the topology. A dead instance's verdict is kept for a while
    /// after it left: a catalog read mid-failover can drop the old writer's row and the
    /// next one bring it back, and it must not come back as a healthy reader.
    pub(super) departed: Option<Instant>,
}

impl Monitor {
    pub(super) fn on_report(&mut self, report: ProbeReport) {
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
        let mut silent_writer_answered = false;
        match report.outcome {
            ProbeOutcome::Reachable { writer } => {
                health.failing_since = None;
                health.failures = 0;
                health.down = false;
                health.login_rejected = false;
                health.writer = Some(writer);
                // An instance back as a second writer is no usable reader: it stays out of
                // the routing until judged (or until it answers as a reader).
                let second_writer = writer && !is_writer;
                // The silent writer panic mode settled on answers: the usual rules hold
                // for it again (applied below, once `health` is let go).
                silent_writer_answered =
                    self.settled_without.as_deref() == Some(report.instance.as_str());
                if health.dead && !second_writer {
                    health.dead = false;
                    health_changed = true;
                    crate::metrics::instance_up(&self.state.cluster_id, &report.instance);
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
                    error = %format_args!("{error:#}"),
                    "health probe could not run"
                );
            }
            ProbeOutcome::Busy { error, changing } => {
                // Alive: full, starting up, or mid-handshake. Never declared dead for it.
                health.failing_since = None;
                health.failures = 0;
                health.down = changing;
                if changing {
                    // Starting up or shutting down (57P03): its role is unknown until it
                    // answers, and a writer in either state takes no writes. The monitor
                    // looks for the writer at once (a switchover stops the old writer
                    // cleanly, and its shutdown may take a while); a writer that comes back
                    // is judged as any claimant.
                    health.writer = None;
                    if is_writer && self.panic_since.is_none() {
                        panic_reason = Some(format!(
                            "writer {} is starting up or shutting down: {error:#}",
                            report.instance
                        ));
                    }
                }
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %self.state.cluster_id,
                    instance = %report.instance,
                    error = %format_args!("{error:#}"),
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
                        error = %format_args!("{error:#}"),
                        "health probe login rejected: check the pool's credentials"
                    );
                }
            }
            ProbeOutcome::Unreachable {
                definitive, error, ..
            } => {
                health.writer = None;
                health.down = definitive;
                let since = *health.failing_since.get_or_insert(report.at);
                health.failures = health.failures.saturating_add(1);
                if !health.dead
                    && (definitive || health.failures >= settings.failure_detection_count)
                {
                    health.dead = true;
                    health_changed = true;
                    crate::metrics::instance_down(
                        &self.state.cluster_id,
                        &report.instance,
                        report.at.duration_since(since),
                    );
                    tracing::warn!(
                        target: "aurora_pool",
                        cluster_id = %self.state.cluster_id,
                        instance = %report.instance,
                        failing_for_ms = report.at.duration_since(since).as_millis() as u64,
                        error = %format_args!("{error:#}"),
                        "instance declared unreachable"
                    );
                }
                // A writer panic mode settled on while it was silent: its silence is known.
                let settled = self.settled_without.as_deref() == Some(report.instance.as_str());
                if health.dead && is_writer && self.panic_since.is_none() && !settled {
                    panic_reason = Some(format!(
                        "writer {} is unreachable: {error:#}",
                        report.instance
                    ));
                }
            }
        }
        if silent_writer_answered {
            self.settle_on(None);
        }
        if health_changed {
            self.republish();
        }
        if let Some(reason) = panic_reason {
            self.enter_panic(&reason);
        }
    }
}
