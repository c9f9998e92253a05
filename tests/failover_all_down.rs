//! Every instance down: checkouts fail with a failover-failed error after the timeout, and
//! the pool recovers when the instances return, the same writer re-elected.

mod support;

use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};
use support::AGGRESSIVE;

async fn write(pool: &AuroraPool) -> aurora_pool::Result<String> {
    pool.run(Role::Writer, |conn| {
        Box::pin(async move {
            sqlx::query_scalar("SELECT pg_catalog.aurora_db_instance_identifier() WHERE NOT pg_catalog.pg_is_in_recovery()")
                .fetch_one(conn)
                .await
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_down_fails_clearly_and_recovers() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = support::connect(
        &cluster,
        "all-down",
        &format!("{AGGRESSIVE}&failover_timeout_ms=2000"),
    )
    .await;
    assert_eq!(write(&pool).await.expect("write"), "instance-1");

    cluster.crash("instance-2").await.expect("crash reader");
    cluster.crash("instance-1").await.expect("crash writer");

    let started = Instant::now();
    let err = pool
        .acquire(Role::Writer)
        .await
        .expect_err("nothing to connect to");
    assert!(err.is_failover_failed(), "{err}");
    assert!(err.to_string().contains("failover_timeout"), "{err}");
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
    let err = write(&pool).await.expect_err("nothing to write to");
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
        match write(&pool).await {
            Ok(instance) => break Some(instance),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(_) => break None,
        }
    };
    assert_eq!(recovered.as_deref(), Some("instance-1"));
    assert_eq!(pool.topology().writer().id(), "instance-1");
}
