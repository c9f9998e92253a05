//! [`Error`] as an HTTP response (feature `axum`): `503` with `Retry-After` for what a retry
//! can cure, `500` for the rest, each logged with its kind.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::RETRY_AFTER;

use super::db::FailoverResponse;
use super::scope;
use crate::{Error, ErrorClass, ErrorKind};

/// What a request that failed with an error is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `503` with `Retry-After`: nothing was applied, and a retry shortly can succeed.
    Unavailable,
    /// `500` saying the change may have been applied: never an invitation to resend.
    OutcomeUnknown,
    /// `500` revealing nothing about the database.
    Internal,
}

fn answer(err: &Error) -> Answer {
    match err.kind() {
        ErrorKind::OutcomeUnknown | ErrorKind::TransactionStateUnknown => Answer::OutcomeUnknown,
        ErrorKind::Failover
        | ErrorKind::FailoverFailed
        | ErrorKind::Timeout
        | ErrorKind::NoReader
        | ErrorKind::Closed
        | ErrorKind::Topology
        | ErrorKind::Credentials
        | ErrorKind::CustomEndpointUnavailable => Answer::Unavailable,
        // A driver's error that reached the handler without the pool's classification (`?`
        // on a `sqlx::Error`, outside the layer): a broken connection or a demoted writer is
        // a failover all the same. A statement sent on it may have been applied only when
        // the handler sent it on a connection of its own, which it then knows.
        ErrorKind::Connect | ErrorKind::Driver
            if matches!(err.class(), ErrorClass::Network | ErrorClass::ReadOnly) =>
        {
            Answer::Unavailable
        }
        _ => Answer::Internal,
    }
}

/// A driver's error the pool has not classified yet, classified by the pool serving the
/// request (the layer's, when it is installed): a lost connection tells the monitor to
/// re-read the topology at once, as [`AuroraPool::classify`](crate::AuroraPool::classify)
/// does.
fn classified(err: Error) -> Error {
    if !matches!(err.kind(), ErrorKind::Connect | ErrorKind::Driver) {
        return err;
    }
    scope::classify_by_request_pool(err)
}

/// The answer for an error, by its kind:
///
/// | kind | status | body |
/// |---|---|---|
/// | `failover`, `failover_failed`, `timeout` (a pool timeout during a failover or under saturation), `no_reader`, `closed`, `topology`, `credentials`, `custom_endpoint_unavailable`, and a driver's error that is a lost connection or a demoted writer (`?` on a `sqlx::Error` or a `tokio_postgres::Error`) | `503`, `Retry-After: 1`, the [`FailoverResponse`] marker | `the database is unavailable; retry shortly` |
/// | `outcome_unknown`, `transaction_state_unknown` | `500`, no `Retry-After`, no marker | says the change may have been applied |
/// | anything else (a constraint violation, a syntax error, a configuration error) | `500` | `internal error` |
///
/// Nothing about the database reaches the body. `run` and `transaction` never end with a
/// `503` kind after applying anything, so a client can send the request again; an unknown
/// outcome gets no `Retry-After` and no marker, so that neither the client nor
/// [`AuroraLayer::failover_to_503`](super::AuroraLayer::failover_to_503) resends a change
/// that may have been applied.
///
/// Each answer is logged (target `aurora_pool`): a `503` at `warn`, a `500` at `error`,
/// with the error's `kind`, its `sqlstate` and the whole chain of causes. A driver's error
/// that reached the handler unclassified (`?` on a driver's error) is classified by the
/// layer's pool when [`AuroraLayer`](super::AuroraLayer) is installed, which also makes the
/// monitor look at the topology at once.
///
/// ```no_run
/// # async fn example(pool: aurora_pool::AuroraPool) {
/// use axum::{Router, extract::State, routing::post};
/// use sqlx::PgPool;
///
/// // Written the sqlx way: `?` on `sqlx::Error`, only the error type is the crate's.
/// async fn create(State(db): State<PgPool>) -> Result<String, aurora_pool::Error> {
///     let id: i64 = sqlx::query_scalar("INSERT INTO items DEFAULT VALUES RETURNING id")
///         .fetch_one(&db)
///         .await?;
///     Ok(id.to_string())
/// }
///
/// let app: Router = Router::new()
///     .route("/items", post(create))
///     .with_state(pool.writer())
///     .layer(aurora_pool::tower::AuroraLayer::new(pool));
/// # drop(app);
/// # }
/// ```
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let err = classified(self);
        let answer = answer(&err);
        let (kind, sqlstate) = (err.kind(), err.sqlstate().unwrap_or(""));
        match answer {
            Answer::Unavailable => tracing::warn!(
                target: "aurora_pool",
                %kind,
                sqlstate,
                error = %format_args!("{err:#}"),
                "a request failed while the database is unavailable; answered 503"
            ),
            Answer::OutcomeUnknown | Answer::Internal => tracing::error!(
                target: "aurora_pool",
                %kind,
                sqlstate,
                error = %format_args!("{err:#}"),
                "a request failed; answered 500"
            ),
        }
        match answer {
            Answer::Unavailable => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(RETRY_AFTER, "1")],
                    "the database is unavailable; retry shortly",
                )
                    .into_response();
                response.extensions_mut().insert(FailoverResponse);
                response
            }
            Answer::OutcomeUnknown => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "outcome unknown: the database connection was lost after the change was sent; it may or may not have been applied, check before sending it again",
            )
                .into_response(),
            Answer::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

#[cfg(all(test, feature = "sqlx"))]
mod tests {
    use super::*;

    fn sqlx_error(err: sqlx::Error) -> Error {
        Error::from(err)
    }

    #[test]
    fn what_a_retry_can_cure_is_503_and_the_rest_500() {
        let io = |kind| sqlx::Error::Io(std::io::Error::new(kind, "gone"));
        for unavailable in [
            Error::failover("lost"),
            Error::failover_failed("no writer"),
            Error::no_reader("none"),
            Error::closed(),
            // `?` on sqlx's errors, with no pool to classify them.
            sqlx_error(sqlx::Error::PoolTimedOut),
            sqlx_error(io(std::io::ErrorKind::ConnectionReset)),
            sqlx_error(io(std::io::ErrorKind::UnexpectedEof)),
            Error::driver("demoted").with_sqlstate(Some("25006".into())),
            Error::driver("shutting down").with_sqlstate(Some("57P01".into())),
        ] {
            assert_eq!(answer(&unavailable), Answer::Unavailable, "{unavailable:?}");
        }
        for unknown in [
            Error::unknown_outcome("lost after sending"),
            Error::failover("lost").in_transaction(),
        ] {
            assert_eq!(answer(&unknown), Answer::OutcomeUnknown, "{unknown:?}");
        }
        for internal in [
            Error::driver("duplicate key").with_sqlstate(Some("23505".into())),
            Error::driver("syntax").with_sqlstate(Some("42601".into())),
            Error::config("url", "bad"),
            sqlx_error(sqlx::Error::RowNotFound),
        ] {
            assert_eq!(answer(&internal), Answer::Internal, "{internal:?}");
        }
    }

    #[test]
    fn a_503_carries_retry_after_and_the_marker_and_a_500_neither() {
        let response = Error::failover("lost").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert!(response.extensions().get::<FailoverResponse>().is_some());
        for err in [
            Error::unknown_outcome("lost after sending"),
            Error::driver("duplicate key").with_sqlstate(Some("23505".into())),
        ] {
            let response = err.into_response();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(response.headers().get(RETRY_AFTER).is_none());
            assert!(response.extensions().get::<FailoverResponse>().is_none());
        }
    }
}
