//! sqlx's own pool and connection settings, applied to every pool an `AuroraPool` opens:
//! the writer's, the readers', and one per reader.

use std::fmt;
use std::sync::Arc;

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::AuroraPool;
use crate::config::{Builder, Config, delegated_setting};
use crate::connector::BoxFuture;
use crate::error::Result;
use crate::pool::core::Start;

/// A hook run on a new connection (sqlx's `PoolOptions::after_connect`).
pub(crate) type AfterConnect = Arc<
    dyn for<'c> Fn(&'c mut PgConnection, PoolConnectionMetadata) -> BoxFuture<'c, sqlx::Result<()>>
        + Send
        + Sync,
>;

/// A hook that decides whether a connection is kept (sqlx's `before_acquire` and
/// `after_release`).
pub(crate) type KeepHook = Arc<
    dyn for<'c> Fn(
            &'c mut PgConnection,
            PoolConnectionMetadata,
        ) -> BoxFuture<'c, sqlx::Result<bool>>
        + Send
        + Sync,
>;

/// Changes the connect options every connection starts from.
pub(crate) type MapConnectOptions = Arc<dyn Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync>;

/// Everything an [`AuroraPool`] can be given in code, shaped like sqlx's `PgPoolOptions`:
/// the sizes, timeouts and other settings of the URL's parameters (each as the
/// [`Builder`](crate::Builder) method of the same name, with `Duration`s), and sqlx's hooks
/// and connect options for every pool it opens (the writer's, the readers', one per
/// reader). Settings made here win over the URL's parameters.
///
/// The hooks run after the crate's own (the writer check of a new writer connection, the
/// test that closes a connection to an instance its pool left), so a hook never sees a
/// connection the crate refuses.
///
/// ```no_run
/// # async fn f() -> aurora_pool::Result<()> {
/// use std::time::Duration;
/// use aurora_pool::AuroraPoolOptions;
/// use sqlx::{ConnectOptions, Executor};
///
/// let pool = AuroraPoolOptions::new()
///     .writer_max_connections(20)
///     .acquire_timeout(Duration::from_secs(5))
///     .failover_timeout(Duration::from_secs(10))
///     .after_connect(|conn, _meta| {
///         Box::pin(async move {
///             conn.execute("SET search_path = tenant_a").await?;
///             Ok(())
///         })
///     })
///     .connect_options(|options| {
///         options.log_statements(tracing::log::LevelFilter::Debug)
///     })
///     .connect("postgres://app@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app")
///     .await?;
/// # drop(pool); Ok(()) }
/// ```
#[derive(Clone)]
pub struct AuroraPoolOptions {
    /// The settings of the URL's parameters made in code.
    settings: Builder,
    pub(crate) after_connect: Option<AfterConnect>,
    pub(crate) before_acquire: Option<KeepHook>,
    pub(crate) after_release: Option<KeepHook>,
    pub(crate) test_before_acquire: bool,
    pub(crate) connect_options: Option<MapConnectOptions>,
}

impl Default for AuroraPoolOptions {
    fn default() -> Self {
        AuroraPoolOptions::new()
    }
}

impl AuroraPoolOptions {
    /// sqlx's defaults: no hooks, idle connections tested before a checkout.
    pub fn new() -> AuroraPoolOptions {
        AuroraPoolOptions {
            settings: Builder::new(),
            after_connect: None,
            before_acquire: None,
            after_release: None,
            test_before_acquire: true,
            connect_options: None,
        }
    }

    /// Runs `hook` on every new connection of every pool, after the crate's own checks (as
    /// `PgPoolOptions::after_connect`): set `search_path`, register types, prepare
    /// statements. An error closes the connection, and sqlx connects again.
    pub fn after_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut PgConnection,
                PoolConnectionMetadata,
            ) -> BoxFuture<'c, sqlx::Result<()>>
            + Send
            + Sync
            + 'static,
    {
        self.after_connect = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` before an idle connection is checked out (as
    /// `PgPoolOptions::before_acquire`); `Ok(false)` closes it and checks out another.
    pub fn before_acquire<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut PgConnection,
                PoolConnectionMetadata,
            ) -> BoxFuture<'c, sqlx::Result<bool>>
            + Send
            + Sync
            + 'static,
    {
        self.before_acquire = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` when a connection is returned (as `PgPoolOptions::after_release`);
    /// `Ok(false)` closes it instead of keeping it.
    pub fn after_release<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut PgConnection,
                PoolConnectionMetadata,
            ) -> BoxFuture<'c, sqlx::Result<bool>>
            + Send
            + Sync
            + 'static,
    {
        self.after_release = Some(Arc::new(hook));
        self
    }

    /// Whether an idle connection is pinged before a checkout (default `true`, as sqlx).
    /// The writer's and the readers' pools bound the ping by `connect_timeout`.
    pub fn test_before_acquire(mut self, test: bool) -> Self {
        self.test_before_acquire = test;
        self
    }

    /// Changes the `PgConnectOptions` every connection starts from: statement logging,
    /// `ssl_root_cert_from_pem`, `extra_float_digits`, ... The host, port, user and
    /// password are set per connection afterwards (from the topology and the credential
    /// provider); the crate's own connections keep their statements out of the log.
    pub fn connect_options<F>(mut self, map: F) -> Self
    where
        F: Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync + 'static,
    {
        self.connect_options = Some(Arc::new(map));
        self
    }

    /// Connects with a URL (the parameters of the README) and these options.
    pub async fn connect(self, url: &str) -> Result<AuroraPool> {
        self.connect_with(Config::from_url(url)?).await
    }

    /// Connects with a prepared [`Config`] and these options (their settings win over the
    /// config's).
    pub async fn connect_with(self, config: Config) -> Result<AuroraPool> {
        let config = self.settings.apply_to(config)?;
        AuroraPool::start(config, self, Start::Now).await
    }

    /// Opens a pool with a URL and these options that discovers its cluster in the
    /// background ([`AuroraPool::connect_lazy`]).
    pub async fn connect_lazy(self, url: &str) -> Result<AuroraPool> {
        self.connect_lazy_with(Config::from_url(url)?).await
    }

    /// [`connect_lazy`](Self::connect_lazy) with a prepared [`Config`].
    pub async fn connect_lazy_with(self, config: Config) -> Result<AuroraPool> {
        let config = self.settings.apply_to(config)?;
        AuroraPool::start(config, self, Start::Lazy).await
    }

    crate::config::delegate_settings!();
}

impl fmt::Debug for AuroraPoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuroraPoolOptions")
            .field("after_connect", &self.after_connect.is_some())
            .field("before_acquire", &self.before_acquire.is_some())
            .field("after_release", &self.after_release.is_some())
            .field("test_before_acquire", &self.test_before_acquire)
            .field("connect_options", &self.connect_options.is_some())
            .finish()
    }
}
