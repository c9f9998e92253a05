//! The deadpool backend of the pool core: pools that follow their targets, and the crate's
//! own connections over tokio-postgres.

use std::sync::Arc;
use std::time::Duration;

use ::deadpool::Runtime;
use ::deadpool::managed::{PoolConfig, QueueMode, Timeouts};
use tokio_postgres::SimpleQueryMessage;

use super::error::{from_pg, from_pool};
use super::manager::{Manager, connect_client};
use super::options::Hooks;
use super::tls::Tls;
use super::{Object, Pool};
use crate::auth::CredentialProvider;
use crate::config::{Config, PoolSizing};
use crate::connector::{AdminConnection, AdminTarget, BoxFuture, Connector, Purpose, TextRow};
use crate::error::{Error, Result};
use crate::pool::backend::{Backend, Follows};
use crate::pool::login;
use crate::pool::targets::Targets;
use crate::topology::Role;

/// The longest pause between two maintenance rounds of an instance pool.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);

pub(crate) struct DeadpoolBackend {
    base: tokio_postgres::Config,
    tls: Tls,
    provider: Arc<dyn CredentialProvider>,
    user: String,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    /// What the pools' metrics are recorded under.
    cluster_id: Arc<str>,
    /// The user's hooks, installed in every pool.
    hooks: Hooks,
}

impl DeadpoolBackend {
    pub(crate) fn new(
        config: &Config,
        provider: Arc<dyn CredentialProvider>,
        hooks: Hooks,
    ) -> Result<DeadpoolBackend> {
        let url = config.driver_url();
        let mut base = tokio_postgres::Config::new();
        base.user(config.user());
        let tcp = config.tcp;
        base.keepalives(tcp.keepalives)
            .keepalives_idle(tcp.keepalives_idle)
            .keepalives_interval(tcp.keepalives_interval)
            .keepalives_retries(tcp.keepalives_count);
        if let Some(timeout) = tcp.tcp_user_timeout {
            base.tcp_user_timeout(timeout);
        }
        let parameter = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        // What sqlx understands and this flavour cannot honour is refused, not ignored.
        for (name, why) in [
            ("sslcert", "client certificates"),
            ("ssl-cert", "client certificates"),
            ("sslkey", "client certificates"),
            ("ssl-key", "client certificates"),
            (
                "statement-cache-capacity",
                "a bounded statement cache (deadpool-postgres's `prepare_cached` is unbounded)",
            ),
        ] {
            if parameter(name).is_some() {
                return Err(Error::config(
                    name,
                    format!("the deadpool flavour does not support {why}; the sqlx flavour does"),
                ));
            }
        }
        let database =
            parameter("dbname").unwrap_or_else(|| url.path().trim_start_matches('/').to_owned());
        if !database.is_empty() {
            base.dbname(&database);
        }
        if let Some(name) = parameter("application_name") {
            base.application_name(&name);
        }
        if let Some(options) = server_options(url, config.user())? {
            base.options(&options);
        }
        let tls = Tls::new(config)?;
        Ok(DeadpoolBackend {
            base,
            tls,
            provider,
            user: config.user().to_owned(),
            acquire_timeout: config.acquire_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
            cluster_id: config.cluster_id.as_str().into(),
            hooks,
        })
    }

    /// The connector of the crate's own connections, with the same settings.
    pub(crate) fn connector(&self, config: &Config) -> AdminConnector {
        AdminConnector {
            base: self.base.clone(),
            tls: self.tls.clone(),
            provider: self.provider.clone(),
            user: self.user.clone(),
            cluster_id: config.cluster_id.clone(),
            connect_timeout: self.connect_timeout,
        }
    }

    /// How long opening one connection may take: a writer pool's create waits for a route
    /// while the writer is unavailable (each connect inside is bounded by
    /// `connect_timeout`), as long as a checkout may wait.
    fn create_limit(&self) -> Duration {
        self.acquire_timeout.max(self.connect_timeout * 2)
    }

    fn manager(&self, targets: Arc<Targets>) -> Manager {
        Manager::new(
            self.base.clone(),
            self.tls.clone(),
            self.provider.clone(),
            self.user.clone(),
            targets,
            self.connect_timeout,
            self.max_lifetime,
        )
        .recorded_as(self.cluster_id.clone())
    }
}

/// The server options of the URL (`options=-c a=b` and sqlx's `options[a]=b`) as one
/// libpq `options` string; refuses what the deadpool flavour cannot honour rather than
/// dropping it (a tenant's `search_path` silently lost runs its queries in another schema).
fn server_options(url: &url::Url, url_user: &str) -> Result<Option<String>> {
    let mut options: Vec<String> = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "options" {
            options.push(value.into_owned());
        } else if let Some(name) = key
            .strip_prefix("options[")
            .and_then(|k| k.strip_suffix(']'))
        {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._".contains(c))
            {
                return Err(Error::config(
                    "options",
                    format!("`{key}` does not name a server setting"),
                ));
            }
            // libpq's `options` separates settings by spaces; a space inside a value is
            // escaped with a backslash.
            let value = value.replace('\\', "\\\\").replace(' ', "\\ ");
            options.push(format!("-c {name}={value}"));
        } else if key == "user" && value != url_user {
            return Err(Error::config(
                "user",
                "the deadpool flavour takes the user from the URL (`postgres://user@host/db`); give it there, not as `?user=`",
            ));
        }
    }
    Ok((!options.is_empty()).then(|| options.join(" ")))
}

impl Backend for DeadpoolBackend {
    const CREDENTIALS_PER_CONNECT: bool = true;

    type Pool = Pool;

    fn open(
        &self,
        role: Role,
        _: Follows,
        sizing: PoolSizing,
        targets: Arc<Targets>,
    ) -> Result<Pool> {
        let config = PoolConfig {
            max_size: sizing.max_connections as usize,
            timeouts: Timeouts {
                wait: Some(self.acquire_timeout),
                create: Some(self.create_limit()),
                // `Manager::recycle` bounds its own query; a timer per checkout costs more.
                recycle: None,
            },
            queue_mode: QueueMode::Fifo,
        };
        let manager = self.manager(targets);
        let manager = match role {
            Role::Writer => manager.confirming_writer(self.create_limit()),
            Role::Reader => manager,
        };
        let pool = self
            .hooks
            .install(Pool::builder(manager))
            .config(config)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| Error::driver("creating an instance pool failed").with_source(err))?;
        let (pool_weak, min, idle_timeout, max_lifetime) = (
            pool.weak(),
            sizing.min_connections,
            self.idle_timeout,
            self.max_lifetime,
        );
        let closed = pool.manager().closed();
        tokio::spawn(async move {
            tokio::select! {
                _ = closed => {}
                _ = maintain(pool_weak, min, idle_timeout, max_lifetime) => {}
            }
        });
        Ok(pool)
    }

    fn retarget(&self, pool: &Pool, _: &Targets) {
        // Every connect reads the targets and asks the provider; idle connections to an
        // instance the pool left go now rather than at their next checkout.
        let manager = pool.manager();
        pool.retain(|client, metrics| !manager.is_stale(client, metrics.created));
    }

    fn abort(pool: &Pool) {
        pool.manager().abort_stale();
    }

    fn close(pool: Pool) -> BoxFuture<'static, ()> {
        // Idle connections go at once; checked-out ones when they come back.
        pool.manager().close();
        pool.close();
        Box::pin(async {})
    }

    fn is_closed(pool: &Pool) -> bool {
        pool.is_closed()
    }

    fn size_and_idle(pool: &Pool) -> (u32, u32) {
        let status = pool.status();
        (
            u32::try_from(status.size).unwrap_or(u32::MAX),
            u32::try_from(status.available).unwrap_or(u32::MAX),
        )
    }

    type Connection = Object;

    fn discard(connection: Object) {
        // Taken out of the pool: dropping it closes the connection.
        drop(Object::take(connection));
    }

    fn is_broken(connection: &Object) -> bool {
        connection.is_closed()
    }

    fn begin(connection: &mut Object, statement: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { statement_on(connection, &statement, "BEGIN").await })
    }

    fn commit(connection: &mut Object) -> BoxFuture<'_, Result<()>> {
        Box::pin(statement_on(connection, "COMMIT", "COMMIT"))
    }

    fn rollback(connection: &mut Object) -> BoxFuture<'_, Result<()>> {
        Box::pin(statement_on(connection, "ROLLBACK", "ROLLBACK"))
    }

    fn query_value(connection: &mut Object, sql: String) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move {
            let messages = connection
                .simple_query(&sql)
                .await
                .map_err(|err| from_pg(err, "a query of the pool's"))?;
            Ok(messages
                .into_iter()
                .find_map(|message| match message {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                    _ => None,
                })
                .flatten())
        })
    }

    fn acquire(pool: &Pool) -> impl Future<Output = Result<Object>> + Send + 'static {
        let pool = pool.clone();
        async move {
            pool.get()
                .await
                .map_err(|err| from_pool(err, "checking out a connection"))
        }
    }
}

/// Runs one transaction-control statement; `context` names it in the error.
async fn statement_on(connection: &Object, sql: &str, context: &str) -> Result<()> {
    connection
        .batch_execute(sql)
        .await
        .map_err(|err| from_pg(err, context))
}

/// What deadpool leaves out: closes connections idle past `idle_timeout` (beyond `min`) or
/// older than `max_lifetime`, and tops the pool up to `min` connections. Ends with the pool.
async fn maintain(
    pool: ::deadpool::managed::WeakPool<Manager>,
    min: u32,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
) {
    let every = [idle_timeout, max_lifetime]
        .into_iter()
        .flatten()
        .map(|d| d / 2)
        .min()
        .unwrap_or(MAINTENANCE_EVERY)
        .clamp(Duration::from_millis(100), MAINTENANCE_EVERY);
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        // As in sqlx, the idle timeout spares the minimum; the lifetime spares nothing.
        let mut open = pool.status().size;
        pool.retain(|_, metrics| {
            let expired = max_lifetime.is_some_and(|lifetime| metrics.age() >= lifetime);
            let idle = idle_timeout.is_some_and(|idle| metrics.last_used() >= idle);
            if expired || (idle && open > min as usize) {
                open = open.saturating_sub(1);
                false
            } else {
                true
            }
        });
        let missing = (min as usize).saturating_sub(pool.status().size);
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let pool = pool.clone();
            opening.spawn(async move { pool.get().await.map(drop) });
        }
        // Connections go back to the pool idle as the tasks end.
        while opening.join_next().await.is_some() {}
    }
}

/// Opens the crate's own connections (discovery, monitor, probes).
pub(crate) struct AdminConnector {
    base: tokio_postgres::Config,
    tls: Tls,
    provider: Arc<dyn CredentialProvider>,
    user: String,
    cluster_id: String,
    connect_timeout: Duration,
}

impl Connector for AdminConnector {
    fn prepare<'a>(&'a self, target: &'a AdminTarget) -> BoxFuture<'a, Result<()>> {
        Box::pin(login::prepare(
            self.provider.as_ref(),
            target,
            &self.user,
            self.connect_timeout,
        ))
    }

    fn connect<'a>(
        &'a self,
        target: &'a AdminTarget,
        purpose: Purpose,
    ) -> BoxFuture<'a, Result<Box<dyn AdminConnection>>> {
        Box::pin(async move {
            let address = &target.address;
            let mut base = self.base.clone();
            self.tls.point(&mut base, address);
            base.application_name(purpose.application_name(&self.cluster_id));
            let context = format!("connecting to {address}");
            let (client, _) = login::connect_with_login(
                self.provider.as_ref(),
                &login::admin_target(target, &self.user),
                None,
                self.connect_timeout,
                |credentials| {
                    Box::pin(connect_client(
                        base.clone(),
                        self.tls.clone(),
                        self.connect_timeout,
                        &context,
                        credentials,
                    ))
                },
            )
            .await?;
            Ok(Box::new(AdminClient(client)) as Box<dyn AdminConnection>)
        })
    }
}

/// How often an idle admin connection looks whether its connection task ended.
const CLOSED_CHECK: Duration = Duration::from_millis(20);

struct AdminClient(deadpool_postgres::ClientWrapper);

impl AdminConnection for AdminClient {
    fn query<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<Vec<TextRow>>> {
        Box::pin(async move {
            let messages = self
                .0
                .simple_query(sql)
                .await
                .map_err(|err| from_pg(err, "topology query"))?;
            Ok(messages
                .into_iter()
                .filter_map(|message| match message {
                    SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect())
        })
    }

    fn closed(&mut self) -> BoxFuture<'_, ()> {
        // tokio-postgres reads the socket in its connection task, which ends (and marks the
        // client closed) as soon as the server goes away; looking costs no traffic.
        Box::pin(async move {
            while !self.0.is_closed() {
                tokio::time::sleep(CLOSED_CHECK).await;
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        // Dropping the client sends Terminate and ends its connection task.
        Box::pin(async move { drop(self) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_of(url: &str) -> Result<Option<String>> {
        let url = url::Url::parse(url).expect("url");
        server_options(&url, url.username())
    }

    #[test]
    fn bracketed_options_become_server_settings() {
        assert_eq!(
            options_of(
                "postgres://app@h/db?options[search_path]=tenant_a&options[statement_timeout]=5s"
            )
            .expect("options")
            .as_deref(),
            Some("-c search_path=tenant_a -c statement_timeout=5s")
        );
        assert_eq!(
            options_of("postgres://app@h/db?options=-c%20geqo=off&options[application_name]=a%20b")
                .expect("options")
                .as_deref(),
            Some(r"-c geqo=off -c application_name=a\ b")
        );
        assert_eq!(options_of("postgres://app@h/db").expect("none"), None);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let err = options_of("postgres://app@h/db?options[]=x").expect_err("empty name");
        assert!(format!("{err:#}").contains("options"), "{err}");
        let err = options_of("postgres://app@h/db?user=other").expect_err("second user");
        assert!(format!("{err:#}").contains("user"), "{err}");
        assert!(options_of("postgres://app@h/db?user=app").is_ok());
    }
}
