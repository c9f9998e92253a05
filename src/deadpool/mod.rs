//! The deadpool-postgres flavour (feature `deadpool`): the same cluster-aware pool, with
//! checkouts that are deadpool objects over `tokio_postgres` clients.
//!
//! [`AuroraPool`] here has the sqlx flavour's roles, topology, shared monitor, eviction and
//! credential providers. Its instance pools are [`Pool`]s whose [`Object`]s deref to
//! [`deadpool_postgres::ClientWrapper`] (with its statement cache: `prepare_cached`) and then
//! to [`tokio_postgres::Client`].
//!
//! What deadpool leaves out is provided: connections idle for `idle_timeout_ms` are closed and
//! pools are refilled to their minimum (`*_min_connections`) by a maintenance task per instance
//! pool; connections older than `max_lifetime_ms` are not recycled; connects are bounded by
//! `connect_timeout` and checkouts by `acquire_timeout_ms`. Recycling asks the server (an empty
//! query) about a connection idle for more than 500 ms, so a dead one is not handed out.
//! Connections use TCP keepalives and
//! `tcp_user_timeout`. When an instance is declared dead its connection tasks are aborted:
//! queries in flight fail at once instead of hanging.
//!
//! Credentials are asked of the provider on every new connection.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use aurora_pool::deadpool::AuroraPool;
//!
//! let pool = AuroraPool::connect(
//!     "postgres://app:secret@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app",
//! )
//! .await?;
//! let client = pool.writer().get().await?;
//! let insert = client.prepare_cached("INSERT INTO orders (id) VALUES ($1)").await?;
//! client.execute(&insert, &[&7_i64]).await?;
//! let rows = pool.reader().get().await?.query("SELECT id FROM orders", &[]).await?;
//! # drop(rows);
//! # Ok(())
//! # }
//! ```

mod backend;
mod error;
mod manager;
mod options;
mod tls;
mod work;

pub use work::WorkError;

use std::sync::Arc;

use self::backend::DeadpoolBackend;
use self::options::Hooks;
use crate::BoxFuture;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pool::TransactionOptions;
use crate::pool::attempts;
use crate::pool::backend::{Attempt, Retried};
use crate::pool::core::{PoolCore, Start};
use crate::pool::facade::{facade_debug, shared_facade};
use crate::pool::login;
use crate::pool::scope::ScopeSource;
use crate::pool::work::WorkErrors;
use crate::retry::RetryPolicy;
use crate::topology::Role;
use deadpool_postgres::ClientWrapper;

pub use self::manager::Manager;
pub use self::options::AuroraPoolOptions;

/// What a hook of [`AuroraPoolOptions`] returns on failure: deadpool's `HookError` with the
/// crate's [`Error`] as its backend error.
pub type HookError = ::deadpool::managed::HookError<Error>;

/// The future a hook of [`AuroraPoolOptions`] returns.
pub type HookFuture<'a> = ::deadpool::managed::HookFuture<'a, Error>;

/// A connection's age and use, as deadpool keeps them (given to every hook).
pub use ::deadpool::managed::Metrics;

/// The pool of one instance.
pub type Pool = ::deadpool::managed::Pool<Manager>;

/// A checked-out connection: derefs to [`deadpool_postgres::ClientWrapper`].
pub type Object = ::deadpool::managed::Object<Manager>;

/// A cluster-aware pool handing out deadpool [`Pool`]s per role; see the
/// [module documentation](self).
#[derive(Clone)]
pub struct AuroraPool {
    core: Arc<PoolCore<DeadpoolBackend>>,
}

impl AuroraPool {
    /// Connects with a URL (the parameters of the README): discovers the topology and starts
    /// (or joins) the cluster monitor.
    pub async fn connect(url: &str) -> Result<AuroraPool> {
        AuroraPool::connect_with(Config::from_url(url)?).await
    }

    /// Connects with a prepared [`Config`] (see [`crate::Builder::build`]).
    pub async fn connect_with(config: Config) -> Result<AuroraPool> {
        AuroraPool::start(config, Hooks::default(), Start::Now).await
    }

    /// Opens the pool without touching the database: discovery runs in the background
    /// until it succeeds, and checkouts wait for it within their timeout (see
    /// [`crate::AuroraPool::connect_lazy`], the sqlx flavour's, for the details).
    pub async fn connect_lazy(url: &str) -> Result<AuroraPool> {
        AuroraPool::connect_lazy_with(Config::from_url(url)?).await
    }

    /// [`connect_lazy`](Self::connect_lazy) with a prepared [`Config`].
    pub async fn connect_lazy_with(config: Config) -> Result<AuroraPool> {
        AuroraPool::start(config, Hooks::default(), Start::Lazy).await
    }

    async fn start(config: Config, hooks: Hooks, when: Start) -> Result<AuroraPool> {
        config.validate()?;
        let provider = login::provider_for(&config).await?;
        let backend = DeadpoolBackend::new(&config, provider.clone(), hooks)?;
        let connector = Arc::new(backend.connector(&config));
        let scope = ScopeSource::new(&config).await?;
        let core = PoolCore::start(config, backend, connector, provider, scope, when).await?;
        Ok(AuroraPool { core })
    }

    shared_facade!(
        handle = Pool,
        connection = Object,
        to_handle = |pool: Pool| pool,
        writer_docs = {
            ///
            /// Recycling refuses (closes) a connection opened before the pool left its
            /// instance; each new connection confirms that its instance takes writes.
        },
    );

    /// Runs `work` on a connection for `role`, and again on a fresh checkout only when it
    /// cannot have been applied (the failure came before it was sent, or it ran on a
    /// reader), or when the policy says it is [`idempotent`](crate::RetryPolicy::idempotent);
    /// a write on the writer whose connection was lost after it was sent is
    /// [`Error::is_outcome_unknown`]. As the sqlx flavour's `run`. `work` returns a boxed
    /// future that may borrow the client.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::deadpool::AuroraPool) -> aurora_pool::Result<()> {
    /// use aurora_pool::Role;
    /// let open: i64 = pool
    ///     .run(Role::Reader, |client| {
    ///         Box::pin(async move {
    ///             let row = client
    ///                 .query_one("SELECT count(*) FROM jobs WHERE state = 'new'", &[])
    ///                 .await?;
    ///             Ok(row.get(0))
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = open; Ok(()) }
    /// ```
    pub async fn run<T, F>(&self, role: Role, work: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c ClientWrapper) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>
            + Send,
        T: Send,
    {
        self.run_with(RetryPolicy::new(), role, work).await
    }

    /// [`run`](AuroraPool::run) with an explicit [`RetryPolicy`].
    pub async fn run_with<T, F>(&self, policy: RetryPolicy, role: Role, mut work: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c ClientWrapper) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>
            + Send,
        T: Send,
    {
        self.retried(policy, role, Attempt::Plain, &mut work).await
    }

    /// Runs `work` in a transaction on the writer, as the sqlx flavour's
    /// [`transaction`](crate::AuroraPool::transaction): run again only when known not to have
    /// committed (a `COMMIT` whose answer was lost is looked up with `txid_status`), and the
    /// connection closed if the future is dropped inside the transaction. `work` gets the
    /// client, not a tokio-postgres `Transaction`: a savepoint inside it is `SAVEPOINT` /
    /// `RELEASE SAVEPOINT` by hand.
    ///
    /// The work's error type ([`WorkError`]) is `tokio_postgres::Error` (the call then
    /// returns [`aurora_pool::Error`](crate::Error)), or any type the crate's error converts
    /// into, returned as it is: the crate's error itself, or an application's own.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::deadpool::AuroraPool) -> aurora_pool::Result<()> {
    /// // The client's own errors, as tokio-postgres users write it:
    /// let moved: u64 = pool
    ///     .transaction(|client| {
    ///         Box::pin(async move {
    ///             client
    ///                 .execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[])
    ///                 .await?;
    ///             client
    ///                 .execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[])
    ///                 .await
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = moved; Ok(()) }
    /// ```
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E::Returned>
    where
        F: for<'c> FnMut(&'c ClientWrapper) -> BoxFuture<'c, Result<T, E>> + Send,
        T: Send,
        E: WorkError,
    {
        self.transaction_with(TransactionOptions::new(), work).await
    }

    /// [`transaction`](AuroraPool::transaction) with a [`RetryPolicy`] or
    /// [`TransactionOptions`].
    pub async fn transaction_with<T, E, F>(
        &self,
        options: impl Into<TransactionOptions>,
        mut work: F,
    ) -> Result<T, E::Returned>
    where
        F: for<'c> FnMut(&'c ClientWrapper) -> BoxFuture<'c, Result<T, E>> + Send,
        T: Send,
        E: WorkError,
    {
        let options = options.into();
        let kind = Attempt::Transaction(options);
        let mut attempt = DeadpoolAttempt {
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
        attempt
            .errors
            .finish_as(result, E::into_returned, E::from_pool)
    }

    /// The retry loop behind `run`.
    async fn retried<T, F>(
        &self,
        policy: RetryPolicy,
        role: Role,
        kind: Attempt,
        work: &mut F,
    ) -> Result<T>
    where
        F: for<'c> FnMut(&'c ClientWrapper) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>
            + Send,
        T: Send,
    {
        let mut attempt = DeadpoolAttempt {
            pool: self,
            role: kind.classified_as(role),
            work,
            errors: WorkErrors::new(),
        };
        attempts::retry(&self.core, policy, role, kind, &mut attempt).await
    }

    /// Wraps an error from a query on one of this pool's connections; a failover-class error
    /// ([`Error::is_failover`]) makes the monitor re-read the topology at once. A read-only
    /// refusal (`25006`) makes it re-check the writer but stays the driver's error, as in
    /// the sqlx flavour.
    pub fn classify(&self, err: tokio_postgres::Error) -> Error {
        self.classify_error(error::from_pg(err, "the statement"))
    }

    /// [`classify`](AuroraPool::classify) for an error already wrapped as the crate's (`?`
    /// on a `tokio_postgres::Error` in an axum handler).
    pub(crate) fn classify_error(&self, err: Error) -> Error {
        self.core.classify(err)
    }
}

/// One attempt of the caller's work on a deadpool connection.
struct DeadpoolAttempt<'p, F, E> {
    pool: &'p AuroraPool,
    role: Role,
    work: &'p mut F,
    errors: WorkErrors<E>,
}

impl<T, E, F> Retried<Object, T> for DeadpoolAttempt<'_, F, E>
where
    F: for<'c> FnMut(&'c ClientWrapper) -> BoxFuture<'c, Result<T, E>> + Send,
    T: Send,
    E: Send + 'static,
{
    fn attempt<'a>(&'a mut self, client: &'a mut Object) -> BoxFuture<'a, Result<T>>
    where
        T: 'a,
    {
        Box::pin(async move {
            let (role, pool) = (self.role, self.pool);
            match (self.work)(client).await {
                Ok(value) => Ok(value),
                Err(err) => Err(self.errors.take(
                    err,
                    |driver: tokio_postgres::Error| error::from_pg(driver, "the statement"),
                    |err| pool.core.classify_for(role, err),
                )),
            }
        })
    }
}

facade_debug!(AuroraPool, "deadpool");
