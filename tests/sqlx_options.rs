//! sqlx's own settings reach every pool of an `AuroraPool`: the writer's, the readers',
//! and the per-reader pools behind `acquire` and `run`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// Sizes and timeouts given in code on `AuroraPoolOptions` (as `Duration`s) win over the
/// URL's parameters and reach the pools, through `connect` and `connect_with` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_and_timeouts_in_code_win_over_the_url() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let url = support::url_with(
        &cluster,
        "writer_max_connections=7&reader_max_connections=7&acquire_timeout_ms=9000",
    );
    let pool = AuroraPoolOptions::new()
        .cluster_id(support::unique_cluster_id("sqlx-options-sizes"))
        .writer_max_connections(3)
        .reader_max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .failover_timeout(Duration::from_secs(4))
        .connect(&url)
        .await
        .expect("connect");
    let config = pool.config();
    assert_eq!(
        (config.writer.max_connections, config.reader.max_connections),
        (3, 4)
    );
    assert_eq!(config.acquire_timeout, Duration::from_secs(2));
    assert_eq!(config.failover_timeout, Duration::from_secs(4));
    let (writer, reader) = (pool.writer(), pool.reader());
    assert_eq!(writer.options().get_max_connections(), 3);
    assert_eq!(reader.options().get_max_connections(), 4);
    assert_eq!(
        writer.options().get_acquire_timeout(),
        Duration::from_secs(2)
    );
    pool.close().await;

    let pool = AuroraPoolOptions::new()
        .writer_max_connections(5)
        .connect_with(config_of(&cluster, "sqlx-options-sizes-config"))
        .await
        .expect("connect_with");
    assert_eq!(pool.writer().options().get_max_connections(), 5);
    pool.close().await;
}

fn config_of(cluster: &LocalCluster, test: &str) -> aurora_pool::Config {
    config(cluster, test, "writer_max_connections=7")
}
