//! Errors users get from the returned pools are classified without loss, and a failover
//! error makes the monitor look at the topology at once.

mod support;

use std::time::Duration;

use aurora_pool::ErrorClass;
use aurora_pool::testing::LocalCluster;
use support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_keeps_the_driver_error_and_triggers_a_refresh() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    // Slow polling and no health probes: only the classified error can reveal the failover.
    let pool = support::connect(
        &cluster,
        "classify",
        "cluster_topology_refresh_rate_ms=600000&failure_detection_enabled=false",
    )
    .await;

    // A plain SQL error stays what it is.
    let err = sqlx::query("SELECT * FROM no_such_table")
        .execute(&pool.writer())
        .await
        .unwrap_err();
    let err = pool.classify(err);
    assert!(err.is_driver() && !err.is_failover(), "{err:?}");
    assert_eq!(err.sqlstate(), Some("42P01"));
    assert_eq!(err.class(), ErrorClass::Other);
    let source = std::error::Error::source(&err).expect("source");
    assert!(
        source.downcast_ref::<sqlx::Error>().is_some(),
        "the sqlx error is the source"
    );

    // A write that reaches a replica is refused as read-only: a failover-class error.
    let err = sqlx::query("CREATE TABLE t (x int)")
        .execute(&pool.reader())
        .await
        .unwrap_err();
    let err = pool.classify(err);
    assert!(err.is_failover(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::ReadOnly);
    assert_eq!(err.sqlstate(), Some("25006"));

    let writer = pool.writer();
    let mut held = writer.acquire().await.expect("connection");
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let err = sqlx::query("SELECT 1")
        .execute(&mut *held)
        .await
        .expect_err("the writer is gone");
    drop(held);
    let err = pool.classify(err);
    assert!(err.is_failover(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Network);
    let moved = eventually(Duration::from_secs(10), || async {
        pool.topology().writer().id() == "instance-2"
    })
    .await;
    assert!(
        moved,
        "the classified error did not trigger a refresh: {}",
        pool.topology()
    );
}
