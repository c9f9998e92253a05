//! The writer goes silent (traffic dropped, no RST): health probes declare it dead, the
//! work that hangs on it is abandoned and retried on the new writer.

mod support;

use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{ClusterEvent, Role};
use support::{AGGRESSIVE, drain_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_writer_is_detected_and_failed_over() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = support::connect(
        &cluster,
        "blackhole",
        &format!("{AGGRESSIVE}&failover_timeout_ms=30000"),
    )
    .await;
    let mut events = pool.events();
    support::execute(&pool, "CREATE TABLE hits (instance text NOT NULL)").await;
    support::replicated(&cluster, "hits").await;

    // Work that is on the writer when it goes silent: without detection it would hang.
    let in_flight = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut attempts = 0;
            let result = pool
                .run(Role::Writer, |conn| {
                    attempts += 1;
                    Box::pin(async move {
                        sqlx::query_scalar::<_, String>(
                            "SELECT pg_catalog.pg_sleep(1)::text || pg_catalog.aurora_db_instance_identifier()",
                        )
                        .fetch_one(conn)
                        .await
                    })
                })
                .await;
            (
                result.map_err(|e| e.to_string()),
                attempts,
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cluster.blackhole("instance-1", true));
    // Aurora notices the silent writer too and promotes a replica.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");

    let (result, attempts, elapsed) = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the in-flight work must not hang")
        .expect("task");
    let served = result.expect("the work is retried on the new writer");
    assert!(served.ends_with("instance-2"), "{served}");
    assert!(attempts >= 2, "the hung attempt must have been abandoned");
    assert!(elapsed < Duration::from_secs(25), "{elapsed:?}");

    let instance: String = pool
        .run(Role::Writer, |conn| {
            Box::pin(async move {
                sqlx::query_scalar("INSERT INTO hits VALUES (pg_catalog.aurora_db_instance_identifier()) RETURNING instance")
                    .fetch_one(conn)
                    .await
            })
        })
        .await
        .expect("writes work after the failover");
    assert_eq!(instance, "instance-2");

    // The silent instance is declared dead within a few probe intervals.
    let declared = support::eventually(Duration::from_secs(10), || async {
        !pool
            .topology()
            .instance("instance-1")
            .is_some_and(|i| i.is_available())
    })
    .await;
    assert!(
        declared,
        "instance-1 was never declared unreachable: {}",
        pool.topology()
    );
    let seen = drain_events(&mut events);
    assert!(
        seen.contains(&ClusterEvent::InstanceDown {
            instance: "instance-1".into()
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&ClusterEvent::WriterChanged {
            old: "instance-1".into(),
            new: "instance-2".into()
        }),
        "{seen:?}"
    );
}
