//! The sqlx backend of the pool core: `PgPool`s that follow their targets, with the crate's
//! checks run before the user's hooks.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgTransactionManager};
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres, Row, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;

use super::connect_options::BaseOptions;
use super::error::from_sqlx;
use super::openings::Openings;
use super::options::AuroraPoolOptions;
use crate::config::{Config, PoolSizing, TcpSettings};
use crate::connector::BoxFuture;
use crate::endpoint::HostPort;
use crate::error::{Error, Result};
use crate::pool::backend::{Backend, Follows};
use crate::pool::targets::Targets;
use crate::topology::Role;

/// How many of a pool's held connect attempts (started while its writer was unavailable)
/// log in to the new writer at once. Released together, every one of them pays a SCRAM
/// login at the same moment: the first connection, the one the first caller waits for, is
/// ready only when nearly all of them are, and the new writer meets a login storm while it
/// recovers. Two at a time, the first is ready after one login, and the rest follow.
const HELD_RECONNECTS_AT_ONCE: usize = 2;

pub(crate) struct SqlxBackend {
    base: Arc<BaseOptions>,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    /// How long an idle connection may take to answer the test before its checkout.
    ping_limit: Duration,
    /// Keepalives and user timeout, set on each new connection's socket.
    tcp: TcpSettings,
    /// The user's hooks, run after the crate's.
    user: AuroraPoolOptions,
    /// What the writer pool's recovery after a failover is recorded under.
    cluster_id: Arc<str>,
}

impl SqlxBackend {
    pub(super) fn new(config: &Config, base: BaseOptions, user: AuroraPoolOptions) -> Self {
        SqlxBackend {
            base: Arc::new(base),
            acquire_timeout: config.acquire_timeout,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
            ping_limit: config.connect_timeout,
            tcp: config.tcp,
            user,
            cluster_id: config.cluster_id.as_str().into(),
        }
    }

    /// Where the pool's next connection goes: the current route, with its credentials. A
    /// pool with no route (strict reads, no reader) points at the writer, whose connections
    /// its connect hook refuses.
    fn connect_options(&self, targets: &Targets) -> PgConnectOptions {
        match targets.current().or_else(|| targets.parked()) {
            Some(route) => self.base.to_route(&route),
            None => self.base.unrouted(),
        }
    }
}

/// Why the shared reader pool refuses a connection while it has no reader to serve.
const NO_READER: &str = "no reachable reader may serve reads now, and reads may not use the writer (failover_mode is strict_reader, or the custom endpoint excludes the writer)";

/// Points a pool that spreads its connections at its next route. sqlx has no hook before a
/// connect, and reads the pool's connect options at each one: pointing them at the next
/// instance after a connect sends the pool's next connection there.
fn rotate(itself: &OnceLock<Weak<PgPool>>, targets: &Targets, base: &BaseOptions) {
    if let (Some(pool), Some(route)) = (
        itself.get().and_then(Weak::upgrade),
        targets.next().or_else(|| targets.parked()),
    ) {
        pool.set_connect_options(base.to_route(&route));
    }
}

/// Refuses a new connection of the readers' pool that has nothing to serve, that reached
/// the writer while only readers serve reads, or that reached an instance the pool has left
/// (where the dialect tells the instance's id): a connect that began before the routes
/// changed (to the writer the pool was parked on, to a reader promoted since, to a reader
/// that left a custom endpoint) may end after, and would otherwise stay in the pool as a
/// connection that is not stale. One round trip per new connection.
async fn check_reader(
    conn: &mut PgConnection,
    targets: &Targets,
    hold_limit: Duration,
) -> sqlx::Result<Option<String>> {
    let generation = targets.generation();
    if targets.is_unrouted() {
        // Parked on the writer: hold this attempt until a reader is routed, rather than
        // logging in to the writer again and again through sqlx's retries.
        targets.changed_after(generation, hold_limit).await;
        return Err(sqlx::Error::Protocol(NO_READER.into()));
    }
    let (read_only, id) = identify(conn, targets).await?;
    let routes = targets.routes();
    if routes.iter().all(|r| r.instance.role() == Role::Reader) && !read_only {
        return Err(sqlx::Error::Protocol(
            "the instance takes writes: reads go to readers now".into(),
        ));
    }
    match id {
        Some(id) if !routes.iter().any(|r| r.instance.id() == id) => Err(sqlx::Error::Protocol(
            format!("opened to instance {id}, which reads no longer use: connecting again"),
        )),
        id => Ok(id),
    }
}

/// Refuses a new writer-pool connection whose instance is read-only (a demoted writer), or
/// is not the one the pool points at now (where the dialect tells the instance's id): a
/// connect begun before the route changed that landed on the old, still writable, writer
/// is refused, and sqlx connects again, to where the pool points then (DESIGN: no
/// connection lands on an instance the pool has left; the deadpool manager's generation
/// check does the same).
async fn check_writer(conn: &mut PgConnection, targets: &Targets) -> sqlx::Result<Option<String>> {
    let (read_only, id) = identify(conn, targets).await?;
    if read_only {
        return Err(sqlx::Error::Protocol(
            "the instance is read-only: it is no longer the writer".into(),
        ));
    }
    let Some(id) = id else {
        return Ok(None);
    };
    match targets.current() {
        Some(route) if route.instance.id() == id => Ok(Some(id)),
        Some(route) => Err(sqlx::Error::Protocol(format!(
            "opened to instance {id} while the pool moved to {}: connecting again",
            route.instance.id()
        ))),
        None => Err(sqlx::Error::Protocol(format!(
            "opened to instance {id} while the pool has no writer to point at: connecting again"
        ))),
    }
}

/// Whether a new connection's instance is read-only, and its id where the dialect tells it.
async fn identify(
    conn: &mut PgConnection,
    targets: &Targets,
) -> sqlx::Result<(bool, Option<String>)> {
    let row = sqlx::raw_sql(targets.instance_check())
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
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
        let user_after_connect = self.user.after_connect.clone();
        let cluster_id = self.cluster_id.clone();
        let tcp = self.tcp;
        // A held connect attempt never outlives the checkout that started it (sqlx cuts the
        // checkout at `acquire_timeout` and drops the attempt with it).
        let hold_limit = self.acquire_timeout;
        let openings = Arc::new(Openings::new(sizing.max_connections));
        let reconnects = Arc::new(tokio::sync::Semaphore::new(HELD_RECONNECTS_AT_ONCE));
        {
            let (targets, itself, base) = (targets.clone(), itself.clone(), self.base.clone());
            let openings = openings.clone();
            options = options.after_connect(move |conn, meta| {
                let (targets, itself, base) = (targets.clone(), itself.clone(), base.clone());
                let (openings, reconnects) = (openings.clone(), reconnects.clone());
                let cluster_id = cluster_id.clone();
                let user = user_after_connect.clone();
                // sqlx sets no keepalive and gives no access to its socket: the crate sets
                // them on the new socket from outside (see `sockets`), in the background.
                crate::sockets::keep_alive_behind(
                    targets
                        .routes()
                        .iter()
                        .map(|r| r.instance.address().clone())
                        .collect(),
                    tcp,
                );
                Box::pin(async move {
                    let mut instance = None;
                    if rotates {
                        rotate(&itself, &targets, &base);
                        instance = check_reader(conn, &targets, hold_limit).await?;
                    }
                    // One round trip per new connection, none per checkout: a demoted
                    // writer's connection is refused (sqlx closes it and connects again, by
                    // then to the address the pool follows) instead of letting writes fail
                    // with 25006.
                    let generation = targets.generation();
                    if confirm_writer && targets.is_unrouted() {
                        // Parked on a reader while the writer is unavailable: hold this
                        // attempt until the routes change, then put a connection to the
                        // writer they name in this one's place. Refusing it instead would
                        // send sqlx into its backoff, which has grown over the outage (10 ms
                        // doubling per refusal, up to a fifth of `acquire_timeout`) and
                        // would sleep past the promotion. The parked connection is never
                        // kept, even if its instance was promoted meanwhile: the topology
                        // decides.
                        targets.changed_after(generation, hold_limit).await;
                        let Some(route) = targets.current() else {
                            return Err(sqlx::Error::Protocol(
                                "opened while the writer was unavailable, and no writer is routed yet: connecting again where the pool points now".into(),
                            ));
                        };
                        let options = base.to_route(&route);
                        let started = std::time::Instant::now();
                        let replacement = tokio::time::timeout(hold_limit, async {
                            // A few at a time: see `HELD_RECONNECTS_AT_ONCE`.
                            let _turn = reconnects.acquire().await;
                            PgConnection::connect_with(&options).await
                        })
                        .await;
                        *conn = replacement
                            .map_err(|_| sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
                        tracing::debug!(
                            target: "aurora_pool",
                            instance = route.instance.id(),
                            connect_ms = started.elapsed().as_millis() as u64,
                            "a writer connect held while the writer was unavailable went to the writer now routed"
                        );
                        crate::sockets::keep_alive_behind(
                            vec![route.instance.address().clone()],
                            tcp,
                        );
                    }
                    if confirm_writer {
                        instance = check_writer(conn, &targets).await?;
                    }
                    if let Some(hook) = &user {
                        hook(conn, meta).await?;
                    }
                    if confirm_writer {
                        // A dialect that names no instance (plain PostgreSQL, RDS): the
                        // instance the pool points at, which the check just confirmed.
                        let on = instance.clone().or_else(|| {
                            targets.current().map(|route| route.instance.id().to_owned())
                        });
                        if let Some(took) =
                            on.and_then(|id| targets.recovered_on(&id, hold_limit))
                        {
                            crate::metrics::recovered(&cluster_id, took);
                        }
                    }
                    // The very last step: sqlx stamps the connection's creation right after.
                    if follows == Follows::Role {
                        openings.record(instance);
                    }
                    Ok(())
                })
            });
        }
        let (user_before, user_after) = (
            self.user.before_acquire.clone(),
            self.user.after_release.clone(),
        );
        if follows == Follows::Role {
            // The only hooks sqlx runs on an existing connection, at checkout and on return:
            // a connection opened before the pool left its instance is closed there (sqlx
            // has no way to close another task's idle connections). sqlx's own test before
            // checkout would ping it first, without a time limit: on a silent old writer
            // that never returns. The hook tests the connections it keeps instead, bounded.
            let (fresh, ledger, ping_limit, test) = (
                targets.clone(),
                openings.clone(),
                self.ping_limit,
                self.user.test_before_acquire,
            );
            options = options
                .test_before_acquire(false)
                .before_acquire(move |conn, meta| {
                    let stale = ledger.is_stale(&fresh, meta.age);
                    let user = user_before.clone();
                    Box::pin(async move {
                        if stale {
                            return Ok(false);
                        }
                        if test {
                            match tokio::time::timeout(ping_limit, conn.ping()).await {
                                Ok(answered) => answered?,
                                Err(_) => {
                                    return Err(sqlx::Error::Io(
                                        std::io::ErrorKind::TimedOut.into(),
                                    ));
                                }
                            }
                        }
                        match &user {
                            Some(hook) => hook(conn, meta).await,
                            None => Ok(true),
                        }
                    })
                });
            let fresh = targets.clone();
            options = options.after_release(move |conn, meta| {
                let stale = openings.is_stale(&fresh, meta.age);
                let user = user_after.clone();
                Box::pin(async move {
                    match &user {
                        _ if stale => Ok(false),
                        Some(hook) => hook(conn, meta).await,
                        None => Ok(true),
                    }
                })
            });
        } else {
            options = options.test_before_acquire(self.user.test_before_acquire);
            if let Some(hook) = user_before {
                options = options.before_acquire(move |conn, meta| hook(conn, meta));
            }
            if let Some(hook) = user_after {
                options = options.after_release(move |conn, meta| hook(conn, meta));
            }
        }
        let pool = Arc::new(options.connect_lazy_with(self.connect_options(&targets)));
        let _ = itself.set(Arc::downgrade(&pool));
        Ok(pool)
    }

    fn plain_login_refused(&self, address: &HostPort, err: &Error) -> bool {
        self.base.plain_login_refused(address, err.sqlstate())
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

    fn acquire(
        pool: &Arc<PgPool>,
    ) -> impl Future<Output = Result<PoolConnection<Postgres>>> + Send + 'static {
        let pool = PgPool::clone(pool);
        async move {
            pool.acquire()
                .await
                .map_err(|err| from_sqlx(err, "checking out a connection"))
        }
    }
}
