//! The sqlx flavour: `AuroraPool` hands out `sqlx::PgPool`s that follow their role.

mod admin;
mod backend;
mod connect_options;
mod error;
mod executor;
mod openings;
mod options;

pub(crate) use error::from_sqlx;
pub use options::AuroraPoolOptions;

use admin::SqlxConnector;
use backend::SqlxBackend;

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Postgres};

use super::attempts;
use super::backend::{Attempt, Retried};
use super::core::{PoolCore, Start};
use super::facade::{facade_debug, shared_facade};
use super::login;
use super::scope::ScopeSource;
use super::transaction::TransactionOptions;
use super::work::WorkErrors;
use crate::config::{Builder, Config};
use crate::connector::BoxFuture;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::topology::Role;

/// A cluster-aware pool for Aurora PostgreSQL, RDS PostgreSQL and PostgreSQL with replicas,
/// handing out [`sqlx::PgPool`]s per role.
///
/// It discovers the cluster's instances through the URL's host, then connects only to
/// instance endpoints: [`writer`](AuroraPool::writer) follows the current writer and
/// [`reader`](AuroraPool::reader) spreads reads over the replicas. One monitor per
/// `cluster_id` keeps the topology current for every pool in the process.
///
/// Cloning is cheap (an `Arc`), like `PgPool`. The monitor stops when the last pool of its
/// `cluster_id` is dropped or closed.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use aurora_pool::AuroraPool;
///
/// let pool = AuroraPool::connect(
///     "postgres://app:secret@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app",
/// )
/// .await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(7_i64).execute(&pool.writer()).await?;
/// let rows = sqlx::query("SELECT id FROM orders").fetch_all(&pool.reader()).await?;
/// # drop(rows);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AuroraPool {
    core: Arc<PoolCore<SqlxBackend>>,
}

impl AuroraPool {
    /// Connects with a URL: discovers the topology and starts (or joins) the cluster
    /// monitor. Fails on a bad URL, unreachable host, failed login or invalid topology.
    pub async fn connect(url: &str) -> Result<AuroraPool> {
        AuroraPool::connect_with(Config::from_url(url)?).await
    }

    /// Connects with a prepared [`Config`].
    pub async fn connect_with(config: Config) -> Result<AuroraPool> {
        AuroraPool::start(config, AuroraPoolOptions::new(), Start::Now).await
    }

    /// Opens the pool without touching the database, as sqlx's `PgPool::connect_lazy`:
    /// discovery runs in the background, again after each failure (every 5 s at most),
    /// until it succeeds; meanwhile [`writer`](Self::writer) and [`reader`](Self::reader)
    /// hand out their pools and every checkout waits for the discovery within its own
    /// timeout (a handle's query `acquire_timeout_ms`, [`acquire`](Self::acquire), `run`
    /// and `transaction` `failover_timeout_ms`), as it waits for a new writer during a
    /// failover; one that gives up says why the last discovery failed. Fails only on a bad
    /// URL or settings (the credential provider is built, and a custom endpoint's members
    /// are read, before it returns).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use aurora_pool::AuroraPool;
    ///
    /// // The service builds its state before the database is up.
    /// let pool = AuroraPool::connect_lazy(
    ///     "postgres://app:secret@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app",
    /// )
    /// .await?;
    /// let writer = pool.writer();
    /// // The first query waits for the discovery, up to acquire_timeout_ms.
    /// sqlx::query("SELECT 1").execute(&writer).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_lazy(url: &str) -> Result<AuroraPool> {
        AuroraPool::connect_lazy_with(Config::from_url(url)?).await
    }

    /// [`connect_lazy`](Self::connect_lazy) with a prepared [`Config`].
    pub async fn connect_lazy_with(config: Config) -> Result<AuroraPool> {
        AuroraPool::start(config, AuroraPoolOptions::new(), Start::Lazy).await
    }

    /// sqlx's own settings for every pool (hooks, connect options); finish with
    /// [`AuroraPoolOptions::connect`].
    pub fn options() -> AuroraPoolOptions {
        AuroraPoolOptions::new()
    }

    async fn start(config: Config, options: AuroraPoolOptions, when: Start) -> Result<AuroraPool> {
        config.validate()?;
        let base = connect_options::BaseOptions::new(&config, options.connect_options.as_ref())?;
        let provider = login::provider_for(&config).await?;
        let connector = Arc::new(SqlxConnector::new(&config, base.clone(), provider.clone()));
        let backend = SqlxBackend::new(&config, base.clone(), options);
        let scope = ScopeSource::new(&config).await?;
        let core = PoolCore::start(config, backend, connector, provider, scope, when).await?;
        let weak = Arc::downgrade(&core);
        base.when_tls_learned(move |address| {
            if let Some(core) = weak.upgrade() {
                core.reach_changed(address);
            }
        });
        Ok(AuroraPool { core })
    }

    /// A builder for settings made in code; finish it with [`Builder::connect`].
    pub fn builder() -> Builder {
        Builder::new()
    }

    shared_facade!(
        handle = PgPool,
        connection = PoolConnection<Postgres>,
        to_handle = |pool: Arc<PgPool>| PgPool::clone(&pool),
        writer_docs = {
            ///
            /// ```no_run
            /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
            /// #[derive(Clone)]
            /// struct AppState {
            ///     db: sqlx::PgPool,
            /// }
            ///
            /// let pool = aurora_pool::AuroraPool::connect("postgres://app@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app").await?;
            /// let state = AppState { db: pool.writer() };
            /// // ... hours and failovers later:
            /// sqlx::query("INSERT INTO audit (event) VALUES ('still here')").execute(&state.db).await?;
            /// # Ok(()) }
            /// ```
            ///
            /// A checkout that was already connecting to the old writer when it failed
            /// finishes (or fails) inside sqlx before it moves; [`acquire`](Self::acquire),
            /// [`run`](Self::run) and [`transaction`](Self::transaction) move at once.
        },
    );

    /// Opens a plain sqlx transaction on the writer, as `PgPool::begin` does: the
    /// one-line switch from `PgPool` keeps compiling. It is sqlx's transaction, with no
    /// failover handling; [`transaction`](AuroraPool::transaction) runs work in a
    /// transaction that is retried only when it is known not to have committed.
    pub async fn begin(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        PgPool::clone(&self.core.writer()).begin().await
    }

    /// Runs `work` on a connection for `role`, and again on a fresh checkout only when it
    /// cannot have been applied: the failure came before it was sent (checking out,
    /// connecting), or it ran on a reader (a replica refuses writes). A write on the writer
    /// whose connection is lost after it was sent (a crash, a lost reply, the instance
    /// declared dead while it ran) is [`Error::is_outcome_unknown`]: it may have been
    /// applied, and it is not sent twice. Work that is safe to apply twice says so with
    /// [`RetryPolicy::idempotent`] ([`run_with`](AuroraPool::run_with)) and is run again
    /// after any lost connection. Any other error is returned at once, wrapped without loss.
    /// Waiting for an instance is bounded by `failover_timeout_ms`; the work itself is not.
    ///
    /// `work` returns a boxed future (`Box::pin(async move { .. })`), like sqlx's pool hooks,
    /// which keeps `run`'s future `Send` so it can be awaited in spawned tasks and axum
    /// handlers. The future may borrow the connection; anything else it uses must be owned
    /// (clone it in, as `work` may run several times).
    ///
    /// If the instance is declared unreachable while `work` runs (a black-holed host that
    /// never answers), `work` is abandoned and its connection dropped, so a caller never
    /// hangs on a dead host.
    ///
    /// # Errors
    /// [`Error::is_outcome_unknown`] as above; [`Error::is_failover_failed`] when no instance
    /// of the role could be reached within `failover_timeout_ms`; the driver's error
    /// ([`Error::is_driver`]) for anything the server refused.
    ///
    /// # Cancel safety
    /// Dropping the future closes the connection in use (never returned to the pool
    /// mid-statement); a statement already sent may still complete on the server.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) -> aurora_pool::Result<()> {
    /// use aurora_pool::{RetryPolicy, Role};
    /// // A read: on a reader it runs again after a lost connection.
    /// let open: i64 = pool
    ///     .run(Role::Reader, |conn| {
    ///         Box::pin(async move {
    ///             sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'new'")
    ///                 .fetch_one(conn)
    ///                 .await
    ///         })
    ///     })
    ///     .await?;
    /// // An upsert keyed by the caller: safe to apply twice, declared so.
    /// pool.run_with(RetryPolicy::new().idempotent(), Role::Writer, |conn| {
    ///     Box::pin(async move {
    ///         sqlx::query("INSERT INTO jobs (id, state) VALUES (7, 'new') ON CONFLICT (id) DO NOTHING")
    ///             .execute(conn)
    ///             .await
    ///     })
    /// })
    /// .await?;
    /// # let _ = open; Ok(()) }
    /// ```
    pub async fn run<T, F>(&self, role: Role, work: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send,
        T: Send,
    {
        self.run_with(RetryPolicy::new(), role, work).await
    }

    /// [`run`](AuroraPool::run) with an explicit [`RetryPolicy`].
    pub async fn run_with<T, F>(&self, policy: RetryPolicy, role: Role, mut work: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send,
        T: Send,
    {
        self.attempts(policy, role, Attempt::Plain, &mut work).await
    }

    /// Runs `work` in a transaction on the writer (`BEGIN`, `work`, `COMMIT`), running it
    /// again after a failover only when the transaction is known not to have committed.
    ///
    /// - A connection lost before `COMMIT` was sent: the server rolled back, and the work runs
    ///   again on the new writer (until `failover_timeout_ms`).
    /// - A connection lost during `COMMIT`: the transaction's id, read just before the
    ///   `COMMIT` with the server incarnation that assigned it, is looked up on the writer
    ///   (`txid_status`). Committed, said by that same incarnation: the call returns the
    ///   work's value. Rolled back: the work runs again. Not knowable (another incarnation
    ///   answers `committed`: the id may have been reissued after a crash):
    ///   [`Error::is_transaction_state_unknown`], never run again. For a definite answer
    ///   after any crash, see [`TransactionOptions::outcome_marker`].
    /// - Any other error from `work` rolls the transaction back and comes back unchanged
    ///   (also when the `ROLLBACK` itself fails: the connection is then closed, which rolls
    ///   back too).
    ///
    /// `work` returns the caller's own error type `E`, as sqlx's `Connection::transaction`
    /// does: anything a crate [`Error`] converts into (`sqlx::Error`, so that work returning
    /// sqlx's own result needs no annotation, with the crate's verdicts inside an `Io` error
    /// ([`Error::inside`]); `aurora_pool::Error` itself, which converts from `sqlx::Error`
    /// for `?`; `anyhow::Error`; an application error with a `From<aurora_pool::Error>`). The crate's own failures (no writer, an unknown outcome)
    /// come back converted into `E`. A `sqlx::Error` or `aurora_pool::Error` returned by
    /// `work` is classified (a lost connection is a failover, `40001` can be retried); any
    /// other error is rolled back and comes back unchanged, never retried.
    ///
    /// The transaction is sqlx's own: a `conn.begin()` inside `work` makes a savepoint. If
    /// the returned future is dropped at any await (a client gone, a timeout), the
    /// connection is closed, never returned to the pool inside the transaction.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) -> aurora_pool::Result<()> {
    /// let moved: u64 = pool
    ///     .transaction(|conn| {
    ///         Box::pin(async move {
    ///             sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
    ///                 .execute(&mut *conn)
    ///                 .await?;
    ///             let done = sqlx::query("UPDATE accounts SET balance = balance + 10 WHERE id = 2")
    ///                 .execute(&mut *conn)
    ///                 .await?;
    ///             Ok::<_, aurora_pool::Error>(done.rows_affected())
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = moved; Ok(()) }
    /// ```
    ///
    /// With an application error type:
    ///
    /// ```no_run
    /// #[derive(Debug)]
    /// enum TransferError {
    ///     InsufficientFunds,
    ///     Database(aurora_pool::Error),
    /// }
    /// impl From<aurora_pool::Error> for TransferError {
    ///     fn from(err: aurora_pool::Error) -> Self {
    ///         TransferError::Database(err)
    ///     }
    /// }
    /// impl From<sqlx::Error> for TransferError {
    ///     fn from(err: sqlx::Error) -> Self {
    ///         TransferError::Database(err.into())
    ///     }
    /// }
    ///
    /// # async fn f(pool: aurora_pool::AuroraPool) -> Result<(), TransferError> {
    /// pool.transaction(|conn| {
    ///     Box::pin(async move {
    ///         let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1 FOR UPDATE")
    ///             .fetch_one(&mut *conn)
    ///             .await?;
    ///         if balance < 10 {
    ///             // Rolled back, and handed back as it is: never retried.
    ///             return Err(TransferError::InsufficientFunds);
    ///         }
    ///         sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
    ///             .execute(&mut *conn)
    ///             .await?;
    ///         Ok(())
    ///     })
    /// })
    /// .await
    /// # }
    /// ```
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>> + Send,
        T: Send,
        E: From<Error> + Send + 'static,
    {
        self.transaction_with(TransactionOptions::new(), work).await
    }

    /// [`transaction`](AuroraPool::transaction) with a [`RetryPolicy`] or
    /// [`TransactionOptions`] (isolation level, `READ ONLY`, retried serialization
    /// failures).
    pub async fn transaction_with<T, E, F>(
        &self,
        options: impl Into<TransactionOptions>,
        mut work: F,
    ) -> Result<T, E>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>> + Send,
        T: Send,
        E: From<Error> + Send + 'static,
    {
        let options = options.into();
        let kind = Attempt::Transaction(options);
        let mut attempt = SqlxAttempt {
            pool: self,
            role: kind.classified_as(Role::Writer),
            work: &mut work,
            errors: WorkErrors::new(),
        };
        let result = attempts::retry(
            &self.core,
            options.retry_policy(),
            Role::Writer,
            kind,
            &mut attempt,
        )
        .await;
        attempt.errors.finish(result)
    }

    /// The retry loop behind `run`.
    async fn attempts<T, F>(
        &self,
        policy: RetryPolicy,
        role: Role,
        kind: Attempt,
        work: &mut F,
    ) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send,
        T: Send,
    {
        let mut attempt = SqlxAttempt {
            pool: self,
            role: kind.classified_as(role),
            work,
            errors: WorkErrors::new(),
        };
        attempts::retry(&self.core, policy, role, kind, &mut attempt).await
    }

    /// Wraps an error from a query run on one of this pool's connections, and reacts to it:
    /// a lost connection or a server shutting down is a failover ([`Error::is_failover`])
    /// and makes the monitor re-read the topology at once. `PoolClosed` is
    /// [`Error::is_closed`], not a failover: the handles never retire, so it means the
    /// handle (or this pool) was closed, and a retry on it would fail again. A write refused
    /// as read-only (`25006`) makes the monitor re-check the writer too, but is returned as
    /// the driver's error: this call cannot tell a demoted writer from a write sent to a
    /// reader (the retry helpers, which know the role, retry it on the writer). Any other error keeps its kind; the SQLSTATE and
    /// the sqlx error (as `source()`) are kept.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) -> aurora_pool::Result<()> {
    /// let result = sqlx::query("SELECT n FROM stock WHERE id = 7")
    ///     .fetch_optional(&pool.writer())
    ///     .await;
    /// if let Err(err) = result {
    ///     let err = pool.classify(err);
    ///     if err.is_failover() {
    ///         // A read: safe to send again on a fresh checkout. A write sent here may
    ///         // have been applied before the connection went: resend only what is
    ///         // idempotent (or use `run`, which tells).
    ///     }
    ///     return Err(err);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn classify(&self, err: sqlx::Error) -> Error {
        self.classify_as(None, err)
    }

    /// [`classify`](AuroraPool::classify) for an error already wrapped as the crate's (`?` on
    /// a `sqlx::Error` in an axum handler).
    #[cfg(feature = "tower")]
    pub(crate) fn classify_error(&self, err: Error) -> Error {
        self.react_to(None, err)
    }

    /// [`classify`](AuroraPool::classify) for a connection taken for `role`, when known.
    fn classify_as(&self, role: Option<Role>, err: sqlx::Error) -> Error {
        self.react_to(role, from_sqlx(err, "the statement"))
    }

    /// Reacts to an error seen on a connection taken for `role` (when known), as
    /// [`classify`](AuroraPool::classify) does.
    fn react_to(&self, role: Option<Role>, err: Error) -> Error {
        if err.is_login_rejected() {
            self.core.login_rejected_somewhere();
        }
        match role {
            Some(role) => self.core.classify_for(role, err),
            None => self.core.classify(err),
        }
    }
}

facade_debug!(AuroraPool, "sqlx");

impl Builder {
    /// Builds the [`Config`] and connects an [`AuroraPool`] with it.
    pub async fn connect(self) -> Result<AuroraPool> {
        AuroraPool::connect_with(self.build()?).await
    }

    /// Builds the [`Config`] and opens an [`AuroraPool`] with it that discovers its cluster
    /// in the background ([`AuroraPool::connect_lazy`]).
    pub async fn connect_lazy(self) -> Result<AuroraPool> {
        AuroraPool::connect_lazy_with(self.build()?).await
    }
}

/// One attempt of the caller's work on a sqlx connection.
struct SqlxAttempt<'p, F, E> {
    pool: &'p AuroraPool,
    role: Role,
    work: &'p mut F,
    errors: WorkErrors<E>,
}

impl<T, E, F> Retried<PoolConnection<Postgres>, T> for SqlxAttempt<'_, F, E>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>> + Send,
    T: Send,
    E: Send + 'static,
{
    fn attempt<'a>(&'a mut self, conn: &'a mut PoolConnection<Postgres>) -> BoxFuture<'a, Result<T>>
    where
        T: 'a,
    {
        Box::pin(async move {
            let (role, pool) = (self.role, self.pool);
            match (self.work)(conn).await {
                Ok(value) => Ok(value),
                Err(err) => Err(self.errors.take(
                    err,
                    |driver: sqlx::Error| from_sqlx(driver, "the statement"),
                    |err| pool.react_to(Some(role), err),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: T) {}

    /// Compiles only if the futures can be awaited in spawned tasks; never called.
    #[allow(dead_code)]
    fn futures_are_send(pool: &AuroraPool) {
        assert_send(pool.acquire(Role::Writer));
        assert_send(pool.close());
        assert_send(pool.run(Role::Reader, |conn| {
            Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await })
        }));
        assert_send(pool.transaction(|conn| {
            Box::pin(async move {
                sqlx::query("SELECT 1").execute(conn).await?;
                Ok::<_, Error>(())
            })
        }));
    }

    #[test]
    fn pool_is_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<AuroraPool>();
    }
}
