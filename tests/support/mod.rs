//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use sqlx::PgPool;

/// A `cluster_id` no other test uses: the registry is process-wide and tests run in parallel.
pub fn unique_cluster_id(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// The cluster's URL with more parameters appended.
pub fn url_with(cluster: &LocalCluster, params: &str) -> String {
    format!("{}&{params}", cluster.url())
}

/// The id of the instance a pool's connection lands on.
pub async fn served_by(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT pg_catalog.aurora_db_instance_identifier()")
        .fetch_one(pool)
        .await
        .expect("instance id query")
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

/// Prints the crate's tracing events when `RUST_LOG` is set (captured per test by libtest).
pub fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
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

/// A pool on `cluster` under its own `cluster_id` (named after `test`), with `params`
/// (`a=1&b=2`) appended to the cluster's URL.
pub async fn connect(cluster: &LocalCluster, test: &str, params: &str) -> aurora_pool::AuroraPool {
    let url = url_with(
        cluster,
        &format!("cluster_id={}&{params}", unique_cluster_id(test)),
    );
    aurora_pool::AuroraPool::connect(&url)
        .await
        .expect("connect")
}

/// Runs one statement on the writer, riding through failovers.
pub async fn execute(pool: &aurora_pool::AuroraPool, sql: &'static str) {
    pool.run(aurora_pool::Role::Writer, move |conn| {
        Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
    })
    .await
    .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

/// Ends the monitoring connection of `cluster_id` (wherever it is) and waits up to 10 s for
/// the monitor to log in again; returns whether it did.
pub async fn monitor_logs_in_again(cluster: &LocalCluster, cluster_id: &str) -> bool {
    let monitor = format!("aurora-pool-monitor:{cluster_id}");
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{monitor}'"
    );
    for id in cluster.instance_ids() {
        let _ = cluster.psql(&id, "postgres", &terminate).await;
    }
    eventually(Duration::from_secs(10), || async {
        let mut monitors = 0;
        for id in cluster.instance_ids() {
            monitors += connections_named(cluster, &id, &monitor).await;
        }
        monitors == 1
    })
    .await
}
