//! The monitor's metrics (feature `metrics`), read through `metrics-util`'s debugging
//! recorder across a writer crash and a reader crash, both flavours, default settings.

mod support;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::eventually;
use support::flavour::{Flavour, connect, flavour_tests};

/// One recorder for the process: the tests tell their metrics apart by `cluster_id`.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder");
        snapshotter
    })
}

/// A metric's value, kept across snapshots.
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    /// Not read by these tests.
    Gauge,
    Histogram(Vec<f64>),
}

impl From<DebugValue> for Value {
    fn from(value: DebugValue) -> Value {
        match value {
            DebugValue::Counter(n) => Value::Counter(n),
            DebugValue::Gauge(_) => Value::Gauge,
            DebugValue::Histogram(samples) => {
                Value::Histogram(samples.into_iter().map(|s| s.into_inner()).collect())
            }
        }
    }
}

type Metric = (String, Vec<(String, String)>, Value);

/// Everything recorded so far: the debugging recorder's snapshots drain counters and
/// histograms, and the tests of this binary take them concurrently, so each snapshot is added
/// to what earlier ones found.
fn recorded() -> Vec<Metric> {
    static SEEN: Mutex<Vec<Metric>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().expect("seen");
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let name = key.name().to_owned();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let value = Value::from(value);
        match seen.iter_mut().find(|(n, l, _)| *n == name && *l == labels) {
            Some((_, _, kept)) => match (kept, value) {
                (Value::Counter(kept), Value::Counter(n)) => *kept += n,
                (Value::Histogram(kept), Value::Histogram(more)) => kept.extend(more),
                (kept, value) => *kept = value,
            },
            None => seen.push((name, labels, value)),
        }
    }
    seen.clone()
}

/// The metrics of `cluster_id`: name, the other labels, the value.
fn metrics_of(cluster_id: &str) -> Vec<Metric> {
    recorded()
        .into_iter()
        .filter(|(_, labels, _)| {
            labels
                .iter()
                .any(|(k, v)| k == "cluster_id" && v == cluster_id)
        })
        .map(|(name, labels, value)| {
            let others = labels.into_iter().filter(|(k, _)| k != "cluster_id");
            (name, others.collect(), value)
        })
        .collect()
}

fn counter(metrics: &[Metric], name: &str, instance: Option<&str>) -> u64 {
    metrics
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && instance.is_none_or(|i| labels.iter().any(|(k, v)| k == "instance" && v == i))
        })
        .map(|(_, _, value)| match value {
            Value::Counter(n) => *n,
            other => panic!("{name} is no counter: {other:?}"),
        })
        .sum()
}

fn samples(metrics: &[Metric], name: &str) -> Vec<f64> {
    metrics
        .iter()
        .filter(|(n, ..)| n == name)
        .flat_map(|(_, _, value)| match value {
            Value::Histogram(samples) => samples.clone(),
            other => panic!("{name} is no histogram: {other:?}"),
        })
        .collect()
}

/// A writer crash, the promotion right behind it: one failover started and succeeded, with
/// its duration; the old writer declared down once, with its detection time; topology reads
/// counted. A reader crash: that reader down, no failover.
async fn failovers_and_verdicts_are_counted<F: Flavour>(test: &str) {
    snapshotter();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(&cluster, test, "").await;
    let cluster_id = pool.config().cluster_id.clone();
    let read = eventually(Duration::from_secs(10), || async {
        counter(&metrics_of(&cluster_id), "aurora_pool.topology.reads", None) > 0
    })
    .await;
    assert!(
        read,
        "no topology read counted: {:?}",
        metrics_of(&cluster_id)
    );

    cluster.crash("instance-1").await.expect("crash");
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pool.instance_id(Role::Writer).await.ok().as_deref() != Some("instance-2") {
        assert!(Instant::now() < deadline, "writes never reached instance-2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reader crash: no failover, that reader down.
    cluster.crash("instance-3").await.expect("crash");
    let down = eventually(Duration::from_secs(10), || async {
        counter(
            &metrics_of(&cluster_id),
            "aurora_pool.instances.down",
            Some("instance-3"),
        ) > 0
    })
    .await;
    assert!(
        down,
        "the reader's verdict was not counted: {:?}",
        metrics_of(&cluster_id)
    );

    let metrics = metrics_of(&cluster_id);
    assert_eq!(
        counter(&metrics, "aurora_pool.failovers.started", None),
        1,
        "{metrics:?}"
    );
    assert_eq!(
        counter(&metrics, "aurora_pool.failovers.succeeded", None),
        1,
        "{metrics:?}"
    );
    assert_eq!(
        counter(&metrics, "aurora_pool.failovers.failed", None),
        0,
        "{metrics:?}"
    );
    assert_eq!(
        counter(&metrics, "aurora_pool.instances.down", Some("instance-1")),
        1,
        "{metrics:?}"
    );
    let durations = samples(&metrics, "aurora_pool.failover.duration");
    assert_eq!(
        durations.len(),
        1,
        "one failover, one duration: {metrics:?}"
    );
    assert!(durations[0] > 0.0 && durations[0] < 15.0, "{durations:?}");
    let detections = samples(&metrics, "aurora_pool.instance.detection_time");
    assert_eq!(
        detections.len(),
        2,
        "instance-1 and instance-3: {metrics:?}"
    );
    pool.close().await;
}

flavour_tests!(failovers_and_verdicts_are_counted);
