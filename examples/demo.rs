//! The demo: starts a local 3-instance Aurora-like cluster, routes writes and reads through
//! `AuroraPool`, shows which instance served each, and prints the topology.
//!
//! Run it with `./scripts/demo.sh` (or `cargo run --example demo --features testing`).

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, ReaderSelection};

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
    println!("\nReads through pool.reader() (round robin):");
    for _ in 0..4 {
        let (count, served_by): (i64, String) = sqlx::query_as(
            "SELECT count(*), pg_catalog.aurora_db_instance_identifier() FROM orders",
        )
        .fetch_one(&pool.reader())
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

    pool.close().await;
    println!("\nDone; the local cluster is stopped and removed.");
    Ok(())
}
