//! deadpool's hooks and the crate's settings in code, applied to every pool an
//! `AuroraPool` opens: the writer's, the readers', and one per reader.

use std::fmt;
use std::sync::Arc;

use ::deadpool::managed::Hook;
use deadpool_postgres::ClientWrapper;

use super::{AuroraPool, HookFuture, Manager, Metrics};
use crate::config::{Builder, Config, delegated_setting};
use crate::error::Result;
use crate::pool::core::Start;

/// A hook on a connection, as deadpool's [`Hook::async_fn`] takes it.
type HookFn =
    Arc<dyn for<'a> Fn(&'a mut ClientWrapper, &'a Metrics) -> HookFuture<'a> + Send + Sync>;

/// The user's hooks, cloned into every pool the `AuroraPool` opens.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    post_create: Vec<HookFn>,
    pre_recycle: Vec<HookFn>,
    post_recycle: Vec<HookFn>,
}

impl Hooks {
    /// `builder` with these hooks, each after the crate's own checks (which run inside the
    /// manager's `create` and `recycle`).
    pub(super) fn install(
        &self,
        mut builder: ::deadpool::managed::PoolBuilder<Manager>,
    ) -> ::deadpool::managed::PoolBuilder<Manager> {
        let hook = |f: &HookFn| {
            let f = f.clone();
            Hook::async_fn(move |client: &mut ClientWrapper, metrics: &Metrics| f(client, metrics))
        };
        for f in &self.post_create {
            builder = builder.post_create(hook(f));
        }
        for f in &self.pre_recycle {
            builder = builder.pre_recycle(hook(f));
        }
        for f in &self.post_recycle {
            builder = builder.post_recycle(hook(f));
        }
        builder
    }
}

/// Everything a deadpool [`AuroraPool`] can be given in code: the settings of the URL's
/// parameters (each as the [`Builder`](crate::Builder) method of the same name, with
/// `Duration`s) and deadpool's hooks for every pool it opens (the writer's, the readers',
/// one per reader). Settings made here win over the URL's parameters. The sqlx flavour's
/// [`AuroraPoolOptions`](crate::AuroraPoolOptions) takes the same settings.
///
/// The hooks are deadpool's (`PoolBuilder::post_create` and its neighbours), with the
/// crate's [`Error`](crate::Error) as the backend error ([`HookError`](super::HookError));
/// a `tokio_postgres::Error` converts with `.map_err(|e| HookError::Backend(e.into()))`.
/// `post_create` runs after the crate has confirmed a new writer connection takes writes, and
/// `post_recycle` after its recycling checks (a connection to an instance its pool left is
/// closed there); deadpool runs `pre_recycle` before them, so it may see a connection the
/// crate then closes: keep I/O out of it (use `post_recycle`). As in deadpool, an error from `post_create` fails the
/// checkout with it (the error itself for `HookError::Backend`),
/// and an error from `pre_recycle` or `post_recycle` closes the connection and checks out
/// another.
///
/// ```no_run
/// # async fn f() -> aurora_pool::Result<()> {
/// use std::time::Duration;
/// use aurora_pool::deadpool::{AuroraPoolOptions, HookError};
///
/// let pool = AuroraPoolOptions::new()
///     .writer_max_connections(20)
///     .acquire_timeout(Duration::from_secs(5))
///     .post_create(|client, _metrics| {
///         Box::pin(async move {
///             client
///                 .batch_execute("SET search_path = tenant_a")
///                 .await
///                 .map_err(|e| HookError::Backend(e.into()))
///         })
///     })
///     .pre_recycle(|_client, metrics| {
///         // Connections that served 10,000 checkouts are replaced.
///         let worn = metrics.recycle_count >= 10_000;
///         Box::pin(async move {
///             match worn {
///                 true => Err(HookError::message("worn out")),
///                 false => Ok(()),
///             }
///         })
///     })
///     .connect("postgres://app@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app")
///     .await?;
/// # drop(pool); Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct AuroraPoolOptions {
    /// The settings of the URL's parameters made in code.
    settings: Builder,
    hooks: Hooks,
}

impl AuroraPoolOptions {
    /// No hooks, no settings: the URL's parameters and the defaults.
    pub fn new() -> AuroraPoolOptions {
        AuroraPoolOptions::default()
    }

    /// Runs `hook` on every new connection of every pool, after the crate's own checks
    /// (deadpool's `post_create`): set `search_path`, prepare statements. An error fails
    /// the checkout with it, and the connection is closed.
    pub fn post_create<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut ClientWrapper, &'a Metrics) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.post_create.push(Arc::new(hook));
        self
    }

    /// Runs `hook` before an idle connection is handed out again (deadpool's `pre_recycle`),
    /// before the crate's recycling checks: it may see a connection to an instance the pool
    /// left, or a dead one, which the crate then closes; do no I/O here (`post_recycle`
    /// runs after the checks). An error closes the connection and checks out another.
    pub fn pre_recycle<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut ClientWrapper, &'a Metrics) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.pre_recycle.push(Arc::new(hook));
        self
    }

    /// Runs `hook` after an idle connection passed the recycling checks (deadpool's
    /// `post_recycle`); an error closes the connection and checks out another.
    pub fn post_recycle<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut ClientWrapper, &'a Metrics) -> HookFuture<'a> + Send + Sync + 'static,
    {
        self.hooks.post_recycle.push(Arc::new(hook));
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
        AuroraPool::start(config, self.hooks, Start::Now).await
    }

    /// Opens a pool with a URL and these options that discovers its cluster in the
    /// background ([`AuroraPool::connect_lazy`]).
    pub async fn connect_lazy(self, url: &str) -> Result<AuroraPool> {
        self.connect_lazy_with(Config::from_url(url)?).await
    }

    /// [`connect_lazy`](Self::connect_lazy) with a prepared [`Config`].
    pub async fn connect_lazy_with(self, config: Config) -> Result<AuroraPool> {
        let config = self.settings.apply_to(config)?;
        AuroraPool::start(config, self.hooks, Start::Lazy).await
    }

    crate::config::delegate_settings!();
}

impl fmt::Debug for AuroraPoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("deadpool::AuroraPoolOptions")
            .field("post_create", &self.hooks.post_create.len())
            .field("pre_recycle", &self.hooks.pre_recycle.len())
            .field("post_recycle", &self.hooks.post_recycle.len())
            .finish_non_exhaustive()
    }
}
