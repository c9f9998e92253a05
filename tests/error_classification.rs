//! Errors users get from the returned pools are classified without loss, and a failover
//! error makes the monitor look at the topology at once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{ErrorClass, Role};
use support::eventually;
use support::flavour::{Flavour, connect, failover_to, flavour_tests};

async fn classify_keeps_the_driver_error_and_triggers_a_refresh<F: Flavour>(test: &str) {
    let cluster = Arc::new(LocalCluster::start(3).await.expect("cluster"));
    // Slow polling and no health probes: only the classified error can reveal the failover.
    let pool: F = connect(
        &cluster,
        test,
        "cluster_topology_refresh_rate_ms=600000&failure_detection_enabled=false",
    )
    .await;

    // A plain SQL error stays what it is.
    let err = pool
        .returned_pool_error(Role::Writer, "SELECT * FROM no_such_table", None)
        .await;
    assert!(err.is_driver() && !err.is_failover(), "{err:?}");
    assert_eq!(err.sqlstate(), Some("42P01"));
    assert_eq!(err.class(), ErrorClass::Other);
    assert!(
        F::has_driver_source(&err),
        "the driver's error is the source"
    );

    // A write that reaches a replica is refused as read-only: the caller's mistake, returned
    // as the driver's error (the pool re-checks the writer all the same).
    let err = pool
        .returned_pool_error(Role::Reader, "CREATE TABLE t (x int)", None)
        .await;
    assert!(!err.is_failover() && !err.is_retryable(), "{err:?}");
    assert!(err.is_driver(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::ReadOnly);
    assert_eq!(err.sqlstate(), Some("25006"));

    // A connection held across a failover fails with a network error.
    let failover = failover_to(&cluster, "instance-2");
    let err = pool
        .returned_pool_error(Role::Writer, "SELECT 1", Some(failover))
        .await;
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
    pool.close().await;
}

flavour_tests!(classify_keeps_the_driver_error_and_triggers_a_refresh);
