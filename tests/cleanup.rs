//! Nothing outlives the pool: server connections, monitor and probe tasks are gone after
//! drop or close, also after many create/drop cycles.

mod support;

use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::{connections_named, eventually, unique_cluster_id};

async fn server_connections(cluster: &LocalCluster, needle: &str) -> usize {
    let mut total = 0;
    for id in cluster.instance_ids() {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%{needle}%'"
        );
        total += cluster
            .psql(&id, "postgres", &sql)
            .await
            .expect("pg_stat_activity")
            .trim()
            .parse::<usize>()
            .expect("count");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pools_leave_no_connections_and_no_tasks() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();

    let id = unique_cluster_id("cleanup");
    for cycle in 0..10 {
        let app = format!("cleanup-app-{cycle}");
        let pool = support::connect(
            &cluster,
            "cleanup",
            &format!("application_name={app}&writer_min_connections=2&failure_detection_time_ms=0"),
        )
        .await;
        pool.run(Role::Writer, |conn| {
            Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await })
        })
        .await
        .expect("write");
        sqlx::query("SELECT 1")
            .execute(&pool.reader())
            .await
            .expect("read");
        assert!(connections_named(&cluster, "instance-1", &app).await >= 1);
        if cycle % 2 == 0 {
            pool.close().await;
        }
        drop(pool);
    }
    // The pools' own connections, the monitors and the probes: all gone.
    let gone = eventually(Duration::from_secs(15), || async {
        server_connections(&cluster, "cleanup-app-").await == 0
            && server_connections(&cluster, &id).await == 0
    })
    .await;
    assert!(
        gone,
        "connections left: {} of the pools, {} of the monitors and probes",
        server_connections(&cluster, "cleanup-app-").await,
        server_connections(&cluster, &id).await
    );
    let settled = eventually(Duration::from_secs(10), || async {
        metrics.num_alive_tasks() <= tasks_before
    })
    .await;
    assert!(
        settled,
        "tasks alive: {} before, {} after",
        tasks_before,
        metrics.num_alive_tasks()
    );
}
