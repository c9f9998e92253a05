//! The tower layer and the axum error path with the deadpool flavour: handlers written the
//! tokio-postgres way (`?` on `tokio_postgres::Error` and on a checkout's error) answer 503
//! with `Retry-After` during a writer failover, and 500 on other errors.

mod support;

use std::time::{Duration, Instant};

use aurora_pool::deadpool::{AuroraPool, Pool};
use aurora_pool::testing::LocalCluster;
use aurora_pool::tower::{AuroraLayer, Db};
use axum::extract::State;
use axum::routing::post;
use support::http::{post_in_a_loop, send, serve};

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

    let failed = send(addr, "POST", "/fail", None, None).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(failed.header("retry-after").is_none());
    assert!(
        support::captured_logs().contains("kind=driver"),
        "the 500 was not logged with its kind"
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = post_in_a_loop(addr, "/events", 15, stopped.clone());
    clients.extend(post_in_a_loop(addr, "/items", 15, stopped.clone()));
    let impatient_clients = post_in_a_loop(impatient_addr, "/events", 12, stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.crash("instance-1").await.expect("crash");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send(true).expect("stop");

    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.expect("client"));
    }
    let mut impatient_answers = Vec::new();
    for client in impatient_clients {
        impatient_answers.extend(client.await.expect("client"));
    }
    let unavailable = answers.iter().flatten().filter(|a| a.status == 503).count();
    eprintln!(
        "{} answers, {unavailable} answered 503; impatient pool: {} answers, {} answered 503",
        answers.iter().flatten().count(),
        impatient_answers.len(),
        impatient_answers.iter().filter(|a| a.status == 503).count()
    );
    for answer in answers.iter().flatten().chain(&impatient_answers) {
        assert!(
            answer.status == 200 || (answer.status == 503 && answer.retry_after),
            "answered {} (Retry-After: {}) during the failover",
            answer.status,
            answer.retry_after
        );
    }
    assert!(
        unavailable > 0,
        "no request in flight on the crashed writer failed: the test saw no failover"
    );
    assert!(
        impatient_answers.iter().any(|a| a.status == 503),
        "no pool timeout during the failover"
    );
    for (i, client) in answers.iter().enumerate() {
        assert!(
            client.iter().any(|a| a.status == 200 && a.at > promoted),
            "client {i} never wrote after the promotion"
        );
    }
    let logs = support::captured_logs();
    assert!(
        logs.contains("answered 503") && logs.contains("kind=failover"),
        "the 503s were not logged as failovers"
    );
    assert!(
        logs.contains("kind=timeout"),
        "the pool timeouts were not logged"
    );
    assert!(
        !logs.contains(cluster.password()),
        "a secret reached the logs"
    );
}
