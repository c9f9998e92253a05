//! Every instance down: checkouts fail with a failover-failed error after the timeout, and
//! the pool recovers when the instances return, the same writer re-elected.

mod support;

use std::time::{Duration, Instant};

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::AGGRESSIVE;
use support::flavour::{Flavour, connect, flavour_tests};

const WRITER_ID: &str = "SELECT pg_catalog.aurora_db_instance_identifier() \
                         WHERE NOT pg_catalog.pg_is_in_recovery()";

async fn everything_down_fails_clearly_and_recovers<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: F = connect(
        &cluster,
        test,
        &format!("{AGGRESSIVE}&failover_timeout_ms=2000"),
    )
    .await;
    let write = || pool.run_text(Role::Writer, WRITER_ID);
    assert_eq!(write().await.expect("write"), "instance-1");

    cluster.crash("instance-2").await.expect("crash reader");
    cluster.crash("instance-1").await.expect("crash writer");

    let started = Instant::now();
    let err = pool
        .instance_id(Role::Writer)
        .await
        .expect_err("nothing to connect to");
    assert!(err.is_failover_failed(), "{err}");
    assert!(format!("{err:#}").contains("failover_timeout"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let err = write().await.expect_err("nothing to write to");
    assert!(err.is_failover_failed(), "{err}");

    // The same writer comes back (re-elected): the pool keeps working with it.
    cluster
        .start_instance("instance-1")
        .await
        .expect("restart writer");
    cluster
        .start_instance("instance-2")
        .await
        .expect("restart reader");
    let deadline = Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        match write().await {
            Ok(instance) => break Some(instance),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(_) => break None,
        }
    };
    assert_eq!(recovered.as_deref(), Some("instance-1"));
    assert_eq!(pool.topology().writer().id(), "instance-1");
    pool.close().await;
}

flavour_tests!(everything_down_fails_clearly_and_recovers);
