//! Checkout + `SELECT 1` + release through `AuroraPool` against a raw `sqlx::PgPool` on the
//! same instance, at 1 and 64 concurrent tasks, and the routing decision alone.
//!
//! With the `deadpool` feature, also the deadpool flavour (`writer()` and `acquire`) against a
//! raw `deadpool_postgres::Pool` on the same instance.
//!
//! `cargo bench --bench checkout --features testing,deadpool`. Compare the pairs as ratios:
//! these machines are noisy, absolute figures are not comparable across runs; the interleaved
//! `checkout_ratio` bench gives the steadier figure.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Op, run, via_pool, warm};

fn checkout(c: &mut Criterion) {
    let rt = support::runtime();
    let bench = rt.block_on(support::setup("bench"));
    let cases: [(&str, Op); 4] = [
        ("raw_pgpool_writer", {
            let w = bench.raw_writer.clone();
            via_pool(move || w.clone())
        }),
        ("aurora_writer", {
            let a = bench.aurora.clone();
            via_pool(move || a.writer())
        }),
        ("raw_pgpool_reader", {
            let r = bench.raw_reader.clone();
            via_pool(move || r.clone())
        }),
        ("aurora_reader", {
            let a = bench.aurora.clone();
            via_pool(move || a.reader())
        }),
    ];
    checkout_group(c, &rt, "checkout_select1", &cases);

    let mut group = c.benchmark_group("routing_decision");
    group.bench_function("writer", |b| b.iter(|| black_box(bench.aurora.writer())));
    group.bench_function("reader", |b| b.iter(|| black_box(bench.aurora.reader())));
    group.bench_function("raw_pgpool_clone", |b| {
        b.iter(|| black_box(bench.raw_writer.clone()))
    });
    group.finish();

    // The cluster accepts 200 connections: the sqlx pools go before the deadpool ones come.
    let cluster = rt.block_on(bench.close_pools());
    #[cfg(feature = "deadpool")]
    deadpool_checkout(c, &rt, &cluster);
    drop(cluster);
}

/// Measures each case at 1 and 64 tasks, every connection opened beforehand.
fn checkout_group(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    cases: &[(&str, Op)],
) {
    rt.block_on(async {
        for (_, op) in cases {
            warm(op).await;
        }
    });
    let mut group = c.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(4))
        .sample_size(30);
    for tasks in [1usize, 64] {
        for (name, op) in cases {
            group.bench_with_input(BenchmarkId::new(*name, tasks), &tasks, |b, &tasks| {
                b.to_async(rt).iter_custom(|iters| {
                    let op = op.clone();
                    async move { run(&op, tasks, iters).await }
                })
            });
        }
    }
    group.finish();
}

/// The deadpool flavour against a raw `deadpool_postgres::Pool` on the same instance.
#[cfg(feature = "deadpool")]
fn deadpool_checkout(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    cluster: &aurora_pool::testing::LocalCluster,
) {
    use aurora_pool::Role;
    use support::via_deadpool;

    let (aurora, raw) = rt.block_on(support::deadpool_pools(cluster, "bench-deadpool"));
    let cases: [(&str, Op); 3] = [
        ("raw_deadpool_writer", {
            let raw = raw.clone();
            via_deadpool(move || raw.clone())
        }),
        ("aurora_deadpool_writer", {
            let a = aurora.clone();
            via_deadpool(move || a.writer())
        }),
        ("aurora_deadpool_acquire_writer", {
            let a = aurora.clone();
            std::sync::Arc::new(move || {
                let a = a.clone();
                Box::pin(async move {
                    let client = a.acquire(Role::Writer).await.expect("checkout");
                    client.simple_query("SELECT 1").await.expect("SELECT 1");
                })
            })
        }),
    ];
    checkout_group(c, rt, "checkout_select1_deadpool", &cases);
    rt.block_on(aurora.close());
}

criterion_group!(benches, checkout);
criterion_main!(benches);
