//! The tower layer and the axum error path with the deadpool flavour: handlers written the
//! tokio-postgres way (`?` on `tokio_postgres::Error` and on a checkout's error) answer 503
//! with `Retry-After` during a writer failover, and 500 on other errors.

mod support;

use std::time::Duration;

use aurora_pool::deadpool::{AuroraPool, Pool};
use aurora_pool::testing::LocalCluster;
use aurora_pool::tower::{AuroraLayer, Db};
use axum::extract::State;
use axum::routing::post;
use support::http::{post_in_a_loop, serve};

/// Written the tokio-postgres way, with the writer's pool as the state.
async fn record_event(State(pool): State<Pool>) -> Result<String, aurora_pool::Error> {
    let client = pool.get().await?;
    let row = client
        .query_one("INSERT INTO events DEFAULT VALUES RETURNING id", &[])
        .await?;
    Ok(row.get::<_, i64>(0).to_string())
}

/// Written with the layer's extractor.
async fn record_item(db: Db<AuroraPool>) -> Result<String, aurora_pool::Error> {
    let client = db.writer().get().await?;
    let row = client
        .query_one("INSERT INTO events DEFAULT VALUES RETURNING id", &[])
        .await?;
    Ok(row.get::<_, i64>(0).to_string())
}

/// What is no failover: a division by zero.
async fn divide_by_zero(db: Db<AuroraPool>) -> Result<String, aurora_pool::Error> {
    let client = db.reader().get().await?;
    let n: i32 = client.query_one("SELECT 1 / 0", &[]).await?.get(0);
    Ok(n.to_string())
}

fn app(pool: AuroraPool) -> axum::Router {
    axum::Router::new()
        .route("/events", post(record_event))
        .route("/items", post(record_item))
        .route("/fail", post(divide_by_zero))
        .with_state(pool.writer())
        .layer(AuroraLayer::new(pool).failover_to_503(Duration::from_secs(1)))
}

async fn connect(cluster: &LocalCluster, params: &str) -> AuroraPool {
    AuroraPool::connect(&support::url_with(
        cluster,
        &format!(
            "cluster_id={}{params}",
            support::unique_cluster_id("axum-deadpool")
        ),
    ))
    .await
    .expect("connect")
}

/// Default settings, 30 clients in flight on the writer's 10 connections when it crashes
/// (half through the state's pool, half through `Db`), no caller timeout: every answer is
/// `200` or `503` with `Retry-After`, writes resume after the promotion on every client; a
/// pool tuned to wait 1 s answers its timeouts with `503` too; a division by zero is a `500`
/// without `Retry-After`; each answer is logged with its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_written_the_tokio_postgres_way_answer_503_during_a_failover() {
    support::capture_logs();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect(&cluster, "").await;
    let impatient = connect(&cluster, "&acquire_timeout_ms=1000").await;
    pool.writer()
        .get()
        .await
        .expect("writer")
        .batch_execute("CREATE TABLE events (id bigserial PRIMARY KEY)")
        .await
        .expect("table");
    let addr = serve(app(pool.clone())).await;
    let impatient_addr = serve(app(impatient.clone())).await;

    support::http::no_failover_is_a_500(addr).await;

    support::http::writes_through_a_crash(&cluster, |stop| {
        let mut clients = post_in_a_loop(addr, "/events", 15, stop.clone());
        clients.extend(post_in_a_loop(addr, "/items", 15, stop.clone()));
        (clients, post_in_a_loop(impatient_addr, "/events", 12, stop))
    })
    .await;
}
