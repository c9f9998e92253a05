//! One `metrics-util` debugging recorder per test binary, and everything it recorded: for the
//! binaries that read the crate's metrics (feature `metrics`).

use std::sync::{Mutex, OnceLock};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// One recorder for the process: the tests tell their metrics apart by `cluster_id`.
pub fn snapshotter() -> &'static Snapshotter {
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
pub enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

impl From<DebugValue> for Value {
    fn from(value: DebugValue) -> Value {
        match value {
            DebugValue::Counter(n) => Value::Counter(n),
            DebugValue::Gauge(value) => Value::Gauge(value.into_inner()),
            DebugValue::Histogram(samples) => {
                Value::Histogram(samples.into_iter().map(|s| s.into_inner()).collect())
            }
        }
    }
}

pub type Metric = (String, Vec<(String, String)>, Value);

/// Everything recorded so far: the debugging recorder's snapshots drain counters and
/// histograms, and the tests of this binary take them concurrently, so each snapshot is added
/// to what earlier ones found.
pub fn recorded() -> Vec<Metric> {
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
                // A snapshot drains gauges to zero too: a zero is what the last snapshot
                // left, not a value set (the zeroing of a closed pool's gauges is a unit
                // test of `PoolGauges`).
                (Value::Gauge(_), Value::Gauge(0.0)) => {}
                (kept, value) => *kept = value,
            },
            None => seen.push((name, labels, value)),
        }
    }
    seen.clone()
}

/// The total of counter `name` over every label set that has all of `labels`.
pub fn counter_with(name: &str, labels: &[(&str, &str)]) -> u64 {
    recorded()
        .iter()
        .filter(|(n, kept, _)| {
            n == name
                && labels
                    .iter()
                    .all(|&(key, value)| kept.iter().any(|(k, v)| k == key && v == value))
        })
        .map(|(_, _, value)| match value {
            Value::Counter(n) => *n,
            other => panic!("{name} is no counter: {other:?}"),
        })
        .sum()
}
