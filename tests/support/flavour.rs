//! The backend-generic harness: what a scenario needs of a pool flavour, implemented for the
//! sqlx flavour and (with the `deadpool` feature) the deadpool flavour, and
//! [`flavour_tests!`](crate::support::flavour::flavour_tests) to run scenarios against both.

use std::sync::Arc;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{BoxFuture, ClusterEvent, Config, Error, PoolStatus, Role, Topology};

/// An application's own error type for `transaction`'s work.
#[derive(Debug)]
pub enum Declined {
    /// The work refused, with this code.
    ByTheWork(u32),
    /// The pool or the driver failed.
    Pool(Error),
}

impl From<Error> for Declined {
    fn from(err: Error) -> Declined {
        Declined::Pool(err)
    }
}

/// What happens in the middle of a transaction or between a checkout and its query.
pub type Interrupt = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// An [`Interrupt`] that promotes `promoted` and leaves the old writer down.
pub fn failover_to(cluster: &Arc<LocalCluster>, promoted: &'static str) -> Interrupt {
    let cluster = cluster.clone();
    Arc::new(move || {
        let cluster = cluster.clone();
        Box::pin(async move { cluster.failover(promoted, None).await.expect("failover") })
    })
}

/// The id of the instance that serves the query.
pub const INSTANCE_ID: &str = "SELECT pg_catalog.aurora_db_instance_identifier()";

/// [`INSTANCE_ID`], holding the connection for 50 ms.
pub const HELD_INSTANCE_ID: &str =
    "SELECT pg_catalog.aurora_db_instance_identifier() FROM pg_catalog.pg_sleep(0.05)";

/// What the scenarios need of a pool flavour.
pub trait Flavour: Clone + std::fmt::Debug + Send + Sync + Sized + 'static {
    fn connect_with(config: Config) -> impl Future<Output = aurora_pool::Result<Self>> + Send;
    /// `connect_lazy_with`.
    fn connect_lazy_with(config: Config) -> impl Future<Output = aurora_pool::Result<Self>> + Send;
    /// Runs `sql` (one text column, one row) on a fresh checkout for `role` (`acquire`).
    fn query_text(
        &self,
        role: Role,
        sql: &'static str,
    ) -> impl Future<Output = aurora_pool::Result<String>> + Send;
    /// A checked-out connection.
    type Held: Send;
    /// The pool of one instance, as `writer()` and `reader()` return it.
    type Handle: Clone + Send + Sync + std::fmt::Debug + 'static;
    /// Runs [`INSTANCE_ID`] on a checkout for `role` and closes that connection instead of
    /// returning it to the pool: with `*_max_connections=1` every call logs in anew, and
    /// `least_connections` sees it gone at once.
    fn fresh_login(&self, role: Role) -> impl Future<Output = aurora_pool::Result<String>> + Send;
    /// Checks out a connection for `role` (`acquire`) and keeps it.
    fn hold(&self, role: Role) -> impl Future<Output = aurora_pool::Result<Self::Held>> + Send;
    /// Runs [`INSTANCE_ID`] on a held connection.
    fn held_instance_id(
        &self,
        held: &mut Self::Held,
    ) -> impl Future<Output = aurora_pool::Result<String>> + Send;
    /// `writer()` or `reader()`.
    fn handle(&self, role: Role) -> Self::Handle;
    /// `try_reader()`.
    fn try_reader(&self) -> aurora_pool::Result<Self::Handle>;
    /// Runs `sql` (one text column, one row) on a checkout of `handle`.
    fn handle_text(
        handle: &Self::Handle,
        sql: &'static str,
    ) -> impl Future<Output = Result<String, String>> + Send;
    fn handle_is_closed(handle: &Self::Handle) -> bool;
    /// Closes a handed-out pool, as its user may.
    fn close_handle(handle: &Self::Handle) -> impl Future<Output = ()> + Send;
    /// Runs `sql` with the retry helper `run_with` for `role` under `policy`.
    fn run_with_policy(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
    ) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` as a simple query with `run_with(policy, role, ..)`, counting the runs of
    /// the work.
    fn run_counted(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` on a writer checkout.
    fn execute(&self, sql: &'static str) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` with the retry helper `run` on the writer.
    fn run(&self, sql: &'static str) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` (one text column, one row) with the retry helper `run_with(policy, ..)`.
    fn run_text_with(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
    ) -> impl Future<Output = aurora_pool::Result<String>> + Send;
    /// Runs `sql` (one text column, one row) with the retry helper `run`.
    fn run_text(
        &self,
        role: Role,
        sql: &'static str,
    ) -> impl Future<Output = aurora_pool::Result<String>> + Send;
    /// Runs `sql` in one `transaction_with(options)`, counting the runs of the work.
    fn transaction_counted(
        &self,
        options: aurora_pool::TransactionOptions,
        sql: &'static str,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` in a `transaction`, then waits `wait` inside it.
    fn transaction_then_wait(
        &self,
        sql: &'static str,
        wait: std::time::Duration,
    ) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` (one text column, one row) in one `transaction` and returns its value.
    fn transaction_text(
        &self,
        sql: &'static str,
    ) -> impl Future<Output = aurora_pool::Result<String>> + Send;
    /// Runs `sql` twice in one `transaction`.
    fn transaction(
        &self,
        sql: &'static str,
    ) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Runs `sql` in a `transaction` whose work then refuses with the caller's own error
    /// type, `Declined::ByTheWork(code)`; counts the runs.
    fn transaction_declined(
        &self,
        sql: &'static str,
        code: u32,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> impl Future<Output = Result<(), Declined>> + Send;
    /// Runs `sql`, then `interrupt`, then `sql` again in one `transaction` without retries.
    fn transaction_interrupted(
        &self,
        sql: &'static str,
        interrupt: Interrupt,
    ) -> impl Future<Output = aurora_pool::Result<()>> + Send;
    /// Checks a connection out of the pool `writer()` or `reader()` returns, runs
    /// `interrupt`, then `sql` on it, and returns the driver's error as `classify` wraps it.
    fn returned_pool_error(
        &self,
        role: Role,
        sql: &'static str,
        interrupt: Option<Interrupt>,
    ) -> impl Future<Output = Error> + Send;
    /// Whether the error's source is this flavour's driver error.
    fn has_driver_source(err: &Error) -> bool;
    fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent>;
    fn topology(&self) -> Arc<Topology>;
    fn status(&self) -> PoolStatus;
    fn config(&self) -> &Config;
    fn health(&self) -> aurora_pool::Health;
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// The id of the instance a checkout of `handle` lands on.
    fn served_by(handle: &Self::Handle) -> impl Future<Output = String> + Send {
        async move {
            Self::handle_text(handle, INSTANCE_ID)
                .await
                .expect("instance id query")
        }
    }

    /// The instances that serve `n` reads through `handle`, eight at a time, each holding
    /// its connection a moment: a shared pool spreads its connections, not its checkouts,
    /// so reads one after the other would all reuse one connection. A read cut by a false
    /// verdict on a loaded machine (an instance declared dead ends its connections) is
    /// made again, up to `n` such failures.
    fn spread_of(
        handle: &Self::Handle,
        n: usize,
    ) -> impl Future<Output = std::collections::BTreeSet<String>> + Send {
        let handle = handle.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            let (mut served, mut failed) = (0, Vec::new());
            while served < n {
                let mut reads = tokio::task::JoinSet::new();
                for _ in 0..8 {
                    let handle = handle.clone();
                    reads.spawn(async move { Self::handle_text(&handle, HELD_INSTANCE_ID).await });
                }
                while let Some(read) = reads.join_next().await {
                    match read.expect("read task") {
                        Ok(id) => {
                            seen.insert(id);
                            served += 1;
                        }
                        Err(err) => failed.push(err),
                    }
                }
                assert!(failed.len() <= n, "instance id queries failed: {failed:?}");
            }
            seen
        }
    }

    /// The id of the instance a fresh checkout for `role` lands on.
    fn instance_id(&self, role: Role) -> impl Future<Output = aurora_pool::Result<String>> + Send {
        self.query_text(role, INSTANCE_ID)
    }
}

impl Flavour for aurora_pool::AuroraPool {
    async fn connect_with(config: Config) -> aurora_pool::Result<Self> {
        aurora_pool::AuroraPool::connect_with(config).await
    }
    async fn connect_lazy_with(config: Config) -> aurora_pool::Result<Self> {
        aurora_pool::AuroraPool::connect_lazy_with(config).await
    }
    async fn query_text(&self, role: Role, sql: &'static str) -> aurora_pool::Result<String> {
        let mut conn = self.acquire(role).await?;
        let text = sqlx::query_scalar(sql).fetch_one(&mut *conn).await;
        text.map_err(|err| self.classify(err))
    }
    type Held = sqlx::pool::PoolConnection<sqlx::Postgres>;
    type Handle = sqlx::PgPool;
    async fn fresh_login(&self, role: Role) -> aurora_pool::Result<String> {
        let mut conn = self.acquire(role).await?;
        let id = sqlx::query_scalar(INSTANCE_ID).fetch_one(&mut *conn).await;
        drop(conn.detach());
        id.map_err(|err| self.classify(err))
    }
    async fn hold(&self, role: Role) -> aurora_pool::Result<Self::Held> {
        self.acquire(role).await
    }
    async fn held_instance_id(&self, held: &mut Self::Held) -> aurora_pool::Result<String> {
        let id = sqlx::query_scalar(INSTANCE_ID).fetch_one(&mut **held).await;
        id.map_err(|err| self.classify(err))
    }
    fn handle(&self, role: Role) -> Self::Handle {
        match role {
            Role::Writer => self.writer(),
            Role::Reader => self.reader(),
        }
    }
    fn try_reader(&self) -> aurora_pool::Result<Self::Handle> {
        self.try_reader()
    }
    async fn handle_text(handle: &Self::Handle, sql: &'static str) -> Result<String, String> {
        let text = sqlx::query_scalar(sql).fetch_one(handle).await;
        text.map_err(|err| err.to_string())
    }
    fn handle_is_closed(handle: &Self::Handle) -> bool {
        handle.is_closed()
    }
    async fn close_handle(handle: &Self::Handle) {
        handle.close().await
    }
    async fn run_with_policy(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
    ) -> aurora_pool::Result<()> {
        self.run_with(policy, role, move |conn| {
            Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
        })
        .await
    }
    async fn run_counted(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> aurora_pool::Result<()> {
        self.run_with(policy, role, move |conn| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { sqlx::raw_sql(sql).execute(conn).await.map(|_| ()) })
        })
        .await
    }
    async fn execute(&self, sql: &'static str) -> aurora_pool::Result<()> {
        let mut conn = self.acquire(Role::Writer).await?;
        let done = sqlx::query(sql).execute(&mut *conn).await;
        done.map(|_| ()).map_err(|err| self.classify(err))
    }
    async fn run(&self, sql: &'static str) -> aurora_pool::Result<()> {
        self.run(Role::Writer, move |conn| {
            Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
        })
        .await
    }
    async fn run_text(&self, role: Role, sql: &'static str) -> aurora_pool::Result<String> {
        self.run(role, |conn| {
            Box::pin(async move { sqlx::query_scalar(sql).fetch_one(conn).await })
        })
        .await
    }
    async fn run_text_with(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
    ) -> aurora_pool::Result<String> {
        self.run_with(policy, role, |conn| {
            Box::pin(async move { sqlx::query_scalar(sql).fetch_one(conn).await })
        })
        .await
    }
    async fn transaction_counted(
        &self,
        options: aurora_pool::TransactionOptions,
        sql: &'static str,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> aurora_pool::Result<()> {
        self.transaction_with(options, move |conn| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                sqlx::query(sql).execute(&mut *conn).await?;
                Ok(())
            })
        })
        .await
    }
    async fn transaction_then_wait(
        &self,
        sql: &'static str,
        wait: std::time::Duration,
    ) -> aurora_pool::Result<()> {
        self.transaction(move |conn| {
            Box::pin(async move {
                sqlx::query(sql).execute(&mut *conn).await?;
                tokio::time::sleep(wait).await;
                Ok(())
            })
        })
        .await
    }
    async fn transaction_text(&self, sql: &'static str) -> aurora_pool::Result<String> {
        self.transaction(move |conn| {
            Box::pin(async move { Ok(sqlx::query_scalar(sql).fetch_one(&mut *conn).await?) })
        })
        .await
    }
    async fn transaction(&self, sql: &'static str) -> aurora_pool::Result<()> {
        self.transaction(move |conn| {
            Box::pin(async move {
                sqlx::query(sql).execute(&mut *conn).await?;
                sqlx::query(sql).execute(&mut *conn).await?;
                Ok(())
            })
        })
        .await
    }
    async fn transaction_declined(
        &self,
        sql: &'static str,
        code: u32,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> Result<(), Declined> {
        self.transaction(move |conn| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                sqlx::query(sql)
                    .execute(&mut *conn)
                    .await
                    .map_err(|err| Declined::Pool(err.into()))?;
                Err(Declined::ByTheWork(code))
            })
        })
        .await
    }
    async fn transaction_interrupted(
        &self,
        sql: &'static str,
        interrupt: Interrupt,
    ) -> aurora_pool::Result<()> {
        self.transaction_with(aurora_pool::RetryPolicy::no_retry(), move |conn| {
            let interrupt = interrupt.clone();
            Box::pin(async move {
                sqlx::query(sql).execute(&mut *conn).await?;
                interrupt().await;
                sqlx::query(sql).execute(&mut *conn).await?;
                Ok(())
            })
        })
        .await
    }
    async fn returned_pool_error(
        &self,
        role: Role,
        sql: &'static str,
        interrupt: Option<Interrupt>,
    ) -> Error {
        let pool = Flavour::handle(self, role);
        let mut conn = pool.acquire().await.expect("checkout");
        if let Some(interrupt) = interrupt {
            interrupt().await;
        }
        let err = sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .expect_err("the statement must fail");
        drop(conn);
        self.classify(err)
    }
    fn has_driver_source(err: &Error) -> bool {
        std::error::Error::source(err).is_some_and(|s| s.downcast_ref::<sqlx::Error>().is_some())
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        self.events()
    }
    fn topology(&self) -> Arc<Topology> {
        self.topology()
    }
    fn status(&self) -> PoolStatus {
        self.status()
    }
    fn config(&self) -> &Config {
        self.config()
    }
    fn health(&self) -> aurora_pool::Health {
        self.health()
    }
    async fn close(&self) {
        self.close().await
    }
}

#[cfg(feature = "deadpool")]
impl Flavour for aurora_pool::deadpool::AuroraPool {
    async fn connect_with(config: Config) -> aurora_pool::Result<Self> {
        aurora_pool::deadpool::AuroraPool::connect_with(config).await
    }
    async fn connect_lazy_with(config: Config) -> aurora_pool::Result<Self> {
        aurora_pool::deadpool::AuroraPool::connect_lazy_with(config).await
    }
    async fn query_text(&self, role: Role, sql: &'static str) -> aurora_pool::Result<String> {
        let client = self.acquire(role).await?;
        let row = client.query_one(sql, &[]).await;
        row.map(|row| row.get(0)).map_err(|err| self.classify(err))
    }
    type Held = aurora_pool::deadpool::Object;
    type Handle = aurora_pool::deadpool::Pool;
    async fn fresh_login(&self, role: Role) -> aurora_pool::Result<String> {
        let client = self.acquire(role).await?;
        let row = client.query_one(INSTANCE_ID, &[]).await;
        drop(deadpool::managed::Object::take(client));
        row.map(|row| row.get(0)).map_err(|err| self.classify(err))
    }
    async fn hold(&self, role: Role) -> aurora_pool::Result<Self::Held> {
        self.acquire(role).await
    }
    async fn held_instance_id(&self, held: &mut Self::Held) -> aurora_pool::Result<String> {
        let row = held.query_one(INSTANCE_ID, &[]).await;
        row.map(|row| row.get(0)).map_err(|err| self.classify(err))
    }
    fn handle(&self, role: Role) -> Self::Handle {
        match role {
            Role::Writer => self.writer(),
            Role::Reader => self.reader(),
        }
    }
    fn try_reader(&self) -> aurora_pool::Result<Self::Handle> {
        self.try_reader()
    }
    async fn handle_text(handle: &Self::Handle, sql: &'static str) -> Result<String, String> {
        let client = handle.get().await.map_err(|err| err.to_string())?;
        let row = client.query_one(sql, &[]).await;
        row.map(|row| row.get(0)).map_err(|err| err.to_string())
    }
    fn handle_is_closed(handle: &Self::Handle) -> bool {
        handle.is_closed()
    }
    async fn close_handle(handle: &Self::Handle) {
        handle.close()
    }
    async fn run_with_policy(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
    ) -> aurora_pool::Result<()> {
        self.run_with(policy, role, move |client| {
            Box::pin(client.batch_execute(sql))
        })
        .await
    }
    async fn run_counted(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> aurora_pool::Result<()> {
        self.run_with(policy, role, move |client| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(client.batch_execute(sql))
        })
        .await
    }
    async fn execute(&self, sql: &'static str) -> aurora_pool::Result<()> {
        let client = self.acquire(Role::Writer).await?;
        let done = client.batch_execute(sql).await;
        done.map_err(|err| self.classify(err))
    }
    async fn run(&self, sql: &'static str) -> aurora_pool::Result<()> {
        self.run(Role::Writer, move |client| {
            Box::pin(client.batch_execute(sql))
        })
        .await
    }
    async fn run_text(&self, role: Role, sql: &'static str) -> aurora_pool::Result<String> {
        self.run(role, |client| {
            Box::pin(async move { client.query_one(sql, &[]).await.map(|row| row.get(0)) })
        })
        .await
    }
    async fn run_text_with(
        &self,
        policy: aurora_pool::RetryPolicy,
        role: Role,
        sql: &'static str,
    ) -> aurora_pool::Result<String> {
        self.run_with(policy, role, |client| {
            Box::pin(async move { client.query_one(sql, &[]).await.map(|row| row.get(0)) })
        })
        .await
    }
    async fn transaction_counted(
        &self,
        options: aurora_pool::TransactionOptions,
        sql: &'static str,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> aurora_pool::Result<()> {
        self.transaction_with(options, move |client| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The client's own error, as tokio-postgres users write it (`WorkError`).
            Box::pin(async move { client.batch_execute(sql).await })
        })
        .await
    }
    async fn transaction_then_wait(
        &self,
        sql: &'static str,
        wait: std::time::Duration,
    ) -> aurora_pool::Result<()> {
        self.transaction(move |client| {
            Box::pin(async move {
                client.batch_execute(sql).await?;
                tokio::time::sleep(wait).await;
                Ok::<_, Error>(())
            })
        })
        .await
    }
    async fn transaction_text(&self, sql: &'static str) -> aurora_pool::Result<String> {
        self.transaction(move |client| {
            Box::pin(async move { Ok::<_, Error>(client.query_one(sql, &[]).await?.get(0)) })
        })
        .await
    }
    async fn transaction(&self, sql: &'static str) -> aurora_pool::Result<()> {
        self.transaction(move |client| {
            Box::pin(async move {
                client.batch_execute(sql).await?;
                client.batch_execute(sql).await
            })
        })
        .await
    }
    async fn transaction_declined(
        &self,
        sql: &'static str,
        code: u32,
        runs: Arc<std::sync::atomic::AtomicU32>,
    ) -> Result<(), Declined> {
        self.transaction(move |client| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(|err| Declined::Pool(err.into()))?;
                Err(Declined::ByTheWork(code))
            })
        })
        .await
    }
    async fn transaction_interrupted(
        &self,
        sql: &'static str,
        interrupt: Interrupt,
    ) -> aurora_pool::Result<()> {
        self.transaction_with(aurora_pool::RetryPolicy::no_retry(), move |client| {
            let interrupt = interrupt.clone();
            Box::pin(async move {
                client.batch_execute(sql).await?;
                interrupt().await;
                Ok::<_, Error>(client.batch_execute(sql).await?)
            })
        })
        .await
    }
    async fn returned_pool_error(
        &self,
        role: Role,
        sql: &'static str,
        interrupt: Option<Interrupt>,
    ) -> Error {
        let pool = Flavour::handle(self, role);
        let client = pool.get().await.expect("checkout");
        if let Some(interrupt) = interrupt {
            interrupt().await;
        }
        let err = client
            .batch_execute(sql)
            .await
            .expect_err("the statement must fail");
        drop(client);
        self.classify(err)
    }
    fn has_driver_source(err: &Error) -> bool {
        std::error::Error::source(err)
            .is_some_and(|s| s.downcast_ref::<tokio_postgres::Error>().is_some())
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        self.events()
    }
    fn topology(&self) -> Arc<Topology> {
        self.topology()
    }
    fn status(&self) -> PoolStatus {
        self.status()
    }
    fn config(&self) -> &Config {
        self.config()
    }
    fn health(&self) -> aurora_pool::Health {
        self.health()
    }
    async fn close(&self) {
        self.close().await
    }
}

/// The cluster's config under its own `cluster_id` (named after `test`), with `params`
/// (`a=1&b=2`) appended to the cluster's URL.
pub fn config(cluster: &LocalCluster, test: &str, params: &str) -> Config {
    let url = super::url_with(
        cluster,
        &format!("cluster_id={}&{params}", super::unique_cluster_id(test)),
    );
    Config::from_url(&url).expect("config")
}

/// A pool of flavour `F` on `cluster` whose URL has no password: `provider` gives the
/// credentials. `params` (each with its leading `&`) are added to the URL.
#[allow(dead_code)]
pub async fn with_provider<F: Flavour>(
    cluster: &LocalCluster,
    test: &str,
    params: &str,
    provider: impl aurora_pool::auth::CredentialProvider,
) -> F {
    let url = format!(
        "postgres://{}@{}/{}?instance_endpoints={}&cluster_id={}{params}",
        cluster.user(),
        cluster.cluster_endpoint(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        super::unique_cluster_id(test)
    );
    let config = aurora_pool::Builder::new()
        .url(url)
        .credential_provider(provider)
        .build()
        .expect("config");
    F::connect_with(config).await.expect("connect")
}

/// A pool of flavour `F` on [`config`].
pub async fn connect<F: Flavour>(cluster: &LocalCluster, test: &str, params: &str) -> F {
    F::connect_with(config(cluster, test, params))
        .await
        .expect("connect")
}

/// Runs each scenario (`async fn scenario<F: Flavour>(test: &str)`, `test` naming the
/// cluster id) as a test per flavour: `sqlx_flavour::scenario` and
/// `deadpool_flavour::scenario`.
#[allow(unused_macros)]
macro_rules! flavour_tests {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlx_flavour {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<aurora_pool::AuroraPool>(concat!(
                        "sqlx-",
                        stringify!($scenario)
                    ))
                    .await;
                }
            )+
        }

        #[cfg(feature = "deadpool")]
        mod deadpool_flavour {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<aurora_pool::deadpool::AuroraPool>(concat!(
                        "deadpool-",
                        stringify!($scenario)
                    ))
                    .await;
                }
            )+
        }
    };
}

#[allow(unused_imports)]
pub(crate) use flavour_tests;
