//! Transactions that never lie, against both flavours and a real server: a cancelled
//! transaction leaves no open transaction in the pool, a COMMIT whose answer was lost is
//! resolved (never run twice), a COMMIT that never arrived is run again once, the caller's
//! error comes back unchanged even when the ROLLBACK fails, and a nested `begin()` is a
//! savepoint.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aurora_pool::TransactionOptions;
use aurora_pool::testing::{CutAt, LocalCluster};
use support::eventually;
use support::flavour::{Declined, Flavour, connect, flavour_tests};

/// Rows of `table` with `note`, counted on the writer directly (not through the pool).
async fn rows(cluster: &LocalCluster, table: &str, note: &str) -> u32 {
    let sql = format!("SELECT count(*) FROM {table} WHERE note = '{note}'");
    cluster
        .psql(&cluster.writer_id(), cluster.database(), &sql)
        .await
        .expect("count")
        .trim()
        .parse()
        .expect("a count")
}

async fn table(cluster: &LocalCluster, name: &str) {
    let sql =
        format!("CREATE TABLE {name} (note text PRIMARY KEY); GRANT ALL ON {name} TO PUBLIC;");
    cluster
        .psql("instance-1", cluster.database(), &sql)
        .await
        .expect("create table");
}

async fn a_cancelled_transaction_leaves_nothing_open<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_cancel").await;
    // One connection: the next borrower gets the cancelled transaction's connection if it
    // went back to the pool.
    let pool = connect::<F>(&cluster, test, "writer_max_connections=1").await;
    let cancelled = tokio::time::timeout(
        Duration::from_secs(1),
        pool.transaction_then_wait(
            "INSERT INTO tx_cancel VALUES ('cancelled')",
            Duration::from_secs(30),
        ),
    )
    .await;
    assert!(cancelled.is_err(), "the transaction was not cancelled");
    let idle_in_transaction = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' AND state LIKE 'idle in transaction%'",
        cluster.user()
    );
    let closed = eventually(Duration::from_secs(5), || async {
        cluster
            .psql("instance-1", "postgres", &idle_in_transaction)
            .await
            .expect("pg_stat_activity")
            .trim()
            == "0"
    })
    .await;
    assert!(closed, "a session of the pool sits idle in transaction");
    pool.execute("INSERT INTO tx_cancel VALUES ('next')")
        .await
        .expect("the next borrower's write");
    // Ending every session would roll back a write that ran inside the abandoned transaction.
    pool.close().await;
    assert_eq!(
        rows(&cluster, "tx_cancel", "next").await,
        1,
        "the acknowledged write is gone"
    );
    assert_eq!(rows(&cluster, "tx_cancel", "cancelled").await, 0);
}

async fn a_commit_whose_answer_was_lost_is_not_run_twice<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    table(&cluster, "tx_lost_reply").await;
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    // The server commits; its answer never reaches the pool.
    assert!(cluster.cut_at("instance-1", "COMMIT", CutAt::Reply));
    pool.transaction_counted(
        TransactionOptions::new(),
        "INSERT INTO tx_lost_reply VALUES ('once')",
        runs.clone(),
    )
    .await
    .expect("a commit that happened is a success");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran again");
    assert_eq!(rows(&cluster, "tx_lost_reply", "once").await, 1);
    pool.close().await;
}

async fn a_commit_that_never_arrived_runs_again_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    // No primary key: a second run must show as a second row.
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            "CREATE TABLE tx_lost_commit (note text); GRANT ALL ON tx_lost_commit TO PUBLIC;",
        )
        .await
        .expect("create");
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    // The COMMIT is swallowed and the connection cut: the server rolls back.
    assert!(cluster.cut_at("instance-1", "COMMIT", CutAt::Request));
    pool.transaction_counted(
        TransactionOptions::new(),
        "INSERT INTO tx_lost_commit VALUES ('once')",
        runs.clone(),
    )
    .await
    .expect("rolled back, then run again");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(rows(&cluster, "tx_lost_commit", "once").await, 1);
    pool.close().await;
}

async fn a_commit_killed_in_a_deferred_trigger_runs_again_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    // The first COMMIT runs a deferred trigger that ends its own session: the transaction
    // aborts while the client waits for the COMMIT's answer.
    let setup = "CREATE TABLE tx_trigger (note text); GRANT ALL ON tx_trigger TO PUBLIC; \
        CREATE SEQUENCE tx_trigger_kills; GRANT ALL ON tx_trigger_kills TO PUBLIC; \
        CREATE FUNCTION tx_trigger_kill() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
        BEGIN IF nextval('tx_trigger_kills') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); \
        PERFORM pg_sleep(5); END IF; RETURN NULL; END $$; \
        CREATE CONSTRAINT TRIGGER tx_trigger_kill AFTER INSERT ON tx_trigger \
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tx_trigger_kill();";
    cluster
        .psql("instance-1", cluster.database(), setup)
        .await
        .expect("setup");
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    pool.transaction_counted(
        TransactionOptions::new(),
        "INSERT INTO tx_trigger VALUES ('once')",
        runs.clone(),
    )
    .await
    .expect("aborted at COMMIT, then run again");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(rows(&cluster, "tx_trigger", "once").await, 1);
    pool.close().await;
}

async fn the_callers_error_comes_back_unchanged<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_user_error").await;
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            "INSERT INTO tx_user_error VALUES ('taken')",
        )
        .await
        .expect("seed");
    let pool = connect::<F>(&cluster, test, "").await;
    for cut in [false, true] {
        if cut {
            // The ROLLBACK after the caller's error never reaches the server.
            assert!(cluster.cut_at("instance-1", "ROLLBACK", CutAt::Request));
        }
        let runs = Arc::new(AtomicU32::new(0));
        let err = pool
            .transaction_counted(
                TransactionOptions::new(),
                "INSERT INTO tx_user_error VALUES ('taken')",
                runs.clone(),
            )
            .await
            .expect_err("a duplicate key");
        assert_eq!(
            err.sqlstate(),
            Some("23505"),
            "rollback cut: {cut}: {err:?}"
        );
        assert!(err.is_driver(), "rollback cut: {cut}: {err:?}");
        assert!(!err.is_retryable() && !err.is_transaction_state_unknown());
        assert_eq!(runs.load(Ordering::SeqCst), 1, "rollback cut: {cut}");
    }
    // The pool still works after closing the connection that could not roll back.
    pool.execute("INSERT INTO tx_user_error VALUES ('after')")
        .await
        .expect("a write after");
    pool.close().await;
}

/// The work's own error type comes back as it is: rolled back, never retried, also when the
/// ROLLBACK after it is cut; the crate's own failures arrive converted into that type.
async fn the_callers_own_error_type_comes_back_as_it_is<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_declined").await;
    let pool = connect::<F>(&cluster, test, "").await;
    for cut in [false, true] {
        if cut {
            assert!(cluster.cut_at("instance-1", "ROLLBACK", CutAt::Request));
        }
        let runs = Arc::new(AtomicU32::new(0));
        let outcome = pool
            .transaction_declined(
                "INSERT INTO tx_declined VALUES ('declined')",
                42,
                runs.clone(),
            )
            .await;
        assert!(
            matches!(outcome, Err(Declined::ByTheWork(42))),
            "rollback cut: {cut}: {outcome:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "rollback cut: {cut}");
        assert_eq!(
            rows(&cluster, "tx_declined", "declined").await,
            0,
            "rollback cut: {cut}: the refused work's row was committed"
        );
    }
    pool.close().await;
    let runs = Arc::new(AtomicU32::new(0));
    let outcome = pool.transaction_declined("SELECT 1", 7, runs.clone()).await;
    assert!(
        matches!(&outcome, Err(Declined::Pool(err)) if err.is_closed()),
        "a closed pool's error, converted: {outcome:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

async fn a_read_only_transaction_refuses_writes_at_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_read_only").await;
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        pool.transaction_counted(
            TransactionOptions::new().read_only(true),
            "INSERT INTO tx_read_only VALUES ('no')",
            runs.clone(),
        ),
    )
    .await
    .expect("a write in a READ ONLY transaction is returned at once")
    .expect_err("read only");
    assert_eq!(err.sqlstate(), Some("25006"), "{err:?}");
    assert!(!err.is_failover() && !err.is_retryable(), "{err:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(pool.topology().writer().id(), "instance-1");
    pool.close().await;
}

/// The crate's own read of the transaction's id and server incarnation before COMMIT, as
/// sent (the proxy cuts on the exact text; the read-write half below shows that it matches).
const ID_READ: &str = "SELECT pg_catalog.concat_ws(' ', pg_catalog.to_char(pg_catalog.timezone('UTC', pg_catalog.pg_postmaster_start_time()), 'YYYYMMDDHH24MISSUS'), pg_catalog.txid_current_if_assigned())";

async fn a_read_only_transaction_skips_the_id_read<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_skip").await;
    let pool = connect::<F>(&cluster, test, "").await;
    // A read-write transaction sends the read: cut there (before COMMIT), it runs again.
    assert!(cluster.cut_at("instance-1", ID_READ, CutAt::Request));
    let runs = Arc::new(AtomicU32::new(0));
    pool.transaction_counted(
        TransactionOptions::new(),
        "INSERT INTO tx_skip VALUES ('written')",
        runs.clone(),
    )
    .await
    .expect("cut before COMMIT, then run again");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the id read was not sent");
    // A read-only one never sends it: the same cut, armed again, is never met.
    assert!(cluster.cut_at("instance-1", ID_READ, CutAt::Request));
    let runs = Arc::new(AtomicU32::new(0));
    pool.transaction_counted(
        TransactionOptions::new().read_only(true),
        "SELECT count(*) FROM tx_skip",
        runs.clone(),
    )
    .await
    .expect("read only");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a read-only transaction read its id (and was cut there)"
    );
    pool.close().await;
}

flavour_tests!(
    a_read_only_transaction_skips_the_id_read,
    a_cancelled_transaction_leaves_nothing_open,
    a_commit_whose_answer_was_lost_is_not_run_twice,
    a_commit_that_never_arrived_runs_again_once,
    a_commit_killed_in_a_deferred_trigger_runs_again_once,
    the_callers_error_comes_back_unchanged,
    the_callers_own_error_type_comes_back_as_it_is,
    a_read_only_transaction_refuses_writes_at_once,
);

/// sqlx only: work written the way sqlx users write it, a closure returning `sqlx::Error`,
/// compiles without annotations; the server's error comes back as the original sqlx error,
/// and the crate's own verdicts stay reachable through `Error::inside`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_returning_sqlx_errors_keeps_both_errors() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_sqlx_error").await;
    let pool: aurora_pool::AuroraPool = connect(&cluster, "sqlx-error-work", "").await;
    let insert = || {
        pool.transaction(|conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO tx_sqlx_error VALUES ('once')")
                    .execute(conn)
                    .await
            })
        })
    };
    insert().await.expect("the first insert");
    let err = insert().await.expect_err("a duplicate key");
    let database = err.as_database_error().expect("the server's own error");
    assert!(database.is_unique_violation(), "{err:?}");
    assert!(aurora_pool::Error::inside(&err).is_none(), "{err:?}");
    // A verdict of the crate's (here: the outcome of a COMMIT whose reply was lost and that
    // took no id) arrives as an I/O error that carries the crate's error.
    assert!(cluster.cut_at("instance-1", "COMMIT", CutAt::Reply));
    let err = pool
        .transaction(|conn| {
            Box::pin(async move { sqlx::query("NOTIFY tx_channel").execute(conn).await })
        })
        .await
        .expect_err("the COMMIT's reply was lost");
    assert!(matches!(err, sqlx::Error::Io(_)), "{err:?}");
    let inside = aurora_pool::Error::inside(&err).expect("the crate's error inside");
    assert!(inside.is_transaction_state_unknown(), "{inside:?}");
    pool.close().await;
}

/// sqlx only: the work gets sqlx's own transaction, so a `begin()` inside it is a
/// savepoint whose commit commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_begin_is_a_savepoint() {
    use sqlx::Connection;
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_nested").await;
    let pool: aurora_pool::AuroraPool = connect(&cluster, "sqlx-nested-begin", "").await;
    let outcome: aurora_pool::Result<()> = pool
        .transaction(|conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO tx_nested VALUES ('outer')")
                    .execute(&mut *conn)
                    .await?;
                let mut inner = conn.begin().await?;
                sqlx::query("INSERT INTO tx_nested VALUES ('inner')")
                    .execute(&mut *inner)
                    .await?;
                inner.commit().await?;
                // The caller changes its mind after the nested commit.
                Err(sqlx::Error::RowNotFound.into())
            })
        })
        .await;
    assert!(outcome.is_err());
    assert_eq!(
        rows(&cluster, "tx_nested", "outer").await,
        0,
        "committed early"
    );
    assert_eq!(
        rows(&cluster, "tx_nested", "inner").await,
        0,
        "committed early"
    );
    pool.close().await;
}

/// deadpool only: work written the way tokio-postgres users write it, a closure returning
/// `tokio_postgres::Error`, compiles without annotations; the call returns the crate's error,
/// which classifies the server's error and keeps the original as its source, and carries the
/// crate's own verdicts (#23 item 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_returning_tokio_postgres_errors_keeps_both_errors() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "tx_pg_error").await;
    let pool: aurora_pool::deadpool::AuroraPool =
        connect(&cluster, "deadpool-pg-error-work", "").await;
    let insert = || {
        pool.transaction(|client| {
            Box::pin(async move {
                client
                    .execute("INSERT INTO tx_pg_error VALUES ('once')", &[])
                    .await
            })
        })
    };
    assert_eq!(insert().await.expect("the first insert"), 1);
    let err = insert().await.expect_err("a duplicate key");
    assert!(err.is_driver(), "{err:?}");
    assert_eq!(err.sqlstate(), Some("23505"), "{err:?}");
    let original = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<tokio_postgres::Error>())
        .expect("the client's own error as the source");
    assert_eq!(
        original.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    // A verdict of the crate's: the outcome of a COMMIT whose reply was lost and that took
    // no id.
    assert!(cluster.cut_at("instance-1", "COMMIT", CutAt::Reply));
    let err = pool
        .transaction(|client| {
            Box::pin(async move { client.batch_execute("NOTIFY tx_channel").await })
        })
        .await
        .expect_err("the COMMIT's reply was lost");
    assert!(err.is_transaction_state_unknown(), "{err:?}");
    assert_eq!(rows(&cluster, "tx_pg_error", "once").await, 1);
    pool.close().await;
}
