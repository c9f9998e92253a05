//! An axum service that exports the pool's metrics for Prometheus at `/metrics` and its
//! readiness at `/ready`, through a writer failover.
//!
//! ```text
//! cargo run --example metrics --features axum,metrics,testing
//! ```
//!
//! Without a URL it starts a local three-instance cluster, serves on an ephemeral port,
//! prints the failover metrics Prometheus would scrape, crashes the writer, promotes
//! instance-2, writes until a write lands there, and prints them again: one failover
//! started and succeeded, its duration and the pool's recovery time as summaries. With a URL
//! (`cargo run ... -- URL`) it serves that cluster on port 9000 until Ctrl-C.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Installs the Prometheus recorder for the process: every metric of the crate (and of the
/// application) goes to it from now on. Call once, before connecting.
pub fn install_recorder() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// `/metrics` (the Prometheus text format) and `/ready` (200 or 503 with the pool's health
/// as JSON, for a readiness probe).
pub fn app(pool: AuroraPool, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let pool = pool.clone();
                async move { pool.health() }
            }),
        )
}

/// Serves `app` on an ephemeral loopback port; returns its address.
pub async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// What Prometheus would read at `addr`'s `/metrics`: its lines about failovers.
pub async fn scrape_failovers(addr: SocketAddr) -> std::io::Result<Vec<String>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    Ok(reply
        .lines()
        .filter(|line| line.starts_with("aurora_pool_failover"))
        .map(str::to_owned)
        .collect())
}

/// Crashes the writer of `cluster`, promotes instance-2, and writes through `pool` until a
/// write lands there (at most 30 s).
pub async fn fail_over(
    cluster: &LocalCluster,
    pool: &AuroraPool,
) -> Result<(), Box<dyn std::error::Error>> {
    cluster.crash("instance-1").await?;
    cluster.failover("instance-2", None).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let writer: Option<String> =
            sqlx::query_scalar("SELECT pg_catalog.aurora_db_instance_identifier()")
                .fetch_one(&pool.writer())
                .await
                .ok();
        if writer.as_deref() == Some("instance-2") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("writes never reached instance-2".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = install_recorder()?;
    if let Some(url) = std::env::args().nth(1) {
        let pool = AuroraPool::connect(&url).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 9000)).await?;
        println!("metrics on http://{}/metrics", listener.local_addr()?);
        axum::serve(listener, app(pool.clone(), metrics))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        pool.close().await;
        return Ok(());
    }
    println!("Starting a local cluster of three instances ...");
    let cluster = LocalCluster::start(3).await?;
    let pool =
        AuroraPool::connect(&format!("{}&cluster_id=metrics-example", cluster.url())).await?;
    pool.acquire(Role::Writer).await?;
    let addr = serve(app(pool.clone(), metrics)).await?;
    println!("metrics on http://{addr}/metrics, readiness on http://{addr}/ready");
    println!("before the failover: {:#?}", scrape_failovers(addr).await?);
    println!("crashing instance-1, promoting instance-2 ...");
    fail_over(&cluster, &pool).await?;
    println!("after the failover: {:#?}", scrape_failovers(addr).await?);
    pool.close().await;
    Ok(())
}
