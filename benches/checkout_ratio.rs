//! The checkout ratio, measured interleaved: rounds alternate between a raw `sqlx::PgPool`
//! and `AuroraPool` on the same instance, so that drift on a noisy machine hits both
//! sides alike. Prints the median ratio per case (and the spread over rounds) as a table,
//! for the `PgPool` handles (`writer()`, `reader()`, taken per operation or kept, and
//! `&AuroraPool` as an executor) and for the failover-aware paths
//! (`acquire`, `run`), whose extra cost this shows, and for `transaction` against
//! `PgPool::begin` / `commit`.
//!
//! `cargo bench --bench checkout_ratio --features testing` (add `deadpool` for the deadpool
//! flavour against a raw `deadpool_postgres::Pool`). With `metrics` too, the crate records
//! its metrics, into the facade's no-op recorder; with `AURORA_POOL_BENCH_RECORDER=1` as
//! well, into a Prometheus recorder installed first (what a service that exports them pays).

mod support;

use std::sync::Arc;

use aurora_pool::{Role, TransactionOptions};
use sqlx::PgPool;
use support::{Op, via_pool};

const ROUNDS: usize = 15;
const OPS_PER_ROUND: u64 = 2_000;
/// Makes the transaction write (it gets an id) without a table.
const ASSIGNS_XID: &str = "SELECT pg_catalog.txid_current()";

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    #[cfg(feature = "metrics")]
    if std::env::var_os("AURORA_POOL_BENCH_RECORDER").is_some() {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder");
        println!("metrics recorded into a Prometheus recorder");
    }
    let rt = support::runtime();
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
            // Taken once and kept, as an application keeps it in its state.
            ("kept writer()", raw_writer.clone(), {
                let kept = aurora.writer();
                via_pool(move || kept.clone())
            }),
            ("kept reader()", raw_reader.clone(), {
                let kept = aurora.reader();
                via_pool(move || kept.clone())
            }),
            ("&AuroraPool as executor", raw_writer.clone(), {
                let a = aurora.clone();
                Arc::new(move || {
                    let a = a.clone();
                    Box::pin(async move {
                        sqlx::query("SELECT 1").execute(&a).await.expect("SELECT 1");
                    })
                })
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
        // `CHECKOUT_RATIO_ONLY=deadpool` measures the deadpool flavour alone;
        // `CHECKOUT_RATIO_ONLY=acquire` (any other text) the sqlx cases whose name holds it.
        // `CHECKOUT_RATIO_ROUNDS=45` runs more rounds, to narrow the spread.
        let only = std::env::var("CHECKOUT_RATIO_ONLY").unwrap_or_default();
        let only_deadpool = only == "deadpool";
        let rounds = std::env::var("CHECKOUT_RATIO_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(ROUNDS);
        for (name, raw_pool, aurora_op) in cases
            .into_iter()
            .filter(|(name, ..)| !only_deadpool && name.contains(only.as_str()))
        {
            support::compare(
                name,
                &via_pool(move || raw_pool.clone()),
                &aurora_op,
                rounds,
                OPS_PER_ROUND,
            )
            .await;
        }
        if !only.is_empty() && !only_deadpool {
            return;
        }
        // Transactions against `PgPool::begin` and `commit`: a writing one (the id read
        // before COMMIT, so that a lost COMMIT can be resolved), a read-only one (which skips
        // it) and one with an outcome marker (an INSERT instead of the id read).
        if !only_deadpool {
            bench
                .cluster
                .psql(
                    "instance-1",
                    bench.cluster.database(),
                    &format!(
                        "CREATE TABLE IF NOT EXISTS aurora_pool_outcomes (id text PRIMARY KEY, \
                         by_transaction boolean NOT NULL, written_at timestamptz NOT NULL DEFAULT now()); \
                         GRANT ALL ON aurora_pool_outcomes TO {}",
                        bench.cluster.user()
                    ),
                )
                .await
                .expect("marker table");
            let cases = [
                ("transaction(..) / PgPool::begin", TransactionOptions::new(), ASSIGNS_XID),
                (
                    "read-only transaction_with(..) / PgPool::begin",
                    TransactionOptions::new().read_only(true),
                    "SELECT 1",
                ),
                (
                    "marked transaction_with(..) / PgPool::begin",
                    TransactionOptions::new().outcome_marker("aurora_pool_outcomes"),
                    ASSIGNS_XID,
                ),
            ];
            for (name, options, sql) in cases {
                let raw = raw_writer.clone();
                let raw_tx: Op = Arc::new(move || {
                    let raw = raw.clone();
                    Box::pin(async move {
                        let mut tx = raw.begin().await.expect("begin");
                        sqlx::query(sql).execute(&mut *tx).await.expect("work");
                        tx.commit().await.expect("commit");
                    })
                });
                let a = aurora.clone();
                let aurora_tx: Op = Arc::new(move || {
                    let a = a.clone();
                    Box::pin(async move {
                        a.transaction_with(options, |conn| {
                            Box::pin(async move { sqlx::query(sql).execute(conn).await })
                        })
                        .await
                        .expect("transaction");
                    })
                });
                support::compare(name, &raw_tx, &aurora_tx, ROUNDS, OPS_PER_ROUND / 4).await;
            }
        }
        // The cluster accepts 200 connections: the sqlx pools go before the deadpool ones come.
        let cluster = bench.close_pools().await;
        #[cfg(feature = "deadpool")]
        {
            let (flavour, raw) = support::deadpool_pools(&cluster, "bench-ratio-deadpool").await;
            let raw = support::via_deadpool(move || raw.clone());
            let f = flavour.clone();
            let writer = support::via_deadpool(move || f.writer());
            support::compare("deadpool writer()", &raw, &writer, ROUNDS, OPS_PER_ROUND).await;
            let f = flavour.clone();
            let acquire: Op = Arc::new(move || {
                let f = f.clone();
                Box::pin(async move {
                    let client = f.acquire(Role::Writer).await.expect("checkout");
                    client.simple_query("SELECT 1").await.expect("SELECT 1");
                })
            });
            support::compare(
                "deadpool acquire(Role::Writer)",
                &raw,
                &acquire,
                ROUNDS,
                OPS_PER_ROUND,
            )
            .await;
            flavour.close().await;
        }
        drop(cluster);
    });
}
