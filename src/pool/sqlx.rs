//! The sqlx backend: `AuroraPool` hands out `sqlx::PgPool`s, one per instance.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres, Row, ValueRef};

use super::core::{Backend, PoolCore};
use super::status::PoolStatus;
use crate::config::{Builder, Config, PoolSizing};
use crate::connector::{AdminConnection, BoxFuture, Connector, Purpose, TextRow};
use crate::endpoint::HostPort;
use crate::error::{Error, Result};
use crate::topology::{Instance, Role, Topology};

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
        let base = base_options(&config)?;
        let connector = Arc::new(SqlxConnector {
            base: base.clone(),
            cluster_id: config.cluster_id.clone(),
            connect_timeout: config.connect_timeout,
        });
        let backend = SqlxBackend {
            base,
            acquire_timeout: config.acquire_timeout,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
        };
        let core = PoolCore::start(config, backend, connector).await?;
        Ok(AuroraPool { core })
    }

    /// A builder for settings made in code; finish it with [`Builder::connect`].
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The pool of the current writer instance.
    ///
    /// Call it per unit of work rather than keeping the handle: after a writer change the
    /// old writer's pool is closed, and checkouts from a kept handle fail with
    /// `PoolClosed` instead of reaching the old writer.
    pub fn writer(&self) -> PgPool {
        self.core.writer()
    }

    /// The pool of a reader instance chosen by `reader_host_selector_strategy`.
    ///
    /// When the cluster has no reader this returns the writer's pool, whatever
    /// `reader_fallback_to_writer` says, because it cannot fail; use
    /// [`try_reader`](AuroraPool::try_reader) or [`acquire`](AuroraPool::acquire) for a strict
    /// choice.
    pub fn reader(&self) -> PgPool {
        self.core.reader().unwrap_or_else(|| self.core.writer())
    }

    /// Like [`reader`](AuroraPool::reader), but with no reader instance it fails when
    /// `reader_fallback_to_writer` is false (and when the pool is closed).
    pub fn try_reader(&self) -> Result<PgPool> {
        self.core.pool_for(Role::Reader)
    }

    /// Checks out one connection for `role`.
    pub async fn acquire(&self, role: Role) -> Result<PoolConnection<Postgres>> {
        let pool = self.core.pool_for(role)?;
        pool.acquire()
            .await
            .map_err(|err| from_sqlx(err, &format!("acquiring a {role} connection")))
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
/// sqlx itself, plus the password.
fn base_options(config: &Config) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(config.driver_url().as_str()).map_err(|err| {
        Error::config("url", "sqlx rejected the connection parameters").with_source(err)
    })?;
    Ok(match config.password() {
        Some(password) => options.password(password),
        None => options,
    })
}

fn options_for(base: &PgConnectOptions, address: &HostPort) -> PgConnectOptions {
    base.clone().host(&address.host).port(address.port)
}

/// Wraps a sqlx error: server errors keep their SQLSTATE, broken connections and I/O are
/// connect errors, pool timeouts are timeouts.
pub(crate) fn from_sqlx(err: sqlx::Error, context: &str) -> Error {
    let sqlstate = err
        .as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned());
    let wrapped = match &err {
        sqlx::Error::Database(_) => Error::driver(format!("{context} failed")),
        sqlx::Error::PoolTimedOut => Error::timeout(format!("{context} timed out")),
        sqlx::Error::PoolClosed => Error::closed(),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
            Error::connect(format!("{context} failed"))
        }
        _ => Error::driver(format!("{context} failed")),
    };
    wrapped.with_sqlstate(sqlstate).with_source(err)
}

pub(crate) struct SqlxBackend {
    base: PgConnectOptions,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
}

impl Backend for SqlxBackend {
    type Pool = PgPool;

    fn open(&self, instance: &Instance, sizing: PoolSizing) -> PgPool {
        tracing::debug!(
            target: "aurora_pool",
            instance = instance.id(),
            role = %instance.role(),
            address = %instance.address(),
            "opening instance pool"
        );
        PgPoolOptions::new()
            .max_connections(sizing.max_connections)
            .min_connections(sizing.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            .connect_lazy_with(options_for(&self.base, instance.address()))
    }

    fn close(pool: PgPool) -> BoxFuture<'static, ()> {
        Box::pin(async move { pool.close().await })
    }

    fn size_and_idle(pool: &PgPool) -> (u32, u32) {
        (
            pool.size(),
            u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        )
    }
}

struct SqlxConnector {
    base: PgConnectOptions,
    cluster_id: String,
    connect_timeout: Duration,
}

impl Connector for SqlxConnector {
    fn connect<'a>(
        &'a self,
        address: &'a HostPort,
        purpose: Purpose,
    ) -> BoxFuture<'a, Result<Box<dyn AdminConnection>>> {
        Box::pin(async move {
            let options = options_for(&self.base, address)
                .application_name(&purpose.application_name(&self.cluster_id));
            let context = format!("connecting to {address}");
            match tokio::time::timeout(self.connect_timeout, PgConnection::connect_with(&options))
                .await
            {
                Ok(Ok(conn)) => Ok(Box::new(SqlxAdmin(conn)) as Box<dyn AdminConnection>),
                Ok(Err(err)) => {
                    let sqlstate = err
                        .as_database_error()
                        .and_then(|db| db.code())
                        .map(|c| c.into_owned());
                    Err(Error::connect(format!("{context} failed"))
                        .with_sqlstate(sqlstate)
                        .with_source(err))
                }
                Err(_) => Err(Error::timeout(format!(
                    "{context} took longer than connect_timeout ({:?})",
                    self.connect_timeout
                ))),
            }
        })
    }
}

struct SqlxAdmin(PgConnection);

impl AdminConnection for SqlxAdmin {
    fn query<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<Vec<TextRow>>> {
        Box::pin(async move {
            let rows = sqlx::raw_sql(AssertSqlSafe(sql))
                .fetch_all(&mut self.0)
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
            let _ = self.0.close().await;
        })
    }
}
