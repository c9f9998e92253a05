//! Writes go to the writer; reads spread over the readers per strategy; no readers fall
//! back to the writer only when allowed.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::flavour::{Flavour, INSTANCE_ID, connect, flavour_tests};

async fn writes_land_on_the_writer_and_reads_follow_the_strategy<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let strategy = |name: &str| format!("reader_host_selector_strategy={name}");
    let pool: F = connect(&cluster, &format!("{test}-rr"), &strategy("round_robin")).await;
    pool.run("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        .await
        .expect("create table");
    for _ in 0..5 {
        let instance = F::handle_text(
            &pool.handle(Role::Writer),
            "INSERT INTO notes (body) VALUES ('note') RETURNING pg_catalog.aurora_db_instance_identifier()",
        )
        .await
        .expect("insert through the writer");
        assert_eq!(instance, "instance-1");
    }

    // Round robin alternates checkouts over the readers in id order and never picks the
    // writer.
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(pool.instance_id(Role::Reader).await.expect("read"));
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
    let replicated = support::eventually(Duration::from_secs(10), || async {
        F::handle_text(
            &pool.handle(Role::Reader),
            "SELECT count(*)::text FROM notes",
        )
        .await
        .is_ok_and(|n| n == "5")
    })
    .await;
    assert!(replicated, "the replica never saw the 5 notes");
    pool.close().await;

    // Random covers every reader, never the writer.
    let pool: F = connect(&cluster, &format!("{test}-random"), &strategy("random")).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let served = pool.instance_id(Role::Reader).await;
        *counts.entry(served.expect("read")).or_default() += 1;
    }
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["instance-2", "instance-3"],
        "{counts:?}"
    );
    pool.close().await;

    // Least connections avoids the reader whose connections are all in use.
    let pool: F = connect(
        &cluster,
        &format!("{test}-least"),
        &strategy("least_connections"),
    )
    .await;
    let mut held = pool.hold(Role::Reader).await.expect("reader checkout");
    let busy = pool.held_instance_id(&mut held).await.expect("read");
    for _ in 0..4 {
        // Closed, not returned: out of the count before the next pick.
        let other = pool.fresh_login(Role::Reader).await.expect("read");
        assert_ne!(other, busy, "least_connections picked the busy reader");
        assert_ne!(other, "instance-1");
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
    drop(held);
    pool.close().await;
}

async fn without_readers_reads_fall_back_to_the_writer_only_when_allowed<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool: F = connect(&cluster, &format!("{test}-on"), "").await;
    assert_eq!(pool.topology().readers().count(), 0);
    let served = F::handle_text(&pool.handle(Role::Reader), INSTANCE_ID).await;
    assert_eq!(served.expect("read"), "instance-1");
    let served = pool.instance_id(Role::Reader).await;
    assert_eq!(served.expect("fallback checkout"), "instance-1");
    pool.close().await;

    let strict: F = connect(
        &cluster,
        &format!("{test}-off"),
        "failover_mode=strict_reader&failover_timeout_ms=500&acquire_timeout_ms=500",
    )
    .await;
    // A strict reader checkout waits for a reader up to failover_timeout, then gives up.
    let err = strict
        .instance_id(Role::Reader)
        .await
        .expect_err("no reader and no fallback");
    assert!(err.is_failover_failed(), "{err}");
    let cause = std::error::Error::source(&err)
        .expect("the cause is kept")
        .to_string();
    assert!(cause.contains("strict_reader"), "{cause}");
    assert!(strict.try_reader().expect_err("no reader").is_no_reader());
    // The shared reader pool serves no read on the writer either: its checkouts fail (at
    // once in the deadpool flavour, after acquire_timeout in the sqlx one).
    let served = F::handle_text(&strict.handle(Role::Reader), INSTANCE_ID).await;
    assert!(
        served.is_err(),
        "a strict read went to the writer: {served:?}"
    );
    strict.close().await;
}

flavour_tests!(
    writes_land_on_the_writer_and_reads_follow_the_strategy,
    without_readers_reads_fall_back_to_the_writer_only_when_allowed,
);
