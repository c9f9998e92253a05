//! What the deadpool flavour adds to deadpool: connections to a dead instance are aborted,
//! recycling checks with the server, idle connections are closed down to the minimum, and
//! connections are replaced at `max_lifetime`.

mod support;

use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::deadpool::AuroraPool;
use aurora_pool::testing::LocalCluster;
use support::{AGGRESSIVE, eventually, unique_cluster_id};

async fn connect(cluster: &LocalCluster, test: &str, params: &str) -> AuroraPool {
    AuroraPool::connect(&support::url_with(
        cluster,
        &format!("cluster_id={}&{params}", unique_cluster_id(test)),
    ))
    .await
    .expect("connect")
}

async fn backend_pid(client: &aurora_pool::deadpool::Object) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_on_a_dead_instance_fails_at_once() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect(&cluster, "deadpool-abort", AGGRESSIVE).await;
    let client = pool.acquire(Role::Reader).await.expect("reader");
    let id: String = client
        .query_one("SELECT pg_catalog.aurora_db_instance_identifier()", &[])
        .await
        .expect("id")
        .get(0);
    // The instance stops answering: no reset, no FIN, as when a host dies.
    assert!(cluster.blackhole(&id, true));
    let outcome = tokio::time::timeout(
        // Well below the 10 s tcp_user_timeout: only the abort can end the query this early.
        Duration::from_secs(6),
        client.query_one("SELECT 1", &[]),
    )
    .await
    .expect("the query on the dead instance hung");
    let err = outcome.expect_err("the query cannot succeed");
    assert!(pool.classify(err).is_failover());
    drop(client);
    // Reads move to the other reader.
    let other = pool.acquire(Role::Reader).await.expect("another reader");
    let now: String = other
        .query_one("SELECT pg_catalog.aurora_db_instance_identifier()", &[])
        .await
        .expect("id")
        .get(0);
    assert_ne!(now, id);
    drop(other);
    cluster.blackhole(&id, false);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_replaces_connections_the_server_ended() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = connect(&cluster, "deadpool-recycle", "writer_max_connections=1").await;
    let client = pool.acquire(Role::Writer).await.expect("writer");
    let first = backend_pid(&client).await;
    drop(client);
    cluster
        .psql(
            "instance-1",
            "postgres",
            &format!("SELECT pg_terminate_backend({first})"),
        )
        .await
        .expect("terminate");
    // Past the 500 ms in which a just-used connection is handed out without asking the
    // server (the window the README documents).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let client = pool.acquire(Role::Writer).await.expect("writer");
    let second = backend_pid(&client).await;
    assert_ne!(first, second, "the ended connection was handed out again");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_down_to_the_minimum() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = connect(
        &cluster,
        "deadpool-idle",
        "writer_min_connections=2&idle_timeout_ms=400&application_name=deadpool-idle",
    )
    .await;
    let filled = eventually(Duration::from_secs(10), || async {
        pool.status().instances[0].size == 2
    })
    .await;
    assert!(filled, "not filled to the minimum: {:?}", pool.status());
    // Five at once, then idle.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(pool.acquire(Role::Writer).await.expect("writer"));
    }
    assert_eq!(pool.status().instances[0].size, 5);
    drop(held);
    let shrunk = eventually(Duration::from_secs(10), || async {
        pool.status().instances[0].size == 2
            && support::connections_named(&cluster, "instance-1", "deadpool-idle").await == 2
    })
    .await;
    assert!(shrunk, "{:?}", pool.status());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_at_max_lifetime() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = connect(
        &cluster,
        "deadpool-lifetime",
        "writer_max_connections=1&max_lifetime_ms=300",
    )
    .await;
    let client = pool.acquire(Role::Writer).await.expect("writer");
    let first = backend_pid(&client).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = pool.acquire(Role::Writer).await.expect("writer");
    assert_ne!(backend_pid(&client).await, first);
    pool.close().await;
}
