//! Handles that live as long as the process: a `writer()` and a `reader()` taken once at
//! startup, kept in application state, and used across a writer crash, a planned switchover
//! and a reader crash, with the DEFAULT settings. They follow their role, never fail with
//! `PoolClosed`, and never reach an instance that left their role.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::eventually;
use support::flavour::{Flavour, INSTANCE_ID, connect, flavour_tests};

/// An INSERT that names the instance that took it.
const WRITE: &str =
    "INSERT INTO handles_t VALUES (1) RETURNING pg_catalog.aurora_db_instance_identifier()";

/// Whether an error says the pool was closed (sqlx: "attempted to acquire a connection on
/// a closed pool"; deadpool: "Pool has been closed").
fn says_closed(message: &str) -> bool {
    message.contains("closed pool") || message.contains("has been closed")
}

/// Writes through `handle` every 20 ms until `stop`, counting the errors that say the pool
/// was closed.
fn keep_writing<F: Flavour>(
    handle: F::Handle,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut writes = 0;
        while !stop.load(Ordering::Relaxed) {
            let write =
                tokio::time::timeout(Duration::from_secs(5), F::handle_text(&handle, WRITE));
            match write.await {
                Ok(Ok(_)) => writes += 1,
                Ok(Err(err)) if says_closed(&err) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writes
    })
}

/// Every one of `n` writes through `handle` lands on `writer`.
async fn all_writes_land_on<F: Flavour>(handle: &F::Handle, writer: &str, n: usize) {
    for i in 0..n {
        let landed = F::handle_text(handle, WRITE).await;
        assert_eq!(
            landed.as_deref(),
            Ok(writer),
            "write {i} through the handle kept from startup"
        );
    }
}

async fn handles_kept_from_startup_follow_a_crash_and_a_switchover<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    // Taken once, as an application keeps them in its state.
    let writer = pool.handle(Role::Writer);
    let reader = pool.handle(Role::Reader);
    pool.execute("CREATE TABLE handles_t (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "handles_t").await;
    all_writes_land_on::<F>(&writer, "instance-1", 3).await;

    let (stop, closed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let background = keep_writing::<F>(writer.clone(), stop.clone(), closed.clone());

    // A crash: instance-2 promoted, the old writer back as a replica a second later.
    cluster
        .failover("instance-2", Some(Duration::from_secs(1)))
        .await
        .expect("failover");
    let moved = eventually(Duration::from_secs(15), || async {
        F::handle_text(&writer, WRITE).await.as_deref() == Ok("instance-2")
    })
    .await;
    assert!(
        moved,
        "the kept writer handle never reached the new writer: {}",
        pool.topology()
    );
    cluster.wait_rejoined("instance-1").await.expect("rejoin");
    all_writes_land_on::<F>(&writer, "instance-2", 20).await;

    // A planned switchover: the old writer stays up, demoted. A connection kept from before
    // would now fail every write with 25006.
    cluster.switchover("instance-3").await.expect("switchover");
    let moved = eventually(Duration::from_secs(15), || async {
        F::handle_text(&writer, WRITE).await.as_deref() == Ok("instance-3")
    })
    .await;
    assert!(
        moved,
        "the kept writer handle never reached instance-3: {}",
        pool.topology()
    );
    all_writes_land_on::<F>(&writer, "instance-3", 20).await;

    stop.store(true, Ordering::Relaxed);
    let writes = background.await.expect("writer task");
    assert!(writes > 0, "the background writes never succeeded");
    assert_eq!(
        closed.load(Ordering::Relaxed),
        0,
        "writes through the kept handle failed with a closed pool"
    );
    assert!(!F::handle_is_closed(&writer));

    // The kept reader handle reads from a reader, never from the new writer it used to
    // read from.
    for _ in 0..10 {
        let served = F::handle_text(&reader, INSTANCE_ID).await.expect("read");
        assert_ne!(
            served, "instance-3",
            "a read through the kept reader handle went to the writer"
        );
    }
    assert!(!F::handle_is_closed(&reader));
    pool.close().await;
}

async fn a_reader_handle_kept_from_startup_follows_a_reader_crash<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let reader = pool.handle(Role::Reader);
    let served = F::spread_of(&reader, 32).await;
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        ["instance-2", "instance-3"],
        "the reader handle spreads its connections over both readers"
    );
    cluster.crash("instance-3").await.expect("crash");
    let recovered = eventually(Duration::from_secs(15), || async {
        let mut ok = 0;
        for _ in 0..10 {
            match F::handle_text(&reader, INSTANCE_ID).await {
                Ok(id) if id == "instance-2" => ok += 1,
                _ => break,
            }
        }
        ok == 10
    })
    .await;
    assert!(
        recovered,
        "reads through the kept reader handle did not all move to instance-2: {}",
        pool.topology()
    );
    assert!(!F::handle_is_closed(&reader));
    pool.close().await;
}

/// The writer role moves while the old writer stays up and writable (a replica promoted
/// beside it; its catalog names it the newer writer): the connections the kept writer handle
/// holds on the old writer still work, and must not take another write.
async fn a_kept_writer_handle_leaves_a_writer_that_stays_up<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let writer = pool.handle(Role::Writer);
    pool.execute("CREATE TABLE handles_t (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "handles_t").await;
    // Several idle connections on instance-1, as a busy service keeps.
    let served = F::spread_of(&writer, 16).await;
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["instance-1"]);

    cluster
        .psql(
            "instance-2",
            cluster.database(),
            "SELECT pg_catalog.pg_promote(true, 60); \
             UPDATE aurora_emul.instances SET is_writer = (server_id = 'instance-2'), \
             writer_since = CASE WHEN server_id = 'instance-2' THEN now() ELSE writer_since END",
        )
        .await
        .expect("promote instance-2 beside the writer");
    let moved = eventually(Duration::from_secs(15), || async {
        pool.topology().writer().id() == "instance-2"
    })
    .await;
    assert!(
        moved,
        "the pool never adopted instance-2: {}",
        pool.topology()
    );
    all_writes_land_on::<F>(&writer, "instance-2", 20).await;
    pool.close().await;
}

/// `let writer = AuroraPool::connect(url).await?.writer();`: the handle outlives its
/// `AuroraPool` and still follows a writer crash, with the defaults, landing on the new writer
/// within the silent-failure bound (2.5 s) of the promotion.
async fn a_handle_outlives_its_pool<F: Flavour>(test: &str) {
    let bound = Duration::from_millis(2500);
    let cluster = LocalCluster::start(2).await.expect("cluster");
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            "CREATE TABLE handles_t (n int); GRANT ALL ON handles_t TO PUBLIC;",
        )
        .await
        .expect("create");
    support::replicated(&cluster, "handles_t").await;
    let writer = connect::<F>(&cluster, test, "").await.handle(Role::Writer);
    assert_eq!(
        F::handle_text(&writer, WRITE).await.as_deref(),
        Ok("instance-1")
    );
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let promoted = std::time::Instant::now();
    let mut last = None;
    while promoted.elapsed() < bound {
        match F::handle_text(&writer, WRITE).await {
            Ok(id) if id == "instance-2" => {
                eprintln!(
                    "{test}: the kept handle wrote on the new writer {:?} after the promotion",
                    promoted.elapsed()
                );
                return;
            }
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "a handle kept after its AuroraPool was dropped did not reach the new writer within {bound:?} of the promotion; last: {last:?}"
    );
}

flavour_tests!(
    a_handle_outlives_its_pool,
    a_kept_writer_handle_leaves_a_writer_that_stays_up,
    handles_kept_from_startup_follow_a_crash_and_a_switchover,
    a_reader_handle_kept_from_startup_follows_a_reader_crash,
);

/// How the writer changes under a listener.
#[derive(Debug, Clone, Copy)]
enum WriterChange {
    /// The writer crashes; instance-2 is promoted.
    Crash,
    /// A planned switchover to instance-2: the old writer comes back up as a reader.
    Switchover,
}

/// `PgListener` over the kept writer handle, opened the documented way: after a writer crash
/// it reconnects through the handle, which by then points at the new writer, and listens
/// again; a NOTIFY sent on the new writer reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_the_writer_handle_hears_the_new_writer() {
    listener_follows("a_listener_on_the_writer_handle", WriterChange::Crash).await;
}

/// The same across a switchover where the old writer stays up as a reader (#22 item 9): the
/// listener must not stay on it, where it would hear nothing and report nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_the_writer_handle_follows_a_switchover() {
    listener_follows("a_listener_across_a_switchover", WriterChange::Switchover).await;
}

async fn listener_follows(test: &str, change: WriterChange) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: aurora_pool::AuroraPool = connect(&cluster, test, "").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool.writer())
        .await
        .expect("listener");
    listener.listen("jobs").await.expect("listen");
    sqlx::query("SELECT pg_catalog.pg_notify('jobs', 'before')")
        .execute(&pool)
        .await
        .expect("notify before");
    let before = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the first notification")
        .expect("recv");
    assert_eq!(before.payload(), "before");

    match change {
        WriterChange::Crash => cluster.failover("instance-2", None).await,
        WriterChange::Switchover => cluster.switchover("instance-2").await,
    }
    .expect("writer change");
    // Notifications sent while the listener reconnects are lost (PostgreSQL keeps none for
    // a session that is gone): keep sending until one arrives, each on the new writer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut heard = None;
    while heard.is_none() && tokio::time::Instant::now() < deadline {
        let sent: Result<String, _> = sqlx::query_scalar(
            "SELECT pg_catalog.aurora_db_instance_identifier() FROM pg_catalog.pg_notify('jobs', 'after')",
        )
        .fetch_one(&pool)
        .await;
        if let Ok(sent_on) = sent {
            assert_eq!(
                sent_on, "instance-2",
                "a NOTIFY through the pool went to the old writer"
            );
        }
        // A reconnect that failed is tried again at the next `recv`.
        if let Ok(Ok(notification)) =
            tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
        {
            heard = Some(notification.payload().to_owned());
        }
    }
    assert_eq!(
        heard.as_deref(),
        Some("after"),
        "after a {change:?}, the listener on the writer handle heard nothing from the new writer within 20 s: {}",
        pool.topology()
    );
    pool.close().await;
}
