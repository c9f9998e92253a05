//! sqlx's own settings reach every pool of an `AuroraPool`: the writer's, the readers',
//! and the per-reader pools behind `acquire` and `run`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPoolOptions, Role};
use sqlx::Executor;
use support::flavour::config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_connect_options_apply_to_every_pool() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let checked_out = Arc::new(AtomicUsize::new(0));
    let counter = checked_out.clone();
    let pool = AuroraPoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET search_path = tenant_a, public").await?;
                Ok(())
            })
        })
        .before_acquire(move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(true) })
        })
        .connect_options(|options| options.options([("statement_timeout", "4321")]))
        .connect_with(config(&cluster, "sqlx-options", ""))
        .await
        .expect("connect");

    const SETTINGS: &str = "SELECT pg_catalog.current_setting('search_path') || ' ' || \
                            pg_catalog.current_setting('statement_timeout')";
    let expected = "tenant_a, public 4321ms";
    let on_writer: String = sqlx::query_scalar(SETTINGS)
        .fetch_one(&pool.writer())
        .await
        .expect("writer");
    assert_eq!(on_writer, expected);
    let on_readers: String = sqlx::query_scalar(SETTINGS)
        .fetch_one(&pool.reader())
        .await
        .expect("readers' pool");
    assert_eq!(on_readers, expected);
    let on_a_reader = pool
        .run(Role::Reader, |conn| {
            Box::pin(async move {
                sqlx::query_scalar::<_, String>(SETTINGS)
                    .fetch_one(conn)
                    .await
            })
        })
        .await
        .expect("per-reader pool");
    assert_eq!(on_a_reader, expected);

    // A second checkout of the writer's idle connection runs the user's test too.
    let before = checked_out.load(Ordering::Relaxed);
    sqlx::query("SELECT 1")
        .execute(&pool.writer())
        .await
        .expect("again");
    assert!(checked_out.load(Ordering::Relaxed) > before);
    pool.close().await;
}

/// `&AuroraPool` is an `Acquire`: sqlx's migrator runs on the writer through it, as it runs
/// on `&PgPool`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_through_the_pool() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = aurora_pool::AuroraPool::connect_with(config(&cluster, "sqlx-migrate", ""))
        .await
        .expect("connect");
    let dir = std::env::temp_dir().join(format!("aurora-pool-migrations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("1_orders.sql"),
        "CREATE TABLE orders (id bigint PRIMARY KEY);",
    )
    .expect("migration");
    let migrator = sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .expect("migrator");
    migrator
        .run(&pool)
        .await
        .expect("migrations through &AuroraPool");
    // Run twice: the second finds the first recorded, on the same (writer) database.
    migrator.run(&pool).await.expect("again");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(applied, 1);
    let mut tx = pool.begin().await.expect("begin on the writer");
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let _ = std::fs::remove_dir_all(&dir);
    pool.close().await;
}
