//! The crate's metrics through the `metrics` facade (feature `metrics`), each labelled with
//! the `cluster_id`: the monitor's (failovers, instance verdicts, topology reads, replica
//! lag), the pools' (connection gauges sampled every second, checkout waits and pending
//! checkouts, recovery after a failover, credentials, unknown outcomes). Users install the
//! recorder they already run (Prometheus, OpenTelemetry). Without the feature every function
//! here is empty; with it and no recorder installed each is a call into the facade's no-op
//! recorder, its labels built first. On the checkout path only `acquire`, `run` and
//! `transaction` record (their wait and the pending checkout; `run` and `transaction` their
//! use time too): the `PgPool` handles record nothing per checkout. The deadpool manager
//! records each new connection's create time.

use std::time::Duration;

/// The monitor began searching for a new writer.
pub(crate) fn failover_started(cluster_id: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("aurora_pool.failovers.started", "cluster_id" => cluster_id.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = cluster_id;
}

/// The search for a writer ended after `took`: with a confirmed writer (`succeeded`), or
/// without one (the readers agreed on a writer that stays silent).
pub(crate) fn failover_ended(cluster_id: &str, succeeded: bool, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let (counter, outcome) = match succeeded {
            true => ("aurora_pool.failovers.succeeded", "succeeded"),
            false => ("aurora_pool.failovers.failed", "failed"),
        };
        metrics::counter!(counter, "cluster_id" => cluster_id.to_owned()).increment(1);
        metrics::histogram!(
            "aurora_pool.failover.duration",
            "cluster_id" => cluster_id.to_owned(),
            "outcome" => outcome
        )
        .record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, succeeded, took);
}

/// `instance` was declared unreachable, `detection` after its first failed probe.
pub(crate) fn instance_down(cluster_id: &str, instance: &str, detection: Duration) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            ("cluster_id", cluster_id.to_owned()),
            ("instance", instance.to_owned()),
        ];
        metrics::counter!("aurora_pool.instances.down", &labels).increment(1);
        metrics::histogram!("aurora_pool.instance.detection_time", &labels)
            .record(detection.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, instance, detection);
}

/// `instance`, declared unreachable before, answered again.
pub(crate) fn instance_up(cluster_id: &str, instance: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "aurora_pool.instances.up",
        "cluster_id" => cluster_id.to_owned(),
        "instance" => instance.to_owned()
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, instance);
}

/// The monitor read the topology in `took`; `forced` when a pool asked for the read (a
/// query failed in a way that may mean the topology changed).
pub(crate) fn topology_read(cluster_id: &str, took: Duration, forced: bool) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(
            "aurora_pool.topology.reads",
            "cluster_id" => cluster_id.to_owned(),
            "forced" => if forced { "true" } else { "false" }
        )
        .increment(1);
        metrics::histogram!(
            "aurora_pool.topology.read_time",
            "cluster_id" => cluster_id.to_owned()
        )
        .record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, took, forced);
}

/// The replica lag gauges of one cluster (`aurora_pool.replica.lag`, seconds): each reader's
/// lag as the topology just read reports it (a reader that reports none is left out); an
/// instance reported before that is now the writer, or gone, is reported at zero once.
#[derive(Debug, Default)]
pub(crate) struct LagGauges {
    #[cfg(feature = "metrics")]
    reported: std::collections::BTreeSet<String>,
}

impl LagGauges {
    pub(crate) fn report(&mut self, cluster_id: &str, topology: &crate::Topology) {
        #[cfg(feature = "metrics")]
        {
            let set = |instance: &str, seconds: f64| {
                metrics::gauge!(
                    "aurora_pool.replica.lag",
                    "cluster_id" => cluster_id.to_owned(),
                    "instance" => instance.to_owned()
                )
                .set(seconds);
            };
            let mut now = std::collections::BTreeSet::new();
            for instance in topology.instances() {
                if instance.role() != crate::Role::Reader {
                    continue;
                }
                if let Some(lag_ms) = instance.replica_lag_ms() {
                    set(instance.id(), lag_ms / 1000.0);
                    now.insert(instance.id().to_owned());
                }
            }
            for gone in self.reported.difference(&now) {
                set(gone, 0.0);
            }
            self.reported = now;
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (cluster_id, topology);
    }
}

/// A pool's first connection on its new writer, `took` after the pool was pointed there
/// (the monitor's verdict reaches every pool within milliseconds): the failover's recovery.
pub(crate) fn recovered(cluster_id: &str, took: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(
        "aurora_pool.failover.recovery_time",
        "cluster_id" => cluster_id.to_owned()
    )
    .record(took.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, took);
}

/// A connection was lost after work was sent on it, and the work was not run again: its
/// outcome is unknown to the caller.
pub(crate) fn outcome_unknown(cluster_id: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("aurora_pool.outcomes.unknown", "cluster_id" => cluster_id.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = cluster_id;
}

/// What happened to the credentials of `instance`'s pool: `renewed` (new credentials were
/// fetched, on schedule or after a refusal) or `refused` (a login with them was refused).
pub(crate) fn credentials(cluster_id: &str, instance: &str, event: CredentialEvent) {
    #[cfg(feature = "metrics")]
    {
        let name = match event {
            CredentialEvent::Renewed => "aurora_pool.credentials.renewals",
            CredentialEvent::Refused => "aurora_pool.credentials.refused",
        };
        metrics::counter!(
            name,
            "cluster_id" => cluster_id.to_owned(),
            "instance" => instance.to_owned()
        )
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, instance, event);
}

/// See [`credentials`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum CredentialEvent {
    Renewed,
    Refused,
}

/// The Secrets Manager provider served its last secret, past its expiry, while Secrets
/// Manager could not be reached.
#[cfg(feature = "secrets-manager")]
pub(crate) fn stale_secret_served() {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "aurora_pool.credentials.stale_served",
        "provider" => "secrets_manager"
    )
    .increment(1);
}

/// A custom endpoint's members were read (`changed`: they differ from the last read).
#[cfg(feature = "custom-endpoint")]
pub(crate) fn custom_endpoint_refreshed(endpoint: &str, changed: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "aurora_pool.custom_endpoint.refreshes",
        "endpoint" => endpoint.to_owned(),
        "changed" => if changed { "true" } else { "false" }
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (endpoint, changed);
}

/// The pools' connection gauges, after the OpenTelemetry semantic conventions for database
/// client connection pools: `db.client.connection.count` (`db.client.connection.state` =
/// `idle` / `used`) and `db.client.connection.max`, per pool: each instance's pool (the
/// writer's is what `writer()` hands out) and the readers' pool behind `reader()`. Sampled
/// from the pool's status; a pool that went away is reported at zero once.
#[cfg(feature = "metrics")]
#[derive(Debug, Default)]
pub(crate) struct PoolGauges {
    /// The pools reported last time: their names, with the labels they were reported with.
    reported: Vec<(String, Vec<(&'static str, String)>)>,
}

#[cfg(feature = "metrics")]
impl PoolGauges {
    /// Reports `status` of the pools of `cluster_id`.
    pub(crate) fn report(&mut self, cluster_id: &str, status: &crate::PoolStatus) {
        let mut now = Vec::new();
        for pool in &status.instances {
            now.push((
                format!("{cluster_id}/{}", pool.instance_id),
                vec![
                    ("cluster_id", cluster_id.to_owned()),
                    ("instance", pool.instance_id.clone()),
                    ("role", pool.role.to_string()),
                ],
                (pool.size, pool.idle, pool.max_connections),
            ));
        }
        now.push((
            format!("{cluster_id}/reads"),
            vec![
                ("cluster_id", cluster_id.to_owned()),
                ("instance", status.reads.instance_ids.join(",")),
                ("role", "reads".to_owned()),
            ],
            (
                status.reads.size,
                status.reads.idle,
                status.reads.max_connections,
            ),
        ));
        for (name, labels) in &self.reported {
            if !now.iter().any(|(n, ..)| n == name) {
                set_pool_gauges(name, labels, (0, 0, 0));
            }
        }
        self.reported = now
            .into_iter()
            .map(|(name, labels, figures)| {
                set_pool_gauges(&name, &labels, figures);
                (name, labels)
            })
            .collect();
    }

    /// Reports every pool reported before at zero: the pool closed.
    pub(crate) fn clear(&mut self) {
        for (name, labels) in self.reported.drain(..) {
            set_pool_gauges(&name, &labels, (0, 0, 0));
        }
    }
}

#[cfg(feature = "metrics")]
fn set_pool_gauges(
    name: &str,
    labels: &[(&'static str, String)],
    (size, idle, max): (u32, u32, u32),
) {
    #[cfg(feature = "metrics")]
    {
        let mut labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone()))
            .collect();
        labels.push(metrics::Label::new(
            "db.client.connection.pool.name",
            name.to_owned(),
        ));
        metrics::gauge!("db.client.connection.max", labels.clone()).set(f64::from(max));
        for (state, count) in [("idle", idle), ("used", size.saturating_sub(idle))] {
            let mut labels = labels.clone();
            labels.push(metrics::Label::new("db.client.connection.state", state));
            metrics::gauge!("db.client.connection.count", labels).set(f64::from(count));
        }
    }
}

/// A checkout through `acquire`, `run` or `transaction` for `role` got a connection of
/// `instance` after `waited`, or (`instance` `None`) gave up after it: the wait goes to
/// `db.client.connection.wait_time`, a give-up to `db.client.connection.timeouts` too.
#[cfg(feature = "metrics")]
pub(crate) fn checkout(
    cluster_id: &str,
    role: crate::Role,
    instance: Option<&str>,
    waited: Duration,
) {
    #[cfg(feature = "metrics")]
    {
        let pool = match instance {
            Some(instance) => format!("{cluster_id}/{instance}"),
            None => format!("{cluster_id}/{role}"),
        };
        let labels = [
            ("cluster_id", cluster_id.to_owned()),
            ("role", role.to_string()),
            ("db.client.connection.pool.name", pool),
        ];
        metrics::histogram!("db.client.connection.wait_time", &labels).record(waited.as_secs_f64());
        if instance.is_none() {
            metrics::counter!("db.client.connection.timeouts", &labels).increment(1);
        }
    }
}

/// A new connection of a `role` pool to `instance` was ready `took` after its connect began
/// (logged in, and confirmed the writer where its pool checks that).
pub(crate) fn connection_created(
    cluster_id: &str,
    instance: &str,
    role: crate::Role,
    took: Duration,
) {
    #[cfg(feature = "metrics")]
    connection_histogram(
        "db.client.connection.create_time",
        cluster_id,
        instance,
        role,
        took,
    );
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, instance, role, took);
}

/// `run` or `transaction` held a connection to `instance` for `took`, from its checkout to
/// its release (one sample per attempt).
pub(crate) fn connection_used(cluster_id: &str, instance: &str, role: crate::Role, took: Duration) {
    #[cfg(feature = "metrics")]
    connection_histogram(
        "db.client.connection.use_time",
        cluster_id,
        instance,
        role,
        took,
    );
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, instance, role, took);
}

/// Records `took` in the histogram `name` of a connection to `instance`.
#[cfg(feature = "metrics")]
fn connection_histogram(
    name: &'static str,
    cluster_id: &str,
    instance: &str,
    role: crate::Role,
    took: Duration,
) {
    metrics::histogram!(name, &instance_labels(cluster_id, instance, role))
        .record(took.as_secs_f64());
}

/// The labels of a connection to `instance`, of a pool of `role`: its pool is named after
/// the instance.
#[cfg(feature = "metrics")]
fn instance_labels(
    cluster_id: &str,
    instance: &str,
    role: crate::Role,
) -> [(&'static str, String); 4] {
    [
        ("cluster_id", cluster_id.to_owned()),
        ("instance", instance.to_owned()),
        ("role", role.to_string()),
        (
            "db.client.connection.pool.name",
            format!("{cluster_id}/{instance}"),
        ),
    ]
}

/// A checkout through `acquire`, `run` or `transaction` waiting for a connection, counted
/// in `db.client.connection.pending_requests` while it lives: dropped when the checkout
/// ends, however it ends (a caller that gives up drops it too).
#[cfg(feature = "metrics")]
pub(crate) struct Pending(metrics::Gauge);

#[cfg(feature = "metrics")]
impl Pending {
    pub(crate) fn start(cluster_id: &str, role: crate::Role) -> Pending {
        let gauge = metrics::gauge!(
            "db.client.connection.pending_requests",
            "cluster_id" => cluster_id.to_owned(),
            "role" => role.to_string(),
            "db.client.connection.pool.name" => format!("{cluster_id}/{role}")
        );
        gauge.increment(1.0);
        Pending(gauge)
    }
}

#[cfg(feature = "metrics")]
impl Drop for Pending {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::PoolGauges;
    use crate::topology::Role;
    use crate::{InstanceStatus, PoolStatus, ReadsStatus};

    fn status(instances: &[(&str, Role, u32, u32)]) -> PoolStatus {
        PoolStatus {
            topology_version: 1,
            through_proxy: false,
            instances: instances
                .iter()
                .map(|&(id, role, size, idle)| InstanceStatus {
                    instance_id: id.to_owned(),
                    role,
                    address: "127.0.0.1:5432".to_owned(),
                    size,
                    idle,
                    max_connections: 10,
                })
                .collect(),
            reads: ReadsStatus {
                instance_ids: vec!["instance-2".to_owned()],
                size: 1,
                idle: 1,
                max_connections: 10,
            },
        }
    }

    type Gauges = Vec<(String, String, Option<String>, f64)>;

    /// Every gauge as it stands (pool, name, state, value); reading drains them all.
    fn read(snapshotter: &metrics_util::debugging::Snapshotter) -> Gauges {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let key = key.key();
                let label = |name: &str| {
                    key.labels()
                        .find(|l| l.key() == name)
                        .map(|l| l.value().to_owned())
                };
                let DebugValue::Gauge(value) = value else {
                    return None;
                };
                Some((
                    label("db.client.connection.pool.name")?,
                    key.name().to_owned(),
                    label("db.client.connection.state"),
                    value.into_inner(),
                ))
            })
            .collect()
    }

    /// The gauges of `pool` in `all`: (name, state, value), sorted.
    fn of(all: &Gauges, pool: &str) -> Vec<(String, Option<String>, f64)> {
        let mut found: Vec<_> = all
            .iter()
            .filter(|(p, ..)| p == pool)
            .map(|(_, name, state, value)| (name.clone(), state.clone(), *value))
            .collect();
        found.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
        found
    }

    #[test]
    fn gauges_follow_the_pools_and_go_to_zero_with_them() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let mut gauges = PoolGauges::default();
            gauges.report("c", &status(&[("instance-1", Role::Writer, 3, 1)]));
            let expected = |used: f64, idle: f64, max: f64| {
                vec![
                    (
                        "db.client.connection.count".to_owned(),
                        Some("idle".to_owned()),
                        idle,
                    ),
                    (
                        "db.client.connection.count".to_owned(),
                        Some("used".to_owned()),
                        used,
                    ),
                    ("db.client.connection.max".to_owned(), None, max),
                ]
            };
            let all = read(&snapshotter);
            assert_eq!(of(&all, "c/instance-1"), expected(2.0, 1.0, 10.0));
            assert_eq!(of(&all, "c/reads"), expected(0.0, 1.0, 10.0));
            // instance-1 leaves the routes (set again first: reading drained it).
            gauges.report("c", &status(&[("instance-1", Role::Writer, 3, 1)]));
            gauges.report("c", &status(&[("instance-2", Role::Writer, 1, 0)]));
            let all = read(&snapshotter);
            assert_eq!(of(&all, "c/instance-1"), expected(0.0, 0.0, 0.0));
            assert_eq!(of(&all, "c/instance-2"), expected(1.0, 0.0, 10.0));
            // The pool closes.
            gauges.report("c", &status(&[("instance-2", Role::Writer, 1, 0)]));
            gauges.clear();
            assert_eq!(
                of(&read(&snapshotter), "c/instance-2"),
                expected(0.0, 0.0, 0.0)
            );
        });
    }
}
