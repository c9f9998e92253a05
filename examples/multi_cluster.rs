//! A migration job over two clusters in one process: it reads `orders` from the source
//! cluster's readers and writes them to the target cluster's writer, in batches, with a pool
//! per cluster and a `cluster_id` per physical cluster.
//!
//! ```text
//! cargo run --example multi_cluster --features testing                 # two local clusters
//! cargo run --example multi_cluster --features testing -- SOURCE_URL TARGET_URL
//! ```
//!
//! Each URL of your own must carry its own `cluster_id` (`?cluster_id=orders-2023`): pools
//! with one id share one topology and one monitor, so two clusters under one id would be
//! mixed (the pool refuses that when it can tell).

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};

/// Rows copied per transaction.
const BATCH: i64 = 500;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Local clusters live as long as the job.
    let mut local = Vec::new();
    let (source_url, target_url) = match args.as_slice() {
        [source, target] => (source.clone(), target.clone()),
        [] => {
            println!("Starting two local clusters (2 instances each) ...");
            let (source, target) = tokio::join!(LocalCluster::start(2), LocalCluster::start(2));
            let (source, target) = (source?, target?);
            let urls = (
                format!("{}&cluster_id=source", source.url()),
                format!("{}&cluster_id=target", target.url()),
            );
            local.push(source);
            local.push(target);
            urls
        }
        _ => return Err("usage: multi_cluster [SOURCE_URL TARGET_URL]".into()),
    };
    let source = AuroraPool::connect(&source_url).await?;
    let target = AuroraPool::connect(&target_url).await?;
    println!("source: {}", source.topology());
    println!("target: {}", target.topology());

    if !local.is_empty() {
        seed(&source, &target).await?;
    }

    let mut copied = 0u64;
    let mut after = 0i64;
    loop {
        // Keyset pagination on a reader of the source.
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, customer, cents FROM orders WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(&source.reader())
        .await
        .map_err(|err| source.classify(err))?;
        let Some(&(last, _, _)) = rows.last() else {
            break;
        };
        // One transaction per batch on the target's writer, retried through a failover; the
        // upsert makes a retried batch harmless.
        let written = target
            .transaction(move |conn| {
                let rows = rows.clone();
                Box::pin(async move {
                    let mut written = 0;
                    for (id, customer, cents) in rows {
                        written += sqlx::query(
                            "INSERT INTO orders (id, customer, cents) VALUES ($1, $2, $3) \
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(id)
                        .bind(customer)
                        .bind(cents)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
                    }
                    Ok::<_, aurora_pool::Error>(written)
                })
            })
            .await?;
        copied += written;
        after = last;
    }
    let total: i64 = target
        .run(Role::Writer, |conn| {
            Box::pin(async move {
                sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(conn)
                    .await
            })
        })
        .await?;
    println!("copied {copied} rows; the target now holds {total}");
    source.close().await;
    target.close().await;
    Ok(())
}

/// Creates `orders` on both local clusters and fills the source.
async fn seed(source: &AuroraPool, target: &AuroraPool) -> Result<(), Box<dyn std::error::Error>> {
    let ddl = "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, customer text NOT NULL, cents bigint NOT NULL)";
    for pool in [source, target] {
        sqlx::query(ddl).execute(&pool.writer()).await?;
    }
    sqlx::query(
        "INSERT INTO orders SELECT n, 'customer-' || (n % 97), n * 100 FROM generate_series(1, 2000) n \
         ON CONFLICT DO NOTHING",
    )
    .execute(&source.writer())
    .await?;
    // Replication is asynchronous: wait until the source's readers see every row.
    for _ in 0..100 {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&source.reader())
            .await
            .unwrap_or(0);
        if seen == 2000 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err("the source's readers never saw the seeded rows".into())
}
