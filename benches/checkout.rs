//! Checkout + `SELECT 1` + release through `AuroraPool` against a raw `sqlx::PgPool` on the
//! same instance, at 1 and 64 concurrent tasks, and the routing decision alone.
//!
//! `cargo bench --bench checkout --features testing`. Compare the pairs as ratios: these
//! machines are noisy, absolute figures are not comparable across runs.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Op, run, via_pool, warm};

fn checkout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
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
    rt.block_on(async {
        for (_, op) in &cases {
            warm(op).await;
        }
    });

    let mut group = c.benchmark_group("checkout_select1");
    group
        .measurement_time(Duration::from_secs(4))
        .sample_size(30);
    for tasks in [1usize, 64] {
        for (name, op) in &cases {
            group.bench_with_input(BenchmarkId::new(*name, tasks), &tasks, |b, &tasks| {
                b.to_async(&rt).iter_custom(|iters| {
                    let op = op.clone();
                    async move { run(&op, tasks, iters).await }
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("routing_decision");
    group.bench_function("writer", |b| b.iter(|| black_box(bench.aurora.writer())));
    group.bench_function("reader", |b| b.iter(|| black_box(bench.aurora.reader())));
    group.bench_function("raw_pgpool_clone", |b| {
        b.iter(|| black_box(bench.raw_writer.clone()))
    });
    group.finish();

    rt.block_on(bench.close());
}

criterion_group!(benches, checkout);
criterion_main!(benches);
