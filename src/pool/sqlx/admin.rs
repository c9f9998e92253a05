//! The crate's own connections in the sqlx flavour (discovery, the monitor, the probes):
//! plain connects that report a refusal at once, watched so that a crashed instance is seen
//! the moment it goes away.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row, ValueRef};

use super::connect_options::BaseOptions;
use super::error::{certificate_refused, from_sqlx, sqlstate_of};
use crate::auth::{CredentialProvider, Credentials};
use crate::config::{Config, TcpSettings};
use crate::connector::{AdminConnection, AdminTarget, BoxFuture, Connector, Purpose, TextRow};
use crate::endpoint::HostPort;
use crate::error::{Error, Result};
use crate::pool::login;

pub(super) struct SqlxConnector {
    base: BaseOptions,
    cluster_id: String,
    connect_timeout: Duration,
    tcp: TcpSettings,
    provider: Arc<dyn CredentialProvider>,
    user: String,
}

impl SqlxConnector {
    pub(super) fn new(
        config: &Config,
        base: BaseOptions,
        provider: Arc<dyn CredentialProvider>,
    ) -> SqlxConnector {
        SqlxConnector {
            base,
            cluster_id: config.cluster_id.clone(),
            connect_timeout: config.connect_timeout,
            tcp: config.tcp,
            provider,
            user: config.user().to_owned(),
        }
    }
}

impl Connector for SqlxConnector {
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
        admin_target: &'a AdminTarget,
        purpose: Purpose,
    ) -> BoxFuture<'a, Result<Box<dyn AdminConnection>>> {
        Box::pin(async move {
            let address = &admin_target.address;
            let target = login::admin_target(admin_target, &self.user);
            let application_name = purpose.application_name(&self.cluster_id);
            let connect = |credentials: Arc<Credentials>| -> BoxFuture<'static, Result<_>> {
                let (base, address, timeout, tcp) = (
                    self.base.clone(),
                    address.clone(),
                    self.connect_timeout,
                    self.tcp,
                );
                let application_name = application_name.clone();
                Box::pin(async move {
                    // The crate's own queries are not the user's: keep them out of sqlx's
                    // statement log.
                    let options_to = |address: &HostPort| {
                        base.to(address, &credentials)
                            .application_name(&application_name)
                            .log_statements(tracing::log::LevelFilter::Off)
                            .log_slow_statements(
                                tracing::log::LevelFilter::Off,
                                Duration::from_secs(3600),
                            )
                    };
                    let connect = async {
                        let mut options = options_to(&address);
                        let plain = !base.learned_tls(&address);
                        // A plain connect first: it reports a refused connection at once,
                        // where a pool's connect retries it until its timeout, and a dead
                        // instance must be told from a slow one.
                        let probe = match PgConnection::connect_with(&options).await {
                            Err(err)
                                if plain
                                    && base.plain_login_refused(
                                        &address,
                                        sqlstate_of(&err).as_deref(),
                                    ) =>
                            {
                                options = options_to(&address);
                                PgConnection::connect_with(&options).await?
                            }
                            other => other?,
                        };
                        let _ = probe.close().await;
                        let watched = SqlxAdmin::watched(options, timeout).await;
                        crate::sockets::keep_alive_behind(vec![address.clone()], tcp);
                        watched
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
                None,
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
    let context = format!("connecting to {address}");
    if let Some(refused) = certificate_refused(&err, &context) {
        return refused.with_source(err);
    }
    let handshake = matches!(err, sqlx::Error::Tls(_));
    let wrapped = Error::connect(format!("{context} failed"))
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
