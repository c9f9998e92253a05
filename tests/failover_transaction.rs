//! A transaction open when the writer crashes ends as "state unknown", and its insert is
//! not committed; retried, it completes on the new writer.

mod support;

use std::sync::Arc;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, RetryPolicy, Role};
use support::AGGRESSIVE;

async fn count(pool: &AuroraPool, marker: &'static str) -> i64 {
    pool.run(Role::Writer, |conn| {
        Box::pin(async move {
            sqlx::query_scalar("SELECT count(*) FROM ledger WHERE note = $1")
                .bind(marker)
                .fetch_one(conn)
                .await
        })
    })
    .await
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_the_crash_is_reported_and_not_committed() {
    support::trace();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = support::connect(
        &cluster,
        "transaction",
        &format!("{AGGRESSIVE}&failover_timeout_ms=30000"),
    )
    .await;
    support::execute(&pool, "CREATE TABLE ledger (note text NOT NULL)").await;
    support::replicated(&cluster, "ledger").await;

    // The work's future may borrow only the connection: what else it needs is moved in.
    let cluster = Arc::new(cluster);
    let err = pool
        .transaction_with(RetryPolicy::no_retry(), |conn| {
            let cluster = cluster.clone();
            Box::pin(async move {
                sqlx::query("INSERT INTO ledger VALUES ('lost')")
                    .execute(&mut *conn)
                    .await?;
                cluster
                    .failover("instance-2", None)
                    .await
                    .expect("failover");
                sqlx::query("INSERT INTO ledger VALUES ('lost')")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
        .expect_err("the writer died inside the transaction");
    assert!(err.is_transaction_state_unknown(), "{err:?}");
    assert!(!err.is_failover());
    // Either the driver saw the connection break, or the monitor declared the instance
    // lost first; both name what happened.
    let described = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(
        described.contains("instance-1") || std::error::Error::source(&err).is_some(),
        "{described}"
    );

    assert_eq!(
        count(&pool, "lost").await,
        0,
        "the uncommitted insert must not survive"
    );
    assert_eq!(pool.topology().writer().id(), "instance-2");

    // With retries the transaction is simply done again on the new writer.
    pool.transaction(|conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO ledger VALUES ('kept')")
                .execute(conn)
                .await
                .map(|_| ())
        })
    })
    .await
    .expect("transaction");
    assert_eq!(count(&pool, "kept").await, 1);

    // A non-failover error inside the transaction is returned at once and rolled back.
    let err = pool
        .transaction(|conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO ledger VALUES ('rolled back')")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("INSERT INTO ledger VALUES (NULL)")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
        .expect_err("not-null violation");
    assert!(err.is_driver(), "{err:?}");
    assert_eq!(err.sqlstate(), Some("23502"));
    assert_eq!(count(&pool, "rolled back").await, 0);
}
