//! Writes go to the writer; reads spread over the readers per strategy; no readers fall
//! back to the writer only when allowed.

mod support;

use std::collections::BTreeMap;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};
use support::{served_by, unique_cluster_id, url_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_on_the_writer_and_reads_follow_the_strategy() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let url = |test: &str, strategy: &str| {
        url_with(
            &cluster,
            &format!(
                "cluster_id={}&reader_host_selector_strategy={strategy}",
                unique_cluster_id(test)
            ),
        )
    };

    let pool = AuroraPool::connect(&url("routing-rr", "round_robin"))
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        .execute(&pool.writer())
        .await
        .expect("create table");
    for i in 0..5 {
        let instance: String = sqlx::query_scalar(
            "INSERT INTO notes (body) VALUES ($1) RETURNING pg_catalog.aurora_db_instance_identifier()",
        )
        .bind(format!("note {i}"))
        .fetch_one(&pool.writer())
        .await
        .expect("insert through the writer");
        assert_eq!(instance, "instance-1");
    }

    // Round robin alternates over the readers in id order and never picks the writer.
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(served_by(&pool.reader()).await);
    }
    assert_eq!(
        served,
        [
            "instance-2",
            "instance-3",
            "instance-2",
            "instance-3",
            "instance-2",
            "instance-3"
        ]
    );
    // Replicas see the writes.
    let reader = pool.reader();
    let replicated = support::eventually(std::time::Duration::from_secs(10), || {
        let reader = reader.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
                .fetch_one(&reader)
                .await
                .map(|n| n == 5)
                .unwrap_or(false)
        }
    })
    .await;
    assert!(replicated, "the replica never saw the 5 notes");

    // Random covers every reader, never the writer.
    let pool = AuroraPool::connect(&url("routing-random", "random"))
        .await
        .expect("connect");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        *counts.entry(served_by(&pool.reader()).await).or_default() += 1;
    }
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["instance-2", "instance-3"],
        "{counts:?}"
    );

    // Least connections avoids the reader whose connections are all in use.
    let pool = AuroraPool::connect(&url("routing-least", "least_connections"))
        .await
        .expect("connect");
    let mut held = pool.acquire(Role::Reader).await.expect("reader checkout");
    let busy: String = sqlx::query_scalar("SELECT pg_catalog.aurora_db_instance_identifier()")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    for _ in 0..4 {
        let mut conn = pool.acquire(Role::Reader).await.expect("reader checkout");
        let other: String = sqlx::query_scalar("SELECT pg_catalog.aurora_db_instance_identifier()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_ne!(other, busy, "least_connections picked the busy reader");
        assert_ne!(other, "instance-1");
        // Closing (not just dropping) takes it out of the count before the next pick.
        conn.close().await.expect("close");
    }
    let status = pool.status();
    let busy_status = status.instance(&busy).expect("busy reader in status");
    assert_eq!(busy_status.role, Role::Reader);
    assert!(
        busy_status.size >= 1 && busy_status.idle < busy_status.size,
        "{status:?}"
    );
    assert_eq!(
        status.instance("instance-1").expect("writer").role,
        Role::Writer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_readers_reads_fall_back_to_the_writer_only_when_allowed() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = AuroraPool::connect(&url_with(
        &cluster,
        &format!("cluster_id={}", unique_cluster_id("fallback-on")),
    ))
    .await
    .expect("connect");
    assert_eq!(pool.topology().readers().count(), 0);
    assert_eq!(served_by(&pool.reader()).await, "instance-1");
    let mut conn = pool.acquire(Role::Reader).await.expect("fallback checkout");
    let id: String = sqlx::query_scalar("SELECT pg_catalog.aurora_db_instance_identifier()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(id, "instance-1");

    let strict = support::connect(
        &cluster,
        "fallback-off",
        "failover_mode=strict_reader&failover_timeout_ms=500",
    )
    .await;
    // A strict reader checkout waits for a reader up to failover_timeout, then gives up.
    let err = strict
        .acquire(Role::Reader)
        .await
        .expect_err("no reader and no fallback");
    assert!(err.is_failover_failed(), "{err}");
    let cause = std::error::Error::source(&err)
        .expect("the cause is kept")
        .to_string();
    assert!(cause.contains("strict_reader"), "{cause}");
    assert!(strict.try_reader().unwrap_err().is_no_reader());
    // `.reader()` cannot fail: it documents that it returns the writer's pool.
    assert_eq!(served_by(&strict.reader()).await, "instance-1");
}
