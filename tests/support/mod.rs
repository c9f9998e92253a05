//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod flavour;
#[cfg(feature = "axum")]
pub mod http;
pub mod load;
#[cfg(feature = "metrics")]
pub mod recorder;
#[cfg(feature = "secrets-manager")]
pub mod secrets;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use sqlx::PgPool;

/// A cluster of `instances` serving TLS with a CA of its own
/// ([`LocalCluster::ca_cert_path`]): what credentials that go only to a verified server
/// (IAM, Secrets Manager) need.
pub async fn tls_cluster(instances: usize) -> LocalCluster {
    LocalCluster::builder()
        .instances(instances)
        .tls(true)
        .start()
        .await
        .expect("TLS cluster")
}

/// A `cluster_id` no other test uses: the registry is process-wide and tests run in parallel.
/// It is short (a prefix of `test` and a hash of all of it), because the `application_name`
/// that carries it keeps only 63 bytes and tests look connections up by it.
pub fn unique_cluster_id(test: &str) -> String {
    let hash = test.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let prefix: String = test.chars().take(16).collect();
    format!("{prefix}-{:08x}-{}", hash as u32, std::process::id())
}

/// The cluster's URL with more parameters appended.
pub fn url_with(cluster: &LocalCluster, params: &str) -> String {
    format!("{}&{params}", cluster.url())
}

/// The id of the instance a pool's connection lands on.
pub async fn served_by(pool: &PgPool) -> String {
    <aurora_pool::AuroraPool as flavour::Flavour>::served_by(pool).await
}

/// How many server connections carry `application_name`, seen from instance `on`.
pub async fn connections_named(cluster: &LocalCluster, on: &str, application_name: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
    );
    cluster
        .psql(on, "postgres", &sql)
        .await
        .expect("pg_stat_activity query")
        .trim()
        .parse()
        .expect("a count")
}

/// Polls `check` until it returns true or `limit` passes; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Health probing tuned for tests: probe every 300 ms from the start, two misses in a row
/// declare an instance dead.
pub const AGGRESSIVE: &str = "failure_detection_time_ms=0&failure_detection_interval_ms=300\
&failure_detection_count=2&connect_timeout=2";

/// Collects the events received so far.
pub fn drain_events(
    events: &mut tokio::sync::broadcast::Receiver<aurora_pool::ClusterEvent>,
) -> Vec<aurora_pool::ClusterEvent> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    seen
}

/// Clusters a test binary runs at once: several 4-instance clusters starting together on a
/// 2-core machine starve each other, and the aggressive probes of the tests that use them
/// then declare live instances dead. Hold the permit for the test's life.
pub async fn cluster_slot() -> tokio::sync::SemaphorePermit<'static> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    SLOTS.acquire().await.expect("never closed")
}

/// Tests of one binary that assert a time bound take this lock for writing, the others
/// for reading ([`untimed`]): a bound is measured with the machine to the test (and the
/// emulation it drives), not shared with another test's cluster. libtest runs a binary's
/// tests two at a time here, on two cores.
static TIMED: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For a test that asserts a time bound: runs it alone in its binary. Hold the guard for
/// the test's life.
pub async fn timed() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    TIMED.write().await
}

/// For the other tests of a binary with [`timed`] tests: they run beside each other,
/// never beside a timed one. Hold the guard for the test's life.
pub async fn untimed() -> tokio::sync::RwLockReadGuard<'static, ()> {
    TIMED.read().await
}

/// Prints the crate's tracing events when `RUST_LOG` is set (captured per test by libtest).
pub fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        trace_or("");
    }
}

/// [`trace`] with `default` as the filter when `RUST_LOG` is not set: libtest prints a
/// test's captured output only when it fails, so a timing-sensitive test that fails in CI
/// shows what the pool did. Not for binaries that [`capture_logs`] (one subscriber per
/// process).
pub fn trace_or(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Waits until `table` exists on every instance: streaming replication is asynchronous, and
/// a failover right after a `CREATE TABLE` could otherwise lose it, as on a real cluster.
pub async fn replicated(cluster: &LocalCluster, table: &str) {
    let sql = format!("SELECT pg_catalog.to_regclass('{table}') IS NOT NULL");
    for id in cluster.instance_ids() {
        let visible = eventually(Duration::from_secs(20), || async {
            cluster
                .psql(&id, cluster.database(), &sql)
                .await
                .is_ok_and(|out| out.trim() == "t")
        })
        .await;
        assert!(visible, "{table} never reached {id}");
    }
}

/// A sqlx-flavour pool on `cluster` (see [`flavour::connect`]).
pub async fn connect(cluster: &LocalCluster, test: &str, params: &str) -> aurora_pool::AuroraPool {
    flavour::connect(cluster, test, params).await
}

/// The connections the monitor of `cluster_id` reads the topology on: its own, or the
/// writer's probe, on the writer of `cluster`.
pub async fn monitor_connections(cluster: &LocalCluster, cluster_id: &str) -> usize {
    // With routine probing the writer's probe reads the topology: the monitor's connection
    // to the writer is the probe's.
    let writer = cluster.writer_id();
    let mut connections = 0;
    for purpose in ["aurora-pool-monitor", "aurora-pool-probe"] {
        connections +=
            connections_named(cluster, &writer, &format!("{purpose}:{cluster_id}")).await;
    }
    connections
}

/// Ends the monitor's connection to the writer (its own, or the writer's probe's) of
/// `cluster_id` and waits up to 10 s for the monitor to log in again; returns whether it
/// did.
pub async fn monitor_logs_in_again(cluster: &LocalCluster, cluster_id: &str) -> bool {
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name IN ('aurora-pool-monitor:{cluster_id}', 'aurora-pool-probe:{cluster_id}')"
    );
    let _ = cluster
        .psql(&cluster.writer_id(), "postgres", &terminate)
        .await;
    eventually(Duration::from_secs(10), || async {
        monitor_connections(cluster, cluster_id).await == 1
    })
    .await
}

/// The trace-level log of the whole test binary (the crate's and the drivers' events).
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .init();
        logs
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Records everything logged at trace level from now on, for every test of the binary
/// (tests that check logs for secrets call it first).
pub fn capture_logs() {
    log_buffer();
}

/// Everything logged since [`capture_logs`].
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().expect("logs")).into_owned()
}

/// A connection of its own to `instance`, past the pool and the proxies (for watching an
/// instance, or asking it what it stores).
pub async fn direct_connection(cluster: &LocalCluster, instance: &str) -> sqlx::PgConnection {
    let url = format!(
        "postgres://{}:{}@{}/{}?sslmode=disable",
        cluster.user(),
        cluster.password(),
        cluster.direct_addr(instance).expect("the instance"),
        cluster.database()
    );
    <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("a direct connection")
}
