//! A service in a secondary region of an Aurora Global Database: it reads from its own
//! region's readers and writes to whichever region is primary, through a cross-region
//! switchover.
//!
//! ```text
//! cargo run --example global_database --features testing          # an emulated global database
//! cargo run --example global_database --features testing -- URL   # your own (with failover_home_region)
//! ```
//!
//! The local run emulates two regions (`us-east-1`, the primary, with instance-1 and
//! instance-2; `us-west-2` with instance-3 and instance-4), runs with
//! `failover_home_region=us-west-2`, and moves the primary region to us-west-2 half-way.

use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};

const INSTANCE: &str = "SELECT pg_catalog.aurora_db_instance_identifier()";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut local = None;
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => {
            println!("Starting an emulated global database (us-east-1 primary, us-west-2) ...");
            let cluster = LocalCluster::builder()
                .global_regions(&[("us-east-1", 2), ("us-west-2", 2)])
                .start()
                .await?;
            let url = format!(
                "{}&cluster_id=global-example&failover_home_region=us-west-2",
                cluster.url()
            );
            local = Some(cluster);
            url
        }
    };
    let pool = AuroraPool::connect(&url).await?;
    let topology = pool.topology();
    println!(
        "dialect {}, writer {}",
        topology.dialect(),
        topology.writer().id()
    );
    for instance in topology.instances() {
        println!(
            "  {} {} in {}",
            instance.id(),
            instance.role(),
            instance.region().unwrap_or("?")
        );
    }
    report(&pool, "before").await;

    let Some(cluster) = local else {
        pool.close().await;
        return Ok(());
    };
    let writer = pool.writer();
    let writes = tokio::spawn(async move {
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(id) = sqlx::query_scalar::<_, String>(INSTANCE)
                .fetch_one(&writer)
                .await
            {
                if id != last {
                    println!("  writes land on {id}");
                    last = id;
                }
                if last == "instance-3" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    println!("Switching the primary region over to us-west-2 (instance-3) ...");
    cluster.switchover_region("instance-3").await?;
    writes.await?;
    report(&pool, "after").await;
    pool.close().await;
    Ok(())
}

/// Where the writer and the readers' pool land now.
async fn report(pool: &AuroraPool, when: &str) {
    let writer: Result<String, _> = sqlx::query_scalar(INSTANCE).fetch_one(&pool.writer()).await;
    let mut readers = std::collections::BTreeSet::new();
    for _ in 0..12 {
        if let Ok(id) = pool
            .run(Role::Reader, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar::<_, String>(INSTANCE)
                        .fetch_one(conn)
                        .await
                })
            })
            .await
        {
            readers.insert(id);
        }
    }
    println!("{when}: writes on {writer:?}, reads on {readers:?}");
}
