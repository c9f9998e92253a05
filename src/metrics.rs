//! Metrics of the cluster monitor through the `metrics` facade (feature `metrics`): failovers,
//! instance verdicts and topology reads, each labelled with the `cluster_id`. Users install
//! the recorder they already run (Prometheus, OpenTelemetry). Without the feature every
//! function here is empty; with it and no recorder installed each is a call into the
//! facade's no-op recorder. None sits on the checkout path: they run in the monitor, once
//! per event.

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

/// The monitor read the topology in `took`.
pub(crate) fn topology_read(cluster_id: &str, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("aurora_pool.topology.reads", "cluster_id" => cluster_id.to_owned())
            .increment(1);
        metrics::histogram!(
            "aurora_pool.topology.read_time",
            "cluster_id" => cluster_id.to_owned()
        )
        .record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cluster_id, took);
}
