//! The deadpool manager of one instance: tokio-postgres connections that ask the credential
//! provider on every connect, with TLS, TCP keepalives and `tcp_user_timeout`, and whose
//! connection tasks can be aborted at once when the instance is declared dead.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio::task::AbortHandle;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{from_connect, from_pg};
use crate::auth::{ConnectTarget, CredentialProvider, Credentials};
use crate::error::{Error, Result};
use crate::pool::login;

/// Without an answer for this long, TCP gives up on a connection (`tcp_user_timeout`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection used this recently is handed out again without asking the server.
const ALIVE_BYPASS_WINDOW: Duration = Duration::from_millis(500);

/// TCP keepalive probes start after this much silence.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// The connections of one instance pool.
pub struct Manager {
    pub(super) base: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
    pub(super) provider: Arc<dyn CredentialProvider>,
    pub(super) target: ConnectTarget,
    pub(super) connect_timeout: Duration,
    pub(super) max_lifetime: Option<Duration>,
    /// The connection tasks of every connection this manager opened (finished ones are
    /// pruned as new ones come).
    tasks: Mutex<Vec<AbortHandle>>,
    /// Set when the pool closes; dropped with it. The pool's maintenance task watches it.
    closed: tokio::sync::watch::Sender<bool>,
    /// A writer pool's new connections check that their instance takes writes.
    confirm_writer: bool,
}

impl Manager {
    pub(super) fn new(
        base: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        provider: Arc<dyn CredentialProvider>,
        target: ConnectTarget,
        connect_timeout: Duration,
        max_lifetime: Option<Duration>,
    ) -> Manager {
        Manager {
            base,
            tls,
            provider,
            target,
            connect_timeout,
            max_lifetime,
            tasks: Mutex::new(Vec::new()),
            closed: tokio::sync::watch::channel(false).0,
            confirm_writer: false,
        }
    }

    /// Makes every new connection check that its instance is the writer (one round trip
    /// per connection, none per checkout): a demoted writer's connection is refused as a
    /// failover instead of letting writes fail with 25006.
    pub(super) fn confirming_writer(mut self) -> Manager {
        self.confirm_writer = true;
        self
    }

    /// Resolves when the pool is closed or dropped.
    pub(super) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.subscribe();
        async move {
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// Marks the pool closed.
    pub(super) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Ends every connection at once: queries in flight fail with a closed connection
    /// instead of waiting on a dead host.
    pub(super) fn abort_connections(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    pub(super) async fn connect_once(
        &self,
        credentials: Arc<Credentials>,
    ) -> Result<ClientWrapper> {
        let mut config = self.base.clone();
        if let Some(user) = credentials.user() {
            config.user(user);
        }
        if let Some(password) = credentials.password() {
            config.password(password);
        }
        config
            .connect_timeout(self.connect_timeout)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE);
        let context = format!("connecting to {}:{}", self.target.host, self.target.port);
        let (client, connection) =
            tokio::time::timeout(self.connect_timeout, config.connect(self.tls.clone()))
                .await
                .map_err(|_| {
                    // The instance did not accept a connection in time: as unreachable as a
                    // refused one, so checkouts treat it like a failover.
                    Error::connect(format!(
                        "{context} took longer than connect_timeout ({:?})",
                        self.connect_timeout
                    ))
                })?
                .map_err(|err| from_connect(err, &context))?;
        let task = tokio::spawn(async move {
            // The error is the client's to report, on its next query.
            let _ = connection.await;
        });
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task.abort_handle());
        }
        Ok(ClientWrapper::new(client, task))
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("target", &self.target)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// Whether an instance is a replica (`t`) or the writer (`f`).
const WRITER_CHECK: &str = "SELECT pg_catalog.pg_is_in_recovery()";

impl managed::Manager for Manager {
    type Type = ClientWrapper;
    type Error = Error;

    async fn create(&self) -> Result<ClientWrapper> {
        let client = login::connect_with_login(
            self.provider.as_ref(),
            &self.target,
            self.connect_timeout,
            |credentials| Box::pin(self.connect_once(credentials)),
        )
        .await?;
        if self.confirm_writer {
            let context = format!(
                "confirming {}:{} is the writer",
                self.target.host, self.target.port
            );
            let rows =
                tokio::time::timeout(self.connect_timeout, client.simple_query(WRITER_CHECK))
                    .await
                    .map_err(|_| {
                        Error::connect(format!("{context} took longer than connect_timeout"))
                    })?
                    .map_err(|err| from_pg(err, &context))?;
            let read_only = rows.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))
            });
            if read_only {
                return Err(Error::connect(format!(
                    "{}:{} is read-only: it is no longer the writer",
                    self.target.host, self.target.port
                )));
            }
        }
        Ok(client)
    }

    async fn recycle(&self, client: &mut ClientWrapper, metrics: &Metrics) -> RecycleResult<Error> {
        if client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        if self
            .max_lifetime
            .is_some_and(|lifetime| metrics.age() >= lifetime)
        {
            return Err(RecycleError::message("the connection reached max_lifetime"));
        }
        // `is_closed` misses a dead peer: ask the server (the empty query costs one round
        // trip), unless the connection was in use a moment ago (as HikariCP's bypass window).
        if metrics.last_used() < ALIVE_BYPASS_WINDOW {
            return Ok(());
        }
        let started = Instant::now();
        match tokio::time::timeout(self.connect_timeout, client.simple_query("")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(RecycleError::Backend(from_pg(err, "checking a connection"))),
            Err(_) => Err(RecycleError::message(format!(
                "the connection did not answer within {:?}",
                started.elapsed()
            ))),
        }
    }
}
