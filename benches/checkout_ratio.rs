//! The checkout ratio, measured interleaved: rounds alternate between a raw `sqlx::PgPool`
//! and `AuroraPool` on the same instance, so that drift on a noisy machine hits both
//! sides alike. Prints the median ratio per case (and the spread over rounds) as a table,
//! for the `PgPool` handles (`writer()`, `reader()`) and for the failover-aware paths
//! (`acquire`, `run`), whose extra cost this shows.
//!
//! `cargo bench --bench checkout_ratio --features testing`

mod support;

use std::sync::Arc;

use aurora_pool::Role;
use sqlx::PgPool;
use support::{Op, run, via_pool, warm};

const ROUNDS: usize = 15;
const OPS_PER_ROUND: u64 = 2_000;

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bench = support::setup("bench-ratio").await;
        let (aurora, raw_writer, raw_reader) = (bench.aurora.clone(), bench.raw_writer.clone(), bench.raw_reader.clone());

        println!("| AuroraPool path | tasks | raw PgPool µs/op | AuroraPool µs/op | ratio (median) | ratio p25-p75 |");
        println!("|---|---|---|---|---|---|");
        let cases: Vec<(&str, PgPool, Op)> = vec![
            ("writer()", raw_writer.clone(), {
                let a = aurora.clone();
                via_pool(move || a.writer())
            }),
            ("reader()", raw_reader.clone(), {
                let a = aurora.clone();
                via_pool(move || a.reader())
            }),
            ("acquire(Role::Writer)", raw_writer.clone(), {
                let a = aurora.clone();
                Arc::new(move || {
                    let a = a.clone();
                    Box::pin(async move {
                        let mut conn = a.acquire(Role::Writer).await.expect("checkout");
                        sqlx::query("SELECT 1").execute(&mut *conn).await.expect("SELECT 1");
                    })
                })
            }),
            ("run(Role::Writer, ..)", raw_writer.clone(), {
                let a = aurora.clone();
                Arc::new(move || {
                    let a = a.clone();
                    Box::pin(async move {
                        a.run(Role::Writer, |conn| Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await }))
                            .await
                            .expect("run");
                    })
                })
            }),
        ];
        for (name, raw_pool, aurora_op) in cases {
            let raw_op = via_pool(move || raw_pool.clone());
            for tasks in [1usize, 64] {
                // Warm up both: every connection open before measuring.
                warm(&raw_op).await;
                warm(&aurora_op).await;
                let (mut ratios, mut raw_us, mut aurora_us) = (Vec::new(), Vec::new(), Vec::new());
                for round in 0..ROUNDS {
                    // Alternate which side goes first.
                    let (r, a) = if round % 2 == 0 {
                        let r = run(&raw_op, tasks, OPS_PER_ROUND).await;
                        (r, run(&aurora_op, tasks, OPS_PER_ROUND).await)
                    } else {
                        let a = run(&aurora_op, tasks, OPS_PER_ROUND).await;
                        (run(&raw_op, tasks, OPS_PER_ROUND).await, a)
                    };
                    ratios.push(a.as_secs_f64() / r.as_secs_f64());
                    raw_us.push(r.as_secs_f64() * 1e6 / OPS_PER_ROUND as f64);
                    aurora_us.push(a.as_secs_f64() * 1e6 / OPS_PER_ROUND as f64);
                }
                for v in [&mut ratios, &mut raw_us, &mut aurora_us] {
                    v.sort_by(f64::total_cmp);
                }
                println!(
                    "| {name} | {tasks} | {:.1} | {:.1} | {:.3} | {:.3}-{:.3} |",
                    quantile(&raw_us, 0.5),
                    quantile(&aurora_us, 0.5),
                    quantile(&ratios, 0.5),
                    quantile(&ratios, 0.25),
                    quantile(&ratios, 0.75),
                );
            }
        }
        bench.close().await;
    });
}
