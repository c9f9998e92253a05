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

async fn application_name(client: &aurora_pool::deadpool::Object) -> String {
    client
        .query_one("SHOW application_name", &[])
        .await
        .expect("application_name")
        .get(0)
}

/// deadpool's hooks given in code beside the settings: `post_create` runs on every new
/// connection of every pool (the writer's handle, the readers' handle, `acquire`, `run`);
/// `pre_recycle` refusing a connection closes it and another is opened; an error of
/// `post_create` fails the checkout with it; the settings in code win over the URL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_hooks_run_on_every_pool() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use aurora_pool::deadpool::{AuroraPoolOptions, HookError};

    let cluster = LocalCluster::start(2).await.expect("cluster");
    let (created, refuse_recycle, refuse_create) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let pool = AuroraPoolOptions::new()
        .writer_max_connections(3)
        .post_create({
            let (created, refuse) = (created.clone(), refuse_create.clone());
            move |client, _| {
                created.fetch_add(1, Ordering::SeqCst);
                let refuse = refuse.load(Ordering::SeqCst);
                Box::pin(async move {
                    if refuse {
                        return Err(HookError::message("the test refuses new connections"));
                    }
                    client
                        .batch_execute("SET application_name = 'hooked'")
                        .await
                        .map_err(|e| HookError::Backend(e.into()))
                })
            }
        })
        .pre_recycle({
            let refuse = refuse_recycle.clone();
            move |_, _| {
                let refuse = refuse.load(Ordering::SeqCst);
                Box::pin(async move {
                    match refuse {
                        true => Err(HookError::message("the test refuses recycling")),
                        false => Ok(()),
                    }
                })
            }
        })
        .connect(&support::url_with(
            &cluster,
            &format!(
                "cluster_id={}&writer_max_connections=10",
                unique_cluster_id("deadpool-hooks")
            ),
        ))
        .await
        .expect("connect");

    assert_eq!(pool.writer().status().max_size, 3, "the URL's size won");
    let writer = pool.writer().get().await.expect("writer");
    assert_eq!(application_name(&writer).await, "hooked", "writer handle");
    let pid = backend_pid(&writer).await;
    drop(writer);
    let reader = pool.reader().get().await.expect("reader");
    assert_eq!(application_name(&reader).await, "hooked", "reader handle");
    drop(reader);
    let taken = pool.acquire(Role::Reader).await.expect("acquire");
    assert_eq!(application_name(&taken).await, "hooked", "acquire");
    drop(taken);
    let ran = pool
        .run(Role::Writer, |client| {
            Box::pin(async move {
                let row = client.query_one("SHOW application_name", &[]).await?;
                Ok(row.get::<_, String>(0))
            })
        })
        .await
        .expect("run");
    assert_eq!(ran, "hooked", "run");

    // Recycled as long as the hook lets it; replaced once it refuses.
    let again = pool.writer().get().await.expect("writer");
    assert_eq!(backend_pid(&again).await, pid, "not recycled");
    drop(again);
    refuse_recycle.store(true, Ordering::SeqCst);
    let before = created.load(Ordering::SeqCst);
    let replaced = pool.writer().get().await.expect("writer");
    assert_ne!(
        backend_pid(&replaced).await,
        pid,
        "the refused connection was kept"
    );
    assert_eq!(application_name(&replaced).await, "hooked");
    assert!(created.load(Ordering::SeqCst) > before);
    drop(replaced);

    // A refusing `post_create` fails the checkout, through `?` into the crate's error.
    refuse_create.store(true, Ordering::SeqCst);
    let checkout = async { Ok::<_, aurora_pool::Error>(pool.writer().get().await?) };
    let err = checkout
        .await
        .expect_err("the hook refused every new connection");
    assert!(
        err.to_string().contains("the test refuses new connections"),
        "{err}"
    );
    pool.close().await;
}
