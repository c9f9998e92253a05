//! The demo: starts a local 3-instance Aurora-like cluster, routes writes and reads through
//! `AuroraPool`, shows which instance served each, prints the topology, then crashes the
//! writer and shows when writes resumed on the new one, with the default settings.
//!
//! Run it with `./scripts/demo.sh` (or `cargo run --example demo --features testing`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, ReaderSelection, Role};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    println!("Starting a local cluster: 1 writer + 2 streaming replicas on loopback ...");
    let cluster = LocalCluster::start(3).await?;
    println!("  cluster endpoint: {}", cluster.cluster_endpoint());

    let pool = AuroraPool::builder()
        .url(cluster.url())
        .cluster_id("demo")
        .reader_host_selector_strategy(ReaderSelection::RoundRobin)
        .connect()
        .await?;

    let topology = pool.topology();
    println!(
        "\nDiscovered topology ({} dialect, version {}):",
        topology.dialect(),
        topology.version()
    );
    for instance in topology.instances() {
        println!(
            "  {:<12} {:<7} {}",
            instance.id(),
            instance.role().to_string(),
            instance.address()
        );
    }

    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, item text NOT NULL)")
        .execute(&pool.writer())
        .await?;

    println!("\nWrites through pool.writer():");
    for item in ["coffee", "tea", "cake"] {
        let (id, served_by): (i64, String) = sqlx::query_as(
            "INSERT INTO orders (item) VALUES ($1) RETURNING id, pg_catalog.aurora_db_instance_identifier()",
        )
        .bind(item)
        .fetch_one(&pool.writer())
        .await?;
        println!("  INSERT {item:<7} -> order {id:<3} written on {served_by}");
    }

    // Give streaming replication a moment, then read through the readers.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // `reader_host_selector_strategy` picks the reader of each `acquire(Role::Reader)`; the
    // `.reader()` pool spreads its connections over the readers in turn instead.
    println!("\nReads through pool.acquire(Role::Reader) (round robin):");
    for _ in 0..4 {
        let mut conn = pool.acquire(Role::Reader).await?;
        let (count, served_by): (i64, String) = sqlx::query_as(
            "SELECT count(*), pg_catalog.aurora_db_instance_identifier() FROM orders",
        )
        .fetch_one(&mut *conn)
        .await?;
        println!("  SELECT count(*) -> {count} orders, read on {served_by}");
    }

    println!("\nPool status:");
    for instance in pool.status().instances {
        println!(
            "  {:<12} {:<7} open connections: {} ({} idle, max {})",
            instance.instance_id,
            instance.role.to_string(),
            instance.size,
            instance.idle,
            instance.max_connections
        );
    }

    failover(&cluster, &pool).await?;

    pool.close().await;
    println!("\nDone; the local cluster is stopped and removed.");
    Ok(())
}

/// Crashes the writer while a write goes out every 20 ms, as Aurora does in a failover
/// (the writer dies, a replica is promoted), and prints when writes resumed.
async fn failover(
    cluster: &LocalCluster,
    pool: &AuroraPool,
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "\nCrashing the writer (instance-1) and promoting instance-2, writing every 20 ms ..."
    );
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (landed, mut first) = tokio::sync::mpsc::channel::<(Duration, String)>(64);
    let writes = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Each write in its own task, as concurrent requests of a service.
                let (writer, landed) = (pool.writer(), landed.clone());
                tokio::spawn(async move {
                    let write = sqlx::query_scalar::<_, String>(
                        "INSERT INTO orders (item) VALUES ('failover') RETURNING pg_catalog.aurora_db_instance_identifier()",
                    )
                    .fetch_one(&writer);
                    if let Ok(Ok(served_by)) =
                        tokio::time::timeout(Duration::from_secs(5), write).await
                    {
                        let _ = landed.try_send((origin.elapsed(), served_by));
                    }
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crashed = origin.elapsed();
    cluster.failover("instance-2", None).await?;
    let promoted = origin.elapsed();
    let mut last_on_old = None;
    let resumed = loop {
        match tokio::time::timeout(Duration::from_secs(15), first.recv()).await {
            Ok(Some((at, served_by))) if served_by == "instance-2" => break Some(at),
            Ok(Some((at, _))) => last_on_old = Some(at),
            _ => break None,
        }
    };
    stop.store(true, Ordering::Relaxed);
    writes.await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let Some(at) = last_on_old {
        println!("  last write on instance-1        {:>7.0} ms", ms(at));
    }
    println!("  writer crashed                  {:>7.0} ms", ms(crashed));
    println!("  instance-2 promoted (by)        {:>7.0} ms", ms(promoted));
    match resumed {
        Some(at) => println!(
            "  first write on instance-2       {:>7.0} ms  ({:.0} ms after the crash, default settings)",
            ms(at),
            ms(at.saturating_sub(crashed))
        ),
        None => println!("  no write reached instance-2 within 15 s"),
    }
    println!("  topology now: {}", pool.topology());
    Ok(())
}
