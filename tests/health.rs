//! `health()` across a writer failover, and its HTTP form (`axum`), both flavours: writes
//! are reported unservable from the crash until the promotion, with the time the search for
//! the writer began, and the readers' pool is part of the status throughout.

mod support;

use std::time::{Duration, SystemTime};

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::eventually;
use support::flavour::{Flavour, connect, flavour_tests};

/// The health once the pool settled on `writer` and routes to `instances` instances: a
/// replica the failover had to rebuild (it had WAL the new writer never got) is down for a
/// while after the promotion, and reads use the writer meanwhile.
async fn settled_on<F: Flavour>(pool: &F, writer: &str, instances: usize) -> aurora_pool::Health {
    let mut last = pool.health();
    let settled = eventually(Duration::from_secs(30), || {
        last = pool.health();
        let ready = last.is_ready()
            && last.writer == writer
            && last.failing_over_since.is_none()
            && last.status.instances.len() == instances;
        async move { ready }
    })
    .await;
    assert!(settled, "never ready on {writer}: {last:?}");
    last
}

async fn health_follows_a_writer_failover<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(&cluster, test, "").await;
    let before = settled_on(&pool, "instance-1", 3).await;
    assert!(!before.closed && !before.writer_silent, "{before:?}");
    let mut readers = before.status.reads.instance_ids.clone();
    readers.sort();
    assert_eq!(readers, ["instance-2", "instance-3"], "{before:?}");
    assert!(before.status.reads.max_connections > 0, "{before:?}");

    // The writer crashes; the promotion comes 3 s later: writes are unservable meanwhile,
    // reads go on.
    let mut held = pool.hold(Role::Writer).await.expect("a writer connection");
    let crashed = SystemTime::now();
    cluster.crash("instance-1").await.expect("crash");
    let mut during = pool.health();
    let seen = eventually(Duration::from_secs(5), || {
        during = pool.health();
        let failing = !during.writes && during.failing_over_since.is_some();
        async move { failing }
    })
    .await;
    assert!(seen, "the failover never showed: {during:?}");
    assert!(during.reads && !during.is_ready(), "{during:?}");
    let since = during.failing_over_since.expect("since");
    assert!(
        since >= crashed - Duration::from_secs(1),
        "the search began before the crash: {since:?} < {crashed:?}"
    );
    assert!(during.failing_over_for().is_some(), "{during:?}");
    // A failover-class error explains itself: what the pool knew when it happened.
    let lost = pool
        .held_instance_id(&mut held)
        .await
        .expect_err("the writer crashed under its connection");
    assert!(lost.is_failover(), "{lost:?}");
    let context = lost
        .context()
        .expect("a failover error carries its context");
    assert_eq!(context.writer, "instance-1", "{context}");
    assert_eq!(context.instances.len(), 3, "{context}");
    assert!(context.failing_over_for.is_some(), "{context}");
    let shown = format!("{lost:#}");
    assert!(
        shown.contains("searching for a new writer") && shown.contains("instance-1 (writer"),
        "{shown}"
    );
    assert!(!shown.contains(cluster.password()), "{shown}");
    assert!(
        !lost.to_string().contains("searching"),
        "the plain form prints one level: {lost}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !pool.health().writes,
        "writes servable with no writer: {:?}",
        pool.health()
    );
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let after = settled_on(&pool, "instance-2", 2).await;
    assert!(
        !after
            .status
            .reads
            .instance_ids
            .contains(&"instance-2".to_owned()),
        "the new writer still serves the readers' pool: {after:?}"
    );
    pool.close().await;
    let closed = pool.health();
    assert!(
        closed.closed && !closed.writes && !closed.reads,
        "{closed:?}"
    );
}

/// The ready-made readiness handler, on either flavour's `health()`: `200` with the health as
/// JSON while writes and reads can be served, `503` while the writer is down.
async fn the_health_handler_answers_503_while_the_writer_is_down<F: Flavour>(test: &str) {
    use axum::body::to_bytes;
    use axum::http::{Request, StatusCode};
    use axum::{Router, routing::get};
    use tower::ServiceExt;

    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: F = connect(&cluster, test, "").await;
    settled_on(&pool, "instance-1", 2).await;
    let app = {
        let pool = pool.clone();
        Router::new().route("/ready", get(move || async move { pool.health() }))
    };
    let ask = |app: Router| async move {
        let response = app
            .oneshot(
                Request::get("/ready")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        (status, kind, json)
    };
    let (status, kind, json) = ask(app.clone()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(kind, "application/json");
    assert_eq!(json["writer"], "instance-1", "{json}");
    assert_eq!(
        json["failing_over_for_ms"],
        serde_json::Value::Null,
        "{json}"
    );
    assert_eq!(json["reads_pool"]["instances"][0], "instance-2", "{json}");
    assert!(!json.to_string().contains(cluster.password()), "{json}");

    cluster.crash("instance-1").await.expect("crash");
    let down = eventually(Duration::from_secs(5), || {
        let app = app.clone();
        async move { ask(app).await.0 == StatusCode::SERVICE_UNAVAILABLE }
    })
    .await;
    assert!(down, "never 503 with the writer down: {:?}", pool.health());
    let (_, _, json) = ask(app.clone()).await;
    assert_eq!(json["writes"], false, "{json}");
    assert_eq!(json["ready"], false, "{json}");
    assert!(json["failing_over_for_ms"].is_u64(), "{json}");

    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let up = eventually(Duration::from_secs(15), || {
        let app = app.clone();
        async move { ask(app).await.0 == StatusCode::OK }
    })
    .await;
    assert!(up, "never 200 after the promotion: {:?}", pool.health());
    pool.close().await;
}

flavour_tests!(
    health_follows_a_writer_failover,
    the_health_handler_answers_503_while_the_writer_is_down
);
