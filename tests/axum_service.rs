//! The example service over real HTTP on loopback while the writer fails over: no 5xx but
//! the documented 503 with Retry-After, and every read right after a write sees it.

mod support;

#[path = "../examples/axum_service.rs"]
#[allow(dead_code)]
mod axum_service;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use support::AGGRESSIVE;
use support::http::{post_in_a_loop, send, serve};

/// Whether the item `name` is stored on `instance`, asked on a connection of its own.
async fn on_instance(cluster: &LocalCluster, instance: &str, name: &str) -> bool {
    let mut conn = support::direct_connection(cluster, instance).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE name = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    n > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rides_through_a_failover_over_http() {
    let cluster = Arc::new(LocalCluster::start(3).await.expect("cluster"));
    let pool = support::connect(
        &cluster,
        "axum-service",
        &format!("{AGGRESSIVE}&failover_timeout_ms=3000"),
    )
    .await;
    axum_service::prepare(&pool).await.expect("table");
    support::replicated(&cluster, "items").await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, axum_service::app(pool.clone()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    let started = Instant::now();
    let mut failover = None;
    let (mut created, mut unavailable, mut read_back) = (0, 0, 0);
    let mut missing = Vec::new();
    let mut created_after_failover = 0;
    let mut slowest = Duration::ZERO;
    for i in 0.. {
        if created_after_failover >= 10 || started.elapsed() > Duration::from_secs(40) {
            break;
        }
        if i == 10 {
            let cluster = cluster.clone();
            failover = Some(tokio::spawn(async move {
                cluster.failover("instance-2", None).await
            }));
        }
        let name = format!("item-{i}");
        let sent = Instant::now();
        let reply = send(
            addr,
            "POST",
            "/items",
            Some(&format!(r#"{{"name":"{name}"}}"#)),
            None,
        )
        .await;
        // A liveness bound, far above the failover itself (0.3 s with these settings): the
        // request in flight when the writer crashed must not wait out sqlx's connect retries
        // against the dead writer.
        slowest = slowest.max(sent.elapsed());
        match reply.status {
            201 => created += 1,
            503 => {
                assert!(
                    reply.header("retry-after").is_some(),
                    "503 without Retry-After"
                );
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            other => panic!("POST answered {other}: {}", reply.body),
        }
        if failover.as_ref().is_some_and(|f| f.is_finished()) {
            created_after_failover += 1;
        }
        let cookie = reply
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("session cookie")
            .to_owned();
        let listing = send(addr, "GET", "/items", None, Some(&cookie)).await;
        match listing.status {
            200 => {
                let items: Vec<axum_service::Item> =
                    serde_json::from_str(&listing.body).expect("json");
                if items.iter().any(|item| item.name == name) {
                    read_back += 1;
                } else {
                    // Checked once the failover is over: see `missing` below.
                    missing.push(name);
                }
            }
            503 => {
                assert!(
                    listing.header("retry-after").is_some(),
                    "503 without Retry-After"
                );
                unavailable += 1;
            }
            other => panic!("GET answered {other}: {}", listing.body),
        }
    }
    failover
        .expect("failover started")
        .await
        .expect("task")
        .expect("failover");
    eprintln!(
        "{created} created, {unavailable} answered 503, {read_back} read back, slowest POST {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a request hung for {slowest:?} across the failover"
    );
    assert!(
        created_after_failover >= 10,
        "writes did not resume: {created} created, {unavailable} unavailable"
    );
    // The emulated crash loses what the old writer committed after the replicas caught up
    // and before it was killed (asynchronous replication; Aurora's shared storage keeps
    // it): such a write is on no instance, and no read can see it. A write the new writer
    // has that a read right after it missed is a read-your-writes failure.
    for name in &missing {
        assert!(
            !on_instance(&cluster, "instance-2", name).await,
            "{name} missing right after its write, though the writer has it"
        );
        eprintln!("{name}: acknowledged by the old writer, lost by the emulated crash");
    }
    assert!(
        missing.len() <= 2,
        "{} writes lost by the emulated crash: {missing:?}",
        missing.len()
    );
    assert!(
        read_back + missing.len() >= created - unavailable,
        "{read_back} of {created} writes read back"
    );
    assert_eq!(pool.topology().writer().id(), "instance-2");

    // The handler whose state kept the writer's pool from startup writes on the new writer.
    let mut recorded = 0;
    for _ in 0..50 {
        if send(addr, "POST", "/events", None, None).await.status == 200 {
            recorded += 1;
            if recorded == 5 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        recorded, 5,
        "the pool kept in the app state did not survive the failover"
    );

    // Reads without a session go to the readers and see the items too (eventually: a
    // reader the local failover had to rebuild may still be coming back).
    let mut status = 0;
    for _ in 0..50 {
        status = send(addr, "GET", "/items", None, None).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let _ = stop.send(());
    server.await.expect("server task").expect("server");
}

/// A route written the sqlx way for what is not a failover: a division by zero.
async fn divide_by_zero(
    axum::extract::State(db): axum::extract::State<sqlx::PgPool>,
) -> Result<String, aurora_pool::Error> {
    let n: i32 = sqlx::query_scalar("SELECT 1 / 0").fetch_one(&db).await?;
    Ok(n.to_string())
}

/// Handlers written for a plain `PgPool` (`?` on `sqlx::Error`, the pool kept in the
/// state), default settings, 30 clients in flight on the writer's 10 connections when it
/// crashes, no caller timeout: every answer is `200` or `503` with `Retry-After` (never a
/// `500`), each `503` is logged with its kind, writes resume after the promotion; a pool
/// timeout during the failover (a pool tuned to wait 1 s) is a `503` too, and an error that
/// is no failover a `500` without `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_written_the_sqlx_way_answer_503_during_a_failover() {
    support::capture_logs();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = support::connect(&cluster, "axum-errors", "").await;
    let impatient = support::connect(&cluster, "axum-errors", "&acquire_timeout_ms=1000").await;
    axum_service::prepare(&pool).await.expect("tables");
    let addr = serve(axum_service::app(pool.clone())).await;
    let impatient_addr = serve(axum_service::app(impatient.clone())).await;
    let other_addr = serve(
        axum::Router::new()
            .route("/fail", axum::routing::post(divide_by_zero))
            .with_state(pool.writer())
            .layer(aurora_pool::tower::AuroraLayer::new(pool.clone())),
    )
    .await;

    support::http::no_failover_is_a_500(other_addr).await;

    support::http::writes_through_a_crash(&cluster, |stop| {
        (
            post_in_a_loop(addr, "/events", 30, stop.clone()),
            post_in_a_loop(impatient_addr, "/events", 12, stop),
        )
    })
    .await;
}
