//! [`Health`] as an HTTP response (feature `axum`): a ready-made readiness handler.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

use crate::Health;

/// `200 OK` when writes and reads can both be served ([`Health::is_ready`]), `503 Service
/// Unavailable` otherwise, with the health as JSON: `ready`, `writes`, `reads`, `writer`,
/// `failing_over_since_unix_ms` and `failing_over_for_ms` (`null` when no failover is under
/// way), `writer_silent`, `closed`, `topology_version`, `instances` (each pool's `id`,
/// `role`, `size`, `idle`, `max_connections`) and `reads_pool` (the readers' pool: its
/// `instances`, `size`, `idle`, `max_connections`). Instance ids only, no addresses, nothing
/// secret; never cached.
///
/// ```no_run
/// # async fn example(pool: aurora_pool::AuroraPool) {
/// use axum::{Router, routing::get};
///
/// let ready = {
///     let pool = pool.clone();
///     move || async move { pool.health() }
/// };
/// let app: Router = Router::new().route("/ready", get(ready));
/// # drop(app);
/// # }
/// ```
impl IntoResponse for Health {
    fn into_response(self) -> Response {
        let status = match self.is_ready() {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        let since_ms = self.failing_over_since.map(|since| {
            since
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64
        });
        let for_ms = self
            .failing_over_for()
            .map(|lasted| lasted.as_millis() as u64);
        let instances: Vec<serde_json::Value> = self
            .status
            .instances
            .iter()
            .map(|i| {
                serde_json::json!({
                    "id": i.instance_id,
                    "role": i.role.to_string(),
                    "size": i.size,
                    "idle": i.idle,
                    "max_connections": i.max_connections,
                })
            })
            .collect();
        let reads = &self.status.reads;
        let body = serde_json::json!({
            "ready": self.is_ready(),
            "writes": self.writes,
            "reads": self.reads,
            "writer": self.writer,
            "failing_over_since_unix_ms": since_ms,
            "failing_over_for_ms": for_ms,
            "writer_silent": self.writer_silent,
            "closed": self.closed,
            "topology_version": self.status.topology_version,
            "instances": instances,
            "reads_pool": {
                "instances": reads.instance_ids,
                "size": reads.size,
                "idle": reads.idle,
                "max_connections": reads.max_connections,
            },
        });
        (
            status,
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "no-store"),
            ],
            body.to_string(),
        )
            .into_response()
    }
}
