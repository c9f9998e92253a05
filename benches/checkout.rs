//! Checkout + `SELECT 1` + release through `AuroraPool` against a raw `sqlx::PgPool` on the
//! same instance, at 1 and 64 concurrent tasks, and the routing decision alone.
//!
//! `cargo bench --bench checkout --features testing`. Compare the pairs as ratios: these
//! machines are noisy, absolute figures are not comparable across runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_pool::AuroraPool;
use aurora_pool::testing::LocalCluster;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const MAX_CONNECTIONS: u32 = 64;

/// Runs `iters` checkouts spread over `tasks` tasks; `pool` is asked for a pool per checkout,
/// as an application would call `.writer()` per unit of work.
async fn run<F>(pool: F, tasks: usize, iters: u64) -> Duration
where
    F: Fn() -> PgPool + Clone + Send + 'static,
{
    let per_task = iters.div_ceil(tasks as u64);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let pool = pool();
                    let mut conn = pool.acquire().await.expect("checkout");
                    sqlx::query("SELECT 1")
                        .execute(&mut *conn)
                        .await
                        .expect("SELECT 1");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    start.elapsed()
}

async fn raw_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .connect(url)
        .await
        .expect("raw pool")
}

/// Opens every connection up front so that no measurement pays for a connect.
async fn warm(pool: impl Fn() -> PgPool + Clone + Send + 'static) {
    run(
        pool,
        MAX_CONNECTIONS as usize,
        u64::from(MAX_CONNECTIONS) * 4,
    )
    .await;
}

fn checkout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (cluster, aurora, raw_writer, raw_reader) = rt.block_on(async {
        let cluster = LocalCluster::start(2).await.expect("cluster");
        // Straight to the servers (no proxy hop), the same addresses for both sides.
        let direct_url = |id: &str| {
            let addr = cluster.direct_addr(id).expect("instance");
            format!(
                "postgres://{}:{}@{addr}/{}",
                cluster.user(),
                cluster.password(),
                cluster.database()
            )
        };
        let endpoints: String =
            url::form_urlencoded::byte_serialize(cluster.direct_endpoints_param().as_bytes())
                .collect();
        let aurora = AuroraPool::connect(&format!(
            "{}?instance_endpoints={endpoints}&cluster_id=bench\
             &writer_max_connections={MAX_CONNECTIONS}&reader_max_connections={MAX_CONNECTIONS}",
            direct_url("instance-1")
        ))
        .await
        .expect("aurora pool");
        let raw_writer = raw_pool(&direct_url("instance-1")).await;
        let raw_reader = raw_pool(&direct_url("instance-2")).await;
        (cluster, aurora, raw_writer, raw_reader)
    });
    rt.block_on(async {
        let a = aurora.clone();
        warm(move || a.writer()).await;
        let a = aurora.clone();
        warm(move || a.reader()).await;
        let w = raw_writer.clone();
        warm(move || w.clone()).await;
        let r = raw_reader.clone();
        warm(move || r.clone()).await;
    });

    let mut group = c.benchmark_group("checkout_select1");
    group
        .measurement_time(Duration::from_secs(4))
        .sample_size(30);
    type PoolFor = Arc<dyn Fn() -> PgPool + Send + Sync>;
    let cases: [(&str, PoolFor); 4] = [
        ("raw_pgpool_writer", {
            let w = raw_writer.clone();
            Arc::new(move || w.clone())
        }),
        ("aurora_writer", {
            let a = aurora.clone();
            Arc::new(move || a.writer())
        }),
        ("raw_pgpool_reader", {
            let r = raw_reader.clone();
            Arc::new(move || r.clone())
        }),
        ("aurora_reader", {
            let a = aurora.clone();
            Arc::new(move || a.reader())
        }),
    ];
    for tasks in [1usize, 64] {
        for (name, pool_for) in &cases {
            group.bench_with_input(BenchmarkId::new(*name, tasks), &tasks, |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let pool_for = pool_for.clone();
                    run(move || pool_for(), tasks, iters)
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("routing_decision");
    group.bench_function("writer", |b| b.iter(|| black_box(aurora.writer())));
    group.bench_function("reader", |b| b.iter(|| black_box(aurora.reader())));
    group.bench_function("raw_pgpool_clone", |b| {
        b.iter(|| black_box(raw_writer.clone()))
    });
    group.finish();

    rt.block_on(async {
        aurora.close().await;
        raw_writer.close().await;
        raw_reader.close().await;
    });
    drop(cluster);
}

criterion_group!(benches, checkout);
criterion_main!(benches);
