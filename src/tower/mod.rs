//! A tower layer for HTTP services (feature `tower`; the axum extractor with `axum`).
//!
//! [`AuroraLayer`] gives every request a [`Db`]: the pool and the role chosen for the
//! request. Safe methods (`GET`, `HEAD`, `OPTIONS`) read from a reader, everything else
//! goes to the writer; a [`RolePolicy`] or a fixed role per route changes that.
//!
//! **Read-your-writes.** After a request that wrote through [`Db::writer`], the layer marks
//! the client's session (a cookie by default) for [`ReadYourWrites::window`] (1 s): reads
//! in that session go to the writer, so a client sees its own write even while the replicas
//! lag. The trade-off: for that window the session's reads load the writer instead of a
//! reader, and a window shorter than the replica lag can still show stale data. Aurora
//! replicas usually lag by tens of milliseconds, so 1 s is a wide margin; raise it if your
//! lag is higher. Writes made some other way than [`Db::writer`] mark the session with
//! [`Db::mark_written`].
//!
//! **Failover to HTTP.** With [`AuroraLayer::failover_to_503`], a response that carries a
//! [`FailoverResponse`] extension becomes `503 Service Unavailable` with `Retry-After`;
//! every other response passes through untouched. With the `axum` feature,
//! [`Error`](crate::Error) implements `IntoResponse`: what a retry can cure (a failover, a
//! lost connection, a pool timeout) becomes 503 with `Retry-After` (and the marker), an
//! unknown outcome a 500 that says so, anything else a bare 500 that reveals nothing; each is
//! logged with its kind. `?` on a `sqlx::Error` (or a `tokio_postgres::Error`) in a handler returning
//! `Result<_, aurora_pool::Error>` works the same: the layer's pool classifies it.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn example(pool: aurora_pool::AuroraPool) {
//! use std::time::Duration;
//! use aurora_pool::tower::{AuroraLayer, Db};
//! use axum::{Router, routing::get};
//!
//! async fn count(db: Db) -> Result<String, aurora_pool::Error> {
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
//!         .fetch_one(&db.reader())
//!         .await?;
//!     Ok(n.to_string())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/count", get(count))
//!     .layer(AuroraLayer::new(pool).failover_to_503(Duration::from_secs(1)));
//! # drop(app);
//! # }
//! ```
//!
//! **Either flavour.** The layer serves the pool it is given: with the deadpool flavour,
//! handlers take `Db<aurora_pool::deadpool::AuroraPool>`, whose [`Db::writer`] and
//! [`Db::reader`] hand out deadpool [`Pool`](crate::deadpool::Pool)s, and `?` on a
//! `tokio_postgres::Error` or on a checkout's error works as `?` on a `sqlx::Error` does
//! (the features: `deadpool` and `axum`, without `sqlx` if you like).
//!
//! ```no_run
//! # #[cfg(all(feature = "axum", feature = "deadpool"))]
//! # async fn example(pool: aurora_pool::deadpool::AuroraPool) {
//! use std::time::Duration;
//! use aurora_pool::deadpool::AuroraPool;
//! use aurora_pool::tower::{AuroraLayer, Db};
//! use axum::{Router, routing::get};
//!
//! async fn count(db: Db<AuroraPool>) -> Result<String, aurora_pool::Error> {
//!     let client = db.reader().get().await?;
//!     let n: i64 = client.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
//!     Ok(n.to_string())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/count", get(count))
//!     .layer(AuroraLayer::new(pool).failover_to_503(Duration::from_secs(1)));
//! # drop(app);
//! # }
//! ```

mod db;
mod future;
#[cfg(feature = "axum")]
mod health;
mod layer;
mod policy;
mod pool;
#[cfg(feature = "axum")]
mod response;
mod scope;
mod service;

pub use db::{Db, FailoverResponse};
pub use future::ResponseFuture;
pub use layer::{AuroraLayer, ReadYourWrites, SessionMarker};
pub use policy::{RolePolicy, SafeMethodsRead};
pub use pool::{DefaultPool, LayerPool};
pub use service::AuroraService;
