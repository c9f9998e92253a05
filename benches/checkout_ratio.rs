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
use support::{Op, via_pool};

const ROUNDS: usize = 15;
const OPS_PER_ROUND: u64 = 2_000;

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bench = support::setup("bench-ratio").await;
        let (aurora, raw_writer, raw_reader) = (
            bench.aurora.clone(),
            bench.raw_writer.clone(),
            bench.raw_reader.clone(),
        );

        support::print_header();
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
                        sqlx::query("SELECT 1")
                            .execute(&mut *conn)
                            .await
                            .expect("SELECT 1");
                    })
                })
            }),
            ("run(Role::Writer, ..)", raw_writer.clone(), {
                let a = aurora.clone();
                Arc::new(move || {
                    let a = a.clone();
                    Box::pin(async move {
                        a.run(Role::Writer, |conn| {
                            Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await })
                        })
                        .await
                        .expect("run");
                    })
                })
            }),
        ];
        for (name, raw_pool, aurora_op) in cases {
            support::compare(
                name,
                &via_pool(move || raw_pool.clone()),
                &aurora_op,
                ROUNDS,
                OPS_PER_ROUND,
            )
            .await;
        }
        bench.close().await;
    });
}
