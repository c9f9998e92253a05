//! When the topology changes, the monitor publishes it and the pool re-routes: writes move
//! to the new writer and pools to the old one are closed.

mod support;

use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::eventually;
use support::flavour::{Flavour, INSTANCE_ID, connect, flavour_tests};

async fn writes_follow_the_writer_after_a_topology_change<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(&cluster, test, "cluster_topology_refresh_rate_ms=200").await;
    let before = pool.topology();
    assert_eq!(before.writer().id(), "instance-1");
    let kept_writer_handle = pool.handle(Role::Writer);
    let served = F::handle_text(&kept_writer_handle, INSTANCE_ID).await;
    assert_eq!(served.expect("write"), "instance-1");

    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");

    let moved = eventually(Duration::from_secs(15), || async {
        pool.topology().writer().id() == "instance-2"
    })
    .await;
    assert!(
        moved,
        "the pool never saw the new writer: {}",
        pool.topology()
    );
    let after = pool.topology();
    assert!(after.version() > before.version());

    let served = F::handle_text(&pool.handle(Role::Writer), INSTANCE_ID).await;
    assert_eq!(served.expect("write"), "instance-2");
    let in_recovery = pool
        .query_text(Role::Writer, "SELECT pg_catalog.pg_is_in_recovery()::text")
        .await
        .expect("writer checkout");
    assert_eq!(in_recovery, "false");
    let status = pool.status();
    assert!(status.topology_version >= after.version());
    assert_eq!(status.instances[0].instance_id, "instance-2");
    assert_eq!(status.instances[0].role, Role::Writer);

    // A writer handle taken before the change follows the writer.
    assert!(!F::handle_is_closed(&kept_writer_handle));
    let served = F::handle_text(&kept_writer_handle, INSTANCE_ID).await;
    assert_eq!(served.expect("write through the kept handle"), "instance-2");
    pool.close().await;
}

flavour_tests!(writes_follow_the_writer_after_a_topology_change);

/// Frequent health-probe reports must not postpone the topology polls: the monitor's last
/// query stays younger than a few refresh intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_keep_their_schedule_while_probes_report() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = support::connect(
        &cluster,
        "poll-schedule",
        "cluster_topology_refresh_rate_ms=300&failure_detection_time_ms=0\
         &failure_detection_interval_ms=50",
    )
    .await;
    let monitor = format!(
        "aurora-pool-monitor:{}",
        support::unique_cluster_id("poll-schedule")
    );
    let sql = format!(
        "SELECT extract(epoch FROM clock_timestamp() - query_start) FROM pg_stat_activity \
         WHERE application_name = '{monitor}'"
    );
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let age: f64 = cluster
            .psql("instance-1", "postgres", &sql)
            .await
            .expect("pg_stat_activity")
            .trim()
            .parse()
            .expect("the monitor's connection is on the writer");
        assert!(
            age < 1.5,
            "the monitor last polled {age:.1} s ago (every 0.3 s expected)"
        );
    }
    pool.close().await;
}
