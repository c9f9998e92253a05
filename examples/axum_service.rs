//! A small axum service (create and list items) behind `AuroraLayer`.
//!
//! ```text
//! cargo run --example axum_service --features axum,testing            # on a local cluster
//! cargo run --example axum_service --features axum,testing -- "$DATABASE_URL"
//! curl -s -c jar -b jar -X POST localhost:3000/items -H 'content-type: application/json' -d '{"name":"tea"}'
//! curl -s -c jar -b jar localhost:3000/items
//! ```
//!
//! `POST /items` writes through the writer and marks the client's session (a cookie), so its
//! next `GET /items` within a second reads from the writer and sees the new item even if the
//! replicas lag. Other reads go to the readers. During a failover, requests that hit it get
//! `503 Service Unavailable` with `Retry-After: 1`, never a bare 500.

use std::time::Duration;

use aurora_pool::testing::LocalCluster;
use aurora_pool::tower::{AuroraLayer, Db};
use aurora_pool::{AuroraPool, Role};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// A new item, as posted.
#[derive(Debug, Deserialize)]
pub struct NewItem {
    /// The item's name.
    pub name: String,
}

/// A stored item.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
}

/// What the handlers that do not go through the layer keep: the writer's pool, taken once
/// at startup, as a service written for a plain `PgPool` keeps it. It follows the writer
/// across failovers.
#[derive(Clone)]
pub struct AppState {
    /// The writer's pool.
    pub events: PgPool,
}

/// The service's routes behind the layer.
pub fn app(pool: AuroraPool) -> Router {
    let state = AppState {
        events: pool.writer(),
    };
    Router::new()
        .route("/items", post(create).get(list))
        .route("/events", post(record_event))
        .with_state(state)
        .layer(AuroraLayer::new(pool).failover_to_503(Duration::from_secs(1)))
}

/// Records an event through the pool kept in the state; answers with its id.
/// Written the sqlx way: `?` on `sqlx::Error`; the crate's error answers 503 with
/// `Retry-After` when the writer is failing over, 500 otherwise.
async fn record_event(State(state): State<AppState>) -> Result<String, aurora_pool::Error> {
    let id: i64 = sqlx::query_scalar("INSERT INTO events DEFAULT VALUES RETURNING id")
        .fetch_one(&state.events)
        .await?;
    Ok(id.to_string())
}

/// Creates the table the service uses.
pub async fn prepare(pool: &AuroraPool) -> aurora_pool::Result<()> {
    pool.run(Role::Writer, |conn| {
        Box::pin(async move {
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS items (id bigserial PRIMARY KEY, name text NOT NULL); \
                 CREATE TABLE IF NOT EXISTS events (id bigserial PRIMARY KEY)",
            )
            .execute(conn)
            .await
            .map(|_| ())
        })
    })
    .await
}

async fn create(
    db: Db,
    Json(item): Json<NewItem>,
) -> Result<(StatusCode, Json<Item>), aurora_pool::Error> {
    let id: i64 = sqlx::query_scalar("INSERT INTO items (name) VALUES ($1) RETURNING id")
        .bind(&item.name)
        .fetch_one(&db.writer())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Item {
            id,
            name: item.name,
        }),
    ))
}

async fn list(db: Db) -> Result<Json<Vec<Item>>, aurora_pool::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM items ORDER BY id")
        .fetch_all(&db.reader())
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name)| Item { id, name })
            .collect(),
    ))
}

/// Ctrl-C or SIGTERM: either way the pool closes and the local cluster is removed.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "aurora_pool=info".into()),
        )
        .init();
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DATABASE_URL").ok());
    // Keep the local cluster alive as long as the service.
    let (pool, _cluster) = match url {
        Some(url) => (AuroraPool::connect(&url).await?, None),
        None => {
            let cluster = LocalCluster::start(3).await?;
            let pool =
                AuroraPool::connect(&format!("{}&failover_timeout_ms=5000", cluster.url())).await?;
            (pool, Some(cluster))
        }
    };
    prepare(&pool).await?;
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000u16);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(pool.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    pool.close().await;
    Ok(())
}
