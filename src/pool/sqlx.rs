//! The sqlx backend: `AuroraPool` hands out `sqlx::PgPool`s, one per instance.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgSslMode, PgTransactionManager,
};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgPool, Postgres, Row, SqlSafeStr, ValueRef,
};
use sqlx_core::transaction::TransactionManager;

use super::attempts;
use super::backend::{Attempt, Backend, Follows, Retried};
use super::core::PoolCore;
use super::login;
use super::scope::ScopeSource;
use super::status::PoolStatus;
use super::targets::Targets;
use super::transaction::TransactionOptions;
use crate::auth::{self, ConnectTarget, CredentialProvider, Credentials};
use crate::config::{Builder, Config, PoolSizing};
use crate::connector::{AdminConnection, BoxFuture, Connector, Purpose, TextRow};
use crate::endpoint::HostPort;
use crate::error::{Error, Result};
use crate::monitor::ClusterEvent;
use crate::retry::RetryPolicy;
use crate::topology::{Role, Topology};

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
        config.validate()?;
        let base = base_options(&config)?;
        let provider = auth::provider_for(&config).await?;
        let connector = Arc::new(SqlxConnector {
            base: base.clone(),
            cluster_id: config.cluster_id.clone(),
            connect_timeout: config.connect_timeout,
            provider: provider.clone(),
            user: config.user().to_owned(),
        });
        let backend = SqlxBackend {
            base: Arc::new(base),
            acquire_timeout: config.acquire_timeout,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
            ping_limit: config.connect_timeout,
        };
        let scope = ScopeSource::new(&config).await?;
        let core = PoolCore::start(config, backend, connector, provider, scope).await?;
        Ok(AuroraPool { core })
    }

    /// A builder for settings made in code; finish it with [`Builder::connect`].
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The writer's pool, to keep for as long as the process runs.
    ///
    /// The same pool follows the writer across failovers: once the pool learns of a new
    /// writer, its new connections go there, the connections it still has to the old
    /// writer are closed at checkout and on return (never handed out again), and it never
    /// fails with `PoolClosed` unless this `AuroraPool` was closed. Store it in your
    /// application state, or hand it to a library that takes a `PgPool`.
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
    /// A checkout that was already connecting to the old writer when it failed finishes
    /// (or fails) inside sqlx before it moves; [`acquire`](AuroraPool::acquire),
    /// [`run`](AuroraPool::run) and [`transaction`](AuroraPool::transaction) move at once.
    pub fn writer(&self) -> PgPool {
        PgPool::clone(&self.core.writer())
    }

    /// The readers' pool, to keep for as long as the process runs.
    ///
    /// It spreads its connections over the reachable readers in turn, follows them as they
    /// come and go (a reader's connections are closed at checkout and on return once it is
    /// down, promoted or out of the read scope), and uses the writer while no reader can
    /// serve and `failover_mode` lets reads use it. With `strict_reader` and no reader, its
    /// checkouts wait (up to `acquire_timeout_ms`) for one; use
    /// [`try_reader`](AuroraPool::try_reader) to fail at once instead.
    ///
    /// Its connections are its own: [`acquire`](AuroraPool::acquire) and
    /// [`run`](AuroraPool::run) with [`Role::Reader`] use one pool per reader (balanced by
    /// `reader_host_selector_strategy`, and abandoned at once when their reader is declared
    /// dead).
    pub fn reader(&self) -> PgPool {
        PgPool::clone(&self.core.reads())
    }

    /// Like [`reader`](AuroraPool::reader), but fails ([`Error::is_no_reader`]) when no
    /// instance may serve reads now (no reachable reader, and `failover_mode` is
    /// `strict_reader`), and [`Error::is_closed`] when the pool is closed.
    pub fn try_reader(&self) -> Result<PgPool> {
        self.core.try_reads().map(|pool| PgPool::clone(&pool))
    }

    /// Opens a plain sqlx transaction on the writer, as `PgPool::begin` does: the
    /// one-line switch from `PgPool` keeps compiling. It is sqlx's transaction, with no
    /// failover handling; [`transaction`](AuroraPool::transaction) runs work in a
    /// transaction that is retried only when it is known not to have committed.
    pub async fn begin(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.writer().begin().await
    }

    /// Checks out one connection for `role`.
    ///
    /// During a failover a writer checkout waits for the new writer (up to
    /// `failover_timeout_ms`) instead of failing at once, and a reader checkout moves to
    /// another reader when its instance goes down. When no instance of the role appears in
    /// time the error is [`Error::is_failover_failed`].
    pub async fn acquire(&self, role: Role) -> Result<PoolConnection<Postgres>> {
        self.core
            .checkout(role)
            .await
            .map(|(connection, _)| connection)
    }

    /// Runs idempotent `work` on a connection for `role`, retrying it on a fresh checkout
    /// when it fails because of a failover ([`Error::is_retryable`]), until
    /// `failover_timeout_ms`. Any other error is returned at once, wrapped without loss.
    ///
    /// `work` returns a boxed future (`Box::pin(async move { .. })`), like sqlx's pool hooks,
    /// which keeps `run`'s future `Send` so it can be awaited in spawned tasks and axum
    /// handlers. The future may borrow the connection; anything else it uses must be owned
    /// (clone it in, as `work` may run several times).
    ///
    /// If the instance is declared unreachable while `work` runs (a black-holed host that
    /// never answers), `work` is abandoned, its connection dropped, and the work retried
    /// elsewhere, so a caller never hangs on a dead host.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) -> aurora_pool::Result<()> {
    /// use aurora_pool::Role;
    /// let id: i64 = pool
    ///     .run(Role::Writer, |conn| {
    ///         Box::pin(async move {
    ///             sqlx::query_scalar("INSERT INTO jobs (state) VALUES ('new') RETURNING id")
    ///                 .fetch_one(conn)
    ///                 .await
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = id; Ok(()) }
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
    ///   `COMMIT`, is looked up on the writer (`txid_status`). Committed: the call returns the
    ///   work's value. Rolled back: the work runs again. Not knowable:
    ///   [`Error::is_transaction_state_unknown`], never run again.
    /// - Any other error from `work` rolls the transaction back and comes back unchanged
    ///   (also when the `ROLLBACK` itself fails: the connection is then closed, which rolls
    ///   back too).
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
    ///             Ok(done.rows_affected())
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = moved; Ok(()) }
    /// ```
    pub async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send,
        T: Send,
    {
        self.transaction_with(TransactionOptions::new(), work).await
    }

    /// [`transaction`](AuroraPool::transaction) with a [`RetryPolicy`] or
    /// [`TransactionOptions`] (isolation level, `READ ONLY`, retried serialization
    /// failures).
    pub async fn transaction_with<T, F>(
        &self,
        options: impl Into<TransactionOptions>,
        mut work: F,
    ) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send,
        T: Send,
    {
        let options = options.into();
        self.attempts(
            options.retry_policy(),
            Role::Writer,
            Attempt::Transaction(options),
            &mut work,
        )
        .await
    }

    /// The retry loop behind `run` and `transaction`.
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
        };
        attempts::retry(&self.core, policy, role, kind, &mut attempt).await
    }

    /// Wraps an error from a query run on one of this pool's connections, and reacts to it:
    /// a lost connection, a server shutting down, or a checkout from a pool retired by a
    /// writer change is a failover ([`Error::is_failover`]) and makes the monitor re-read
    /// the topology at once. A write refused as read-only (`25006`) makes the monitor
    /// re-check the writer too, but is returned as the driver's error: this call cannot
    /// tell a demoted writer from a write sent to a reader (the retry helpers, which know
    /// the role, retry it on the writer). Any other error keeps its kind; the SQLSTATE and
    /// the sqlx error (as `source()`) are kept.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) -> aurora_pool::Result<()> {
    /// let result = sqlx::query("UPDATE stock SET n = n - 1 WHERE id = 7")
    ///     .execute(&pool.writer())
    ///     .await;
    /// if let Err(err) = result {
    ///     let err = pool.classify(err);
    ///     if err.is_failover() {
    ///         // retry on a fresh checkout
    ///     }
    ///     return Err(err);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn classify(&self, err: sqlx::Error) -> Error {
        self.classify_as(None, err)
    }

    /// [`classify`](AuroraPool::classify) for a connection taken for `role`, when known.
    fn classify_as(&self, role: Option<Role>, err: sqlx::Error) -> Error {
        let retired_pool = matches!(err, sqlx::Error::PoolClosed) && !self.is_closed();
        let err = from_sqlx(err, "the statement");
        if err.is_login_rejected() {
            self.core.login_rejected_somewhere();
        }
        if retired_pool {
            self.core.request_refresh();
            return err.into_failover();
        }
        match role {
            Some(role) => self.core.classify_for(role, err),
            None => self.core.classify(err),
        }
    }

    /// Cluster events (writer changes, instances down and up, new topologies) from the
    /// shared monitor. A receiver that falls more than 128 events behind is told how many
    /// it missed.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.core.events()
    }

    /// The topology the pool routes by.
    pub fn topology(&self) -> Arc<Topology> {
        self.core.topology()
    }

    /// Connections per instance.
    pub fn status(&self) -> PoolStatus {
        self.core.status()
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &Config {
        self.core.config()
    }

    /// Whether [`close`](AuroraPool::close) was called.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Closes every instance pool (waiting, like `PgPool::close`, for checked-out
    /// connections to come back) and leaves the cluster monitor. Later checkouts fail.
    pub async fn close(&self) {
        self.core.close().await;
    }
}

impl fmt::Debug for AuroraPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuroraPool")
            .field("cluster_id", &self.core.config().cluster_id)
            .field("topology", &format_args!("{}", self.core.topology()))
            .field("closed", &self.core.is_closed())
            .finish()
    }
}

impl Builder {
    /// Builds the [`Config`] and connects an [`AuroraPool`] with it.
    pub async fn connect(self) -> Result<AuroraPool> {
        AuroraPool::connect_with(self.build()?).await
    }
}

/// The connect options every connection starts from: the driver part of the URL parsed by
/// sqlx itself. Credentials come from the provider.
fn base_options(config: &Config) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(config.driver_url().as_str()).map_err(|err| {
        Error::config("url", "sqlx rejected the connection parameters").with_source(err)
    })?;
    Ok(match config.ssl_mode() {
        None if config.requires_tls() => options.ssl_mode(PgSslMode::Require),
        _ => options,
    })
}

fn options_for(
    base: &PgConnectOptions,
    address: &HostPort,
    credentials: &Credentials,
) -> PgConnectOptions {
    let mut options = base.clone().host(&address.host).port(address.port);
    if let Some(user) = credentials.user() {
        options = options.username(user);
    }
    if let Some(password) = credentials.password() {
        options = options.password(password);
    }
    options
}

/// Wraps a sqlx error: server errors keep their SQLSTATE, broken connections and I/O are
/// connect errors, pool timeouts are timeouts.
pub(crate) fn from_sqlx(err: sqlx::Error, context: &str) -> Error {
    let sqlstate = sqlstate_of(&err);
    let wrapped = match &err {
        sqlx::Error::Database(_) => Error::driver(format!("{context} failed")),
        sqlx::Error::PoolTimedOut => Error::timeout(format!("{context} timed out")),
        sqlx::Error::PoolClosed => Error::closed(),
        sqlx::Error::Tls(_) => Error::connect(format!("{context} failed")).handshake_failed(),
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            Error::connect(format!("{context} failed"))
        }
        _ => Error::driver(format!("{context} failed")),
    };
    wrapped.with_sqlstate(sqlstate).with_source(err)
}

/// The SQLSTATE of a server error.
fn sqlstate_of(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

pub(crate) struct SqlxBackend {
    base: Arc<PgConnectOptions>,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    /// How long an idle connection may take to answer the test before its checkout.
    ping_limit: Duration,
}

impl SqlxBackend {
    /// Where the pool's next connection goes: the current route, with its credentials. A
    /// pool with no route (strict reads, no reader) points at the writer, whose connections
    /// its connect hook refuses.
    fn connect_options(&self, targets: &Targets) -> PgConnectOptions {
        match targets.current().or_else(|| targets.parked()) {
            Some(route) => {
                options_for(&self.base, route.instance.address(), &route.login.current())
            }
            None => (*self.base).clone(),
        }
    }
}

/// Why the shared reader pool refuses a connection while it has no reader to serve.
const NO_READER: &str = "no reachable reader may serve reads now, and reads may not use the writer (failover_mode is strict_reader, or the custom endpoint excludes the writer)";

/// Whether a new writer-pool connection's instance is read-only.
async fn is_read_only(conn: &mut PgConnection) -> sqlx::Result<bool> {
    let row = sqlx::raw_sql("SELECT pg_catalog.pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    row.try_get::<bool, _>(0)
}

impl Backend for SqlxBackend {
    // In an `Arc` of the crate's own: a pool that spreads its connections over several
    // instances points itself at the next one after each connect, through a `Weak` of this
    // `Arc` (a `PgPool` inside its own hook would never be freed).
    type Pool = Arc<PgPool>;

    fn open(
        &self,
        role: Role,
        follows: Follows,
        sizing: PoolSizing,
        targets: Arc<Targets>,
    ) -> Result<Arc<PgPool>> {
        let mut options = PgPoolOptions::new()
            .max_connections(sizing.max_connections)
            .min_connections(sizing.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime);
        let confirm_writer = role == Role::Writer;
        let rotates = role == Role::Reader && follows == Follows::Role;
        let itself: Arc<OnceLock<Weak<PgPool>>> = Arc::new(OnceLock::new());
        if confirm_writer || rotates {
            let (targets, itself, base) = (targets.clone(), itself.clone(), self.base.clone());
            options = options.after_connect(move |conn, _| {
                let (targets, itself, base) = (targets.clone(), itself.clone(), base.clone());
                Box::pin(async move {
                    if rotates {
                        // sqlx has no hook before a connect, and reads the pool's connect
                        // options at each one: pointing them at the next instance now sends
                        // the pool's next connection there.
                        if let (Some(pool), Some(route)) = (
                            itself.get().and_then(Weak::upgrade),
                            targets.next().or_else(|| targets.parked()),
                        ) {
                            pool.set_connect_options(options_for(
                                &base,
                                route.instance.address(),
                                &route.login.current(),
                            ));
                        }
                        let routes = targets.routes();
                        if routes.is_empty() {
                            return Err(sqlx::Error::Protocol(NO_READER.into()));
                        }
                        // A connect that began before the routes changed (to the writer the
                        // pool was parked on, or to a reader promoted since) may end after:
                        // while only readers serve reads, one round trip per new connection
                        // keeps the writer out.
                        if routes.iter().all(|r| r.instance.role() == Role::Reader)
                            && !is_read_only(conn).await?
                        {
                            return Err(sqlx::Error::Protocol(
                                "the instance takes writes: reads go to readers now".into(),
                            ));
                        }
                    }
                    // One round trip per new connection, none per checkout: a demoted
                    // writer's connection is refused (sqlx closes it and connects again, by
                    // then to the address the pool follows) instead of letting writes fail
                    // with 25006.
                    if confirm_writer && is_read_only(conn).await? {
                        return Err(sqlx::Error::Protocol(
                            "the instance is read-only: it is no longer the writer".into(),
                        ));
                    }
                    Ok(())
                })
            });
        }
        if follows == Follows::Role {
            // The only hooks sqlx runs on an existing connection, at checkout and on return:
            // a connection opened before the pool left its instance is closed there (sqlx
            // has no way to close another task's idle connections). sqlx's own test before
            // checkout would ping it first, without a time limit: on a silent old writer
            // that never returns. The hook tests the connections it keeps instead, bounded.
            let (fresh, ping_limit) = (targets.clone(), self.ping_limit);
            options = options
                .test_before_acquire(false)
                .before_acquire(move |conn, meta| {
                    let stale = fresh.is_stale_at_age(meta.age);
                    Box::pin(async move {
                        if stale {
                            return Ok(false);
                        }
                        match tokio::time::timeout(ping_limit, conn.ping()).await {
                            Ok(answered) => answered.map(|()| true),
                            Err(_) => Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())),
                        }
                    })
                });
            let fresh = targets.clone();
            options = options.after_release(move |_, meta| {
                let keep = !fresh.is_stale_at_age(meta.age);
                Box::pin(async move { Ok(keep) })
            });
        }
        let pool = Arc::new(options.connect_lazy_with(self.connect_options(&targets)));
        let _ = itself.set(Arc::downgrade(&pool));
        Ok(pool)
    }

    fn retarget(&self, pool: &Arc<PgPool>, targets: &Targets) {
        pool.set_connect_options(self.connect_options(targets));
    }

    fn close(pool: Arc<PgPool>) -> BoxFuture<'static, ()> {
        Box::pin(async move { pool.close().await })
    }

    fn is_closed(pool: &Arc<PgPool>) -> bool {
        pool.is_closed()
    }

    fn size_and_idle(pool: &Arc<PgPool>) -> (u32, u32) {
        (
            pool.size(),
            u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        )
    }

    type Connection = PoolConnection<Postgres>;

    fn discard(connection: PoolConnection<Postgres>) {
        drop(connection.detach());
    }

    fn begin(
        connection: &mut PoolConnection<Postgres>,
        statement: String,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // sqlx's own bookkeeping: a `begin()` inside the work sees a transaction open and
            // makes a savepoint, and its commit releases that savepoint.
            PgTransactionManager::begin(
                &mut **connection,
                Some(AssertSqlSafe(statement).into_sql_str()),
            )
            .await
            .map_err(|err| from_sqlx(err, "BEGIN"))
        })
    }

    fn commit(connection: &mut PoolConnection<Postgres>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            PgTransactionManager::commit(&mut **connection)
                .await
                .map_err(|err| from_sqlx(err, "COMMIT"))
        })
    }

    fn rollback(connection: &mut PoolConnection<Postgres>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            PgTransactionManager::rollback(&mut **connection)
                .await
                .map_err(|err| from_sqlx(err, "ROLLBACK"))
        })
    }

    fn query_value(
        connection: &mut PoolConnection<Postgres>,
        sql: String,
    ) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move {
            let row = sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_optional(&mut **connection)
                .await
                .map_err(|err| from_sqlx(err, "a query of the pool's"))?;
            match row {
                Some(row) => row
                    .try_get::<Option<String>, _>(0)
                    .map_err(|err| from_sqlx(err, "reading a query's value")),
                None => Ok(None),
            }
        })
    }

    fn acquire(pool: &Arc<PgPool>) -> BoxFuture<'static, Result<PoolConnection<Postgres>>> {
        let acquire = pool.acquire();
        Box::pin(async move {
            acquire
                .await
                .map_err(|err| from_sqlx(err, "checking out a connection"))
        })
    }
}

/// One attempt of the caller's work on a sqlx connection.
struct SqlxAttempt<'p, F> {
    pool: &'p AuroraPool,
    role: Role,
    work: &'p mut F,
}

impl<T, F> Retried<PoolConnection<Postgres>, T> for SqlxAttempt<'_, F>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send,
    T: Send,
{
    fn attempt<'a>(&'a mut self, conn: &'a mut PoolConnection<Postgres>) -> BoxFuture<'a, Result<T>>
    where
        T: 'a,
    {
        Box::pin(async move {
            let role = self.role;
            (self.work)(conn)
                .await
                .map_err(|err| self.pool.classify_as(Some(role), err))
        })
    }
}

struct SqlxConnector {
    base: PgConnectOptions,
    cluster_id: String,
    connect_timeout: Duration,
    provider: Arc<dyn CredentialProvider>,
    user: String,
}

impl Connector for SqlxConnector {
    fn connect<'a>(
        &'a self,
        address: &'a HostPort,
        purpose: Purpose,
    ) -> BoxFuture<'a, Result<Box<dyn AdminConnection>>> {
        Box::pin(async move {
            let target = ConnectTarget::new(address.host.clone(), address.port, &self.user);
            let application_name = purpose.application_name(&self.cluster_id);
            let connect = |credentials: Arc<Credentials>| -> BoxFuture<'static, Result<_>> {
                // The crate's own queries are not the user's: keep them out of sqlx's
                // statement log.
                let options = options_for(&self.base, address, &credentials)
                    .application_name(&application_name)
                    .log_statements(tracing::log::LevelFilter::Off)
                    .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
                let (address, timeout) = (address.clone(), self.connect_timeout);
                Box::pin(async move {
                    let connect = async {
                        // A plain connect first: it reports a refused connection at once,
                        // where a pool's connect retries it until its timeout, and a dead
                        // instance must be told from a slow one.
                        let probe = PgConnection::connect_with(&options).await?;
                        let _ = probe.close().await;
                        SqlxAdmin::watched(options, timeout).await
                    };
                    match tokio::time::timeout(timeout, connect).await {
                        Ok(Ok(conn)) => Ok(Box::new(conn) as Box<dyn AdminConnection>),
                        Ok(Err(err)) => Err(admin_connect_error(&address, err)),
                        Err(_) => Err(Error::timeout(format!(
                            "connecting to {address} took longer than connect_timeout ({timeout:?})"
                        ))),
                    }
                })
            };
            login::connect_with_login(
                self.provider.as_ref(),
                &target,
                self.connect_timeout,
                connect,
            )
            .await
        })
    }
}

/// How long closing one of the crate's own connections may take.
const ADMIN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A failed connect of the crate's own: the server's refusal keeps its SQLSTATE, a broken-off
/// TLS handshake marks the instance busy rather than gone.
fn admin_connect_error(address: &HostPort, err: sqlx::Error) -> Error {
    let handshake = matches!(err, sqlx::Error::Tls(_));
    let wrapped = Error::connect(format!("connecting to {address} failed"))
        .with_sqlstate(sqlstate_of(&err))
        .with_source(err);
    if handshake {
        wrapped.handshake_failed()
    } else {
        wrapped
    }
}

/// The crate's own connection. It is a `PgListener` (over a pool of one connection that
/// never reconnects by itself) because that is the one sqlx API that reads the socket of
/// an idle connection: its `try_recv` returns the moment the server goes away, which is
/// how a crashed instance is seen at once.
struct SqlxAdmin {
    listener: PgListener,
    pool: PgPool,
}

impl SqlxAdmin {
    async fn watched(options: PgConnectOptions, timeout: Duration) -> sqlx::Result<SqlxAdmin> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        Ok(SqlxAdmin { listener, pool })
    }
}

impl AdminConnection for SqlxAdmin {
    fn closed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                match self.listener.try_recv().await {
                    // No channel is listened to; nothing else arrives on an idle connection.
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                }
            }
        })
    }

    fn query<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<Vec<TextRow>>> {
        Box::pin(async move {
            let rows = sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_all(&mut self.listener)
                .await
                .map_err(|err| from_sqlx(err, "topology query"))?;
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| {
                            let value = row
                                .try_get_raw(i)
                                .map_err(|err| from_sqlx(err, "reading a topology row"))?;
                            if value.is_null() {
                                return Ok(None);
                            }
                            value.as_str().map(|s| Some(s.to_owned())).map_err(|err| {
                                Error::topology(format!("column {i} is not text: {err}"))
                            })
                        })
                        .collect()
                })
                .collect()
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let SqlxAdmin { listener, pool } = *self;
            drop(listener);
            // sqlx pings the connection it takes back, without a timeout: on a silent host
            // that would never end.
            let _ = tokio::time::timeout(ADMIN_CLOSE_WAIT, pool.close()).await;
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
            Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await.map(|_| ()) })
        }));
    }

    #[test]
    fn pool_is_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<AuroraPool>();
    }
}
