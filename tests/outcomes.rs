//! Never applied twice, never reported wrong (#23), both flavours, default settings unless a
//! test says otherwise: `run` does not run again a write whose connection was lost after it
//! was sent (a lost reply; a writer declared dead while it is in fact busy), it says the
//! outcome is unknown; work declared idempotent does run again; a transaction that took no
//! id (NOTIFY) and lost its COMMIT reply is not run again; `failover_timeout` does not bound
//! running work.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aurora_pool::testing::{CutAt, LocalCluster};
use aurora_pool::{Error, RetryPolicy, Role, TransactionOptions};
use support::eventually;
use support::flavour::{Flavour, connect, flavour_tests};

/// Rows of `table`, counted on the writer directly (not through the pool).
async fn rows(cluster: &LocalCluster, table: &str) -> u32 {
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            &format!("SELECT count(*) FROM {table}"),
        )
        .await
        .expect("count")
        .trim()
        .parse()
        .expect("a count")
}

/// A table without a key: a second run of an insert shows as a second row.
async fn table(cluster: &LocalCluster, name: &str) {
    let sql = format!("CREATE TABLE {name} (note text); GRANT ALL ON {name} TO PUBLIC;");
    cluster
        .psql("instance-1", cluster.database(), &sql)
        .await
        .expect("create table");
}

fn assert_unknown(err: &Error) {
    assert!(err.is_outcome_unknown(), "not an unknown outcome: {err:?}");
    assert!(
        !err.is_failover() && !err.is_retryable(),
        "an unknown outcome must not invite a resend: {err:?}"
    );
}

async fn a_write_whose_reply_was_lost_is_applied_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    table(&cluster, "out_lost_reply").await;
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    // The server runs and commits the insert; its answer never reaches the pool.
    let insert = "INSERT INTO out_lost_reply VALUES ('once')";
    assert!(cluster.cut_at("instance-1", insert, CutAt::Reply));
    let err = pool
        .run_counted(RetryPolicy::new(), Role::Writer, insert, runs.clone())
        .await
        .expect_err("the answer was lost: the outcome is not known");
    assert_unknown(&err);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the write ran again");
    assert_eq!(rows(&cluster, "out_lost_reply").await, 1);
    pool.close().await;
}

async fn idempotent_work_runs_again_after_a_lost_reply<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    table(&cluster, "out_idempotent").await;
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    let insert = "INSERT INTO out_idempotent VALUES ('again')";
    assert!(cluster.cut_at("instance-1", insert, CutAt::Reply));
    pool.run_counted(
        RetryPolicy::new().idempotent(),
        Role::Writer,
        insert,
        runs.clone(),
    )
    .await
    .expect("declared idempotent: run again");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    pool.close().await;
}

async fn a_write_on_a_writer_wrongly_declared_dead_is_applied_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    table(&cluster, "out_false_alarm").await;
    // A bounded wait for a writer, so that the old behaviour (running the write again once
    // the writer answers) shows as a second row instead of a hang.
    let pool = connect::<F>(&cluster, test, "failover_timeout_ms=30000").await;
    let runs = Arc::new(AtomicU32::new(0));
    let slow = "INSERT INTO out_false_alarm SELECT 'once' FROM pg_catalog.pg_sleep(2)";
    let run = {
        let (pool, runs) = (pool.clone(), runs.clone());
        tokio::spawn(async move {
            pool.run_counted(RetryPolicy::new(), Role::Writer, slow, runs)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The writer goes silent to this process (it is busy, not dead: its statement runs on)
    // until the probes declare it dead, then answers again.
    assert!(cluster.blackhole("instance-1", true));
    let declared = eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance("instance-1")
            .is_some_and(|i| !i.is_available())
    })
    .await;
    assert!(declared, "the silent writer was not declared dead");
    cluster.blackhole("instance-1", false);
    let err = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("run returns")
        .expect("join")
        .expect_err("the write was cut off after it was sent");
    assert_unknown(&err);
    // The server finishes the statement its client left.
    let applied = eventually(Duration::from_secs(10), || async {
        rows(&cluster, "out_false_alarm").await == 1
    })
    .await;
    assert!(applied, "the abandoned statement never completed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the write ran again");
    assert_eq!(rows(&cluster, "out_false_alarm").await, 1);
    pool.close().await;
}

async fn a_notify_whose_commit_reply_was_lost_is_sent_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    // NOTIFY takes the transaction's id only at COMMIT: none when it is read.
    assert!(cluster.cut_at("instance-1", "COMMIT", CutAt::Reply));
    let err = pool
        .transaction_counted(
            TransactionOptions::new(),
            "NOTIFY out_channel",
            runs.clone(),
        )
        .await
        .expect_err("the COMMIT's answer was lost and nothing tells what became of it");
    assert_unknown(&err);
    assert!(err.is_transaction_state_unknown(), "{err:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the notification was sent again"
    );
    pool.close().await;
}

async fn failover_timeout_does_not_bound_running_work<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    // A 1 s failover_timeout stands in for the default 30 s against a 2 s statement.
    let pool = connect::<F>(&cluster, test, "failover_timeout_ms=1000").await;
    pool.run("SELECT pg_catalog.pg_sleep(2)")
        .await
        .expect("run outlives failover_timeout");
    pool.transaction_then_wait("SELECT 1", Duration::from_secs(2))
        .await
        .expect("a transaction outlives failover_timeout");
    // A limit the caller sets does bound the work, and says so.
    let err = pool
        .run_with_policy(
            RetryPolicy::new().timeout(Duration::from_millis(500)),
            Role::Writer,
            "SELECT pg_catalog.pg_sleep(2)",
        )
        .await
        .expect_err("the caller's limit cuts the work");
    assert!(format!("{err:#}").contains("time limit"), "{err}");
    pool.close().await;
}

async fn a_writer_read_only_by_configuration_refuses_at_once<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    table(&cluster, "out_read_only").await;
    // A maintenance freeze: every new session on the healthy writer is read-only.
    let freeze = format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        cluster.database()
    );
    cluster
        .psql("instance-1", "postgres", &freeze)
        .await
        .expect("freeze");
    // A bounded wait for a writer, so that the old behaviour (re-running the write as if
    // the writer had been demoted) ends instead of taking the default 30 s.
    let pool = connect::<F>(&cluster, test, "failover_timeout_ms=20000").await;
    let insert = "INSERT INTO out_read_only VALUES ('frozen')";
    for transaction in [false, true] {
        let runs = Arc::new(AtomicU32::new(0));
        let started = std::time::Instant::now();
        let err = match transaction {
            false => pool
                .run_counted(RetryPolicy::new(), Role::Writer, insert, runs.clone())
                .await
                .expect_err("a read-only writer refuses the write"),
            true => pool
                .transaction_counted(TransactionOptions::new(), insert, runs.clone())
                .await
                .expect_err("a read-only writer refuses the write"),
        };
        let took = started.elapsed();
        assert_eq!(err.sqlstate(), Some("25006"), "{err:?}");
        assert!(
            !err.is_failover() && !err.is_outcome_unknown(),
            "a writer read-only by configuration is no failover: {err:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the write was run again");
        assert!(
            took < Duration::from_secs(5),
            "25006 from a healthy writer came back after {took:?}"
        );
    }
    assert_eq!(pool.topology().writer().id(), "instance-1");
    pool.close().await;
}

/// Runs `sql` in one `transaction_with(options)` on a task of its own, counting its runs in
/// `runs`: the call stays in flight while the test breaks its server.
fn spawn_transaction<F: Flavour>(
    pool: &F,
    options: TransactionOptions,
    sql: &'static str,
    runs: &Arc<AtomicU32>,
) -> tokio::task::JoinHandle<aurora_pool::Result<()>> {
    let (pool, runs) = (pool.clone(), runs.clone());
    tokio::spawn(async move { pool.transaction_counted(options, sql, runs).await })
}

/// The id a COMMIT was waiting on, read through the direct port: the backend of the
/// pool's user whose COMMIT is running.
async fn xid_in_commit(cluster: &LocalCluster) -> Option<u64> {
    let sql = format!(
        "SELECT backend_xid FROM pg_stat_activity WHERE usename = '{}' AND query = 'COMMIT' AND state = 'active'",
        cluster.user()
    );
    let text = cluster.psql("instance-1", "postgres", &sql).await.ok()?;
    text.trim().parse().ok()
}

async fn a_reissued_transaction_id_is_never_taken_for_a_commit<F: Flavour>(test: &str) {
    support::trace();
    let cluster = LocalCluster::start(1).await.expect("cluster");
    // An unlogged table (its insert writes no WAL) and a deferred trigger that holds COMMIT
    // on the server: when the server crashes then, nothing durable says the id was used,
    // and the restarted server hands it to the next transaction.
    let setup = "CREATE UNLOGGED TABLE out_reissued (note text); GRANT ALL ON out_reissued TO PUBLIC; \
        CREATE FUNCTION out_hold_commit() RETURNS trigger LANGUAGE plpgsql AS \
        $$ BEGIN PERFORM pg_catalog.pg_sleep(60); RETURN NULL; END $$; \
        CREATE CONSTRAINT TRIGGER out_hold AFTER INSERT ON out_reissued \
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION out_hold_commit();";
    cluster
        .psql("instance-1", cluster.database(), setup)
        .await
        .expect("setup");
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    let call = spawn_transaction(
        &pool,
        TransactionOptions::new(),
        "INSERT INTO out_reissued VALUES ('lost')",
        &runs,
    );
    let asked = std::time::Instant::now();
    let xid = loop {
        if let Some(xid) = xid_in_commit(&cluster).await {
            break xid;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the COMMIT never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The crash ends the pool's connection (the proxy passes the close on); the pool is
    // then kept away until the id was handed out again (else it would ask first). A single
    // server's crash: what it committed without flushing is lost.
    cluster
        .crash_losing_unflushed("instance-1")
        .await
        .expect("crash");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cluster.blackhole("instance-1", true));
    cluster.start_instance("instance-1").await.expect("restart");
    let next: u64 = cluster
        .psql("instance-1", "postgres", "SELECT pg_catalog.txid_current()")
        .await
        .expect("next id")
        .trim()
        .parse()
        .expect("an id");
    assert!(
        next <= xid,
        "the id {xid} was not handed out again (next: {next})"
    );
    if next < xid {
        let skip = format!(
            "DO $$ BEGIN FOR i IN 1..{} LOOP PERFORM pg_catalog.txid_current(); COMMIT; END LOOP; END $$",
            xid - next - 1
        );
        if xid - next > 1 {
            cluster
                .psql("instance-1", "postgres", &skip)
                .await
                .expect("skip ids");
        }
        let reissued = cluster
            .psql("instance-1", "postgres", "SELECT pg_catalog.txid_current()")
            .await
            .expect("reissue");
        assert_eq!(reissued.trim(), xid.to_string(), "the id was not reissued");
    }
    let status = cluster
        .psql(
            "instance-1",
            "postgres",
            &format!("SELECT pg_catalog.txid_status({xid})"),
        )
        .await
        .expect("status");
    assert_eq!(
        status.trim(),
        "committed",
        "another transaction committed under the id"
    );
    assert!(cluster.blackhole("instance-1", false));
    let outcome = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call ended")
        .expect("the call's task");
    let err = outcome.expect_err("another transaction's commit was taken for this one's");
    assert!(err.is_transaction_state_unknown(), "{err:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran again");
    pool.close().await;
}

/// The pool's backend whose COMMIT waits for a synchronous standby (after its local commit).
async fn waiting_for_a_standby(cluster: &LocalCluster) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' AND wait_event = 'SyncRep'",
        cluster.user()
    );
    cluster
        .psql("instance-1", "postgres", &sql)
        .await
        .is_ok_and(|count| count.trim() == "1")
}

/// A transaction committed durably, its answer lost, then its writer crashed and restarted
/// before the pool could ask: its id can no longer be vouched for (unknown, never run
/// again); with an outcome marker the answer is definite (committed, returned once).
async fn commit_then_crash<F: Flavour>(
    test: &str,
    options: TransactionOptions,
) -> Result<(), Error> {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    table(&cluster, "out_durable").await;
    // The local commit is flushed, then COMMIT waits for a standby that never comes.
    let setup = format!(
        "CREATE TABLE aurora_pool_outcomes (id text PRIMARY KEY, by_transaction boolean NOT NULL, \
         written_at timestamptz NOT NULL DEFAULT now()); \
         GRANT ALL ON aurora_pool_outcomes TO {user}; \
         ALTER SYSTEM SET synchronous_standby_names = 'nobody'; SELECT pg_reload_conf();",
        user = cluster.user()
    );
    cluster
        .psql("instance-1", cluster.database(), &setup)
        .await
        .expect("setup");
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    let call = spawn_transaction(
        &pool,
        options,
        "WITH durable AS (SELECT pg_catalog.set_config('synchronous_commit', 'on', true)) \
         INSERT INTO out_durable SELECT 'once' FROM durable",
        &runs,
    );
    let waiting = eventually(Duration::from_secs(20), || waiting_for_a_standby(&cluster)).await;
    assert!(waiting, "the COMMIT never waited for the standby");
    cluster.crash("instance-1").await.expect("crash");
    cluster.start_instance("instance-1").await.expect("restart");
    let outcome = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call ended")
        .expect("the call's task");
    assert_eq!(
        rows(&cluster, "out_durable").await,
        1,
        "the commit is durable"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran again");
    pool.close().await;
    outcome
}

async fn a_commit_across_a_restart_is_unknown_without_a_marker<F: Flavour>(test: &str) {
    let err = commit_then_crash::<F>(test, TransactionOptions::new())
        .await
        .expect_err("the restarted server cannot vouch for the id");
    assert!(err.is_transaction_state_unknown(), "{err:?}");
    assert!(format!("{err:#}").contains("handed out again"), "{err}");
}

async fn a_commit_across_a_restart_is_told_by_its_marker<F: Flavour>(test: &str) {
    commit_then_crash::<F>(
        test,
        TransactionOptions::new().outcome_marker("aurora_pool_outcomes"),
    )
    .await
    .expect("the marker says it committed");
}

async fn a_missing_marker_table_is_named<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let runs = Arc::new(AtomicU32::new(0));
    let options = TransactionOptions::new().outcome_marker("no_such_table");
    let err = pool
        .transaction_counted(options, "SELECT 1", runs.clone())
        .await
        .expect_err("no marker table");
    assert_eq!(err.sqlstate(), Some("42P01"), "{err:?}");
    assert!(format!("{err:#}").contains("outcome_marker"), "{err}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the work ran without its marker"
    );
    let err = pool
        .transaction_counted(
            TransactionOptions::new().outcome_marker("x; DROP TABLE y"),
            "SELECT 1",
            runs.clone(),
        )
        .await
        .expect_err("not a table name");
    assert_eq!(err.parameter(), Some("outcome_marker"), "{err:?}");
    pool.close().await;
}

flavour_tests!(
    a_commit_across_a_restart_is_unknown_without_a_marker,
    a_commit_across_a_restart_is_told_by_its_marker,
    a_missing_marker_table_is_named,
    a_reissued_transaction_id_is_never_taken_for_a_commit,
    a_writer_read_only_by_configuration_refuses_at_once,
    a_write_whose_reply_was_lost_is_applied_once,
    idempotent_work_runs_again_after_a_lost_reply,
    a_write_on_a_writer_wrongly_declared_dead_is_applied_once,
    a_notify_whose_commit_reply_was_lost_is_sent_once,
    failover_timeout_does_not_bound_running_work,
);
