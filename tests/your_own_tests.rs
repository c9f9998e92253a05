//! The README's recipe for a service's own tests ("Tests of your own service"), written as a
//! new user writes them: plain `#[tokio::test]`s (a current-thread runtime each), run in
//! parallel, each starting a cluster of its own, applying the service's migrations and
//! connecting with default settings; one of them fails the writer over mid-test.

use std::path::Path;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};

/// What `#[sqlx::test]` gives a test, for a service on `AuroraPool`: a database of its own
/// (here a cluster of its own), the migrations applied, a pool with default settings.
async fn test_pool() -> (LocalCluster, AuroraPool) {
    let cluster = LocalCluster::start(2).await.expect("a local cluster");
    let pool = AuroraPool::connect(&cluster.url()).await.expect("connect");
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrations");
    sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("the migrations")
        .run(&pool)
        .await
        .expect("migrations applied");
    (cluster, pool)
}

/// The service's code, written for a `PgPool`: unchanged.
async fn create_order(db: &sqlx::PgPool, id: i64, item: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO orders (id, item) VALUES ($1, $2)")
        .bind(id)
        .bind(item)
        .execute(db)
        .await
        .map(drop)
}

async fn order_count(db: &sqlx::PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await
}

#[tokio::test]
async fn an_order_is_created_and_read_back() {
    let (_cluster, pool) = test_pool().await;
    let db = pool.writer();
    create_order(&db, 1, "tea").await.expect("create");
    assert_eq!(order_count(&db).await.expect("count"), 1);
    // `&AuroraPool` is an executor on the writer, as `&PgPool` was.
    let item: String = sqlx::query_scalar("SELECT item FROM orders WHERE id = 1")
        .fetch_one(&pool)
        .await
        .expect("read back");
    assert_eq!(item, "tea");
    pool.close().await;
}

#[tokio::test]
async fn a_transaction_is_committed_on_the_writer() {
    let (_cluster, pool) = test_pool().await;
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (id, item) VALUES (1, 'milk'), (2, 'bread')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(order_count(&pool.writer()).await.expect("count"), 2);
    pool.close().await;
}

#[tokio::test]
async fn orders_keep_coming_through_a_writer_failover() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (cluster, pool) = test_pool().await;
    // Kept, as a service keeps it in its state.
    let db = pool.writer();
    create_order(&db, 1, "before")
        .await
        .expect("before the failover");
    cluster.crash("instance-1").await.expect("crash");
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    // No retry loop and no timeout of the test's own: the kept handle waits for the new
    // writer and writes there.
    create_order(&db, 2, "after")
        .await
        .expect("after the failover");
    // As on Aurora's shared storage, the order acknowledged before the crash is there.
    assert_eq!(order_count(&db).await.expect("count"), 2);
    let writer = pool
        .acquire(Role::Writer)
        .await
        .expect("a writer connection");
    drop(writer);
    assert_eq!(pool.topology().writer().id(), "instance-2");
    pool.close().await;
}
