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

/// Frequent health-probe reports must not postpone the topology polls: a reader that joins
/// shows up within a few refresh intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_keep_their_schedule_while_probes_report() {
    let cluster = LocalCluster::builder()
        .instances(2)
        .spare_instances(1)
        .start()
        .await
        .expect("cluster");
    let pool = support::connect(
        &cluster,
        "poll-schedule",
        "cluster_topology_refresh_rate_ms=300&failure_detection_time_ms=0\
         &failure_detection_interval_ms=50",
    )
    .await;
    // Probes report every 50 ms; the topology is still read every 0.3 s: a reader that joins
    // shows up within a few polls.
    cluster
        .add_instance("instance-3")
        .await
        .expect("add instance-3");
    let added = std::time::Instant::now();
    let seen = eventually(Duration::from_secs(3), || async {
        pool.topology().instance("instance-3").is_some()
    })
    .await;
    assert!(
        seen,
        "no poll saw the new reader within 3 s (every 0.3 s expected): {}",
        pool.topology()
    );
    eprintln!("new reader seen {:?} after it joined", added.elapsed());
    pool.close().await;
}
