//! The deadpool manager of one pool: tokio-postgres connections to the instances its targets
//! name, asking the credential provider on every connect, with TLS, TCP keepalives and
//! `tcp_user_timeout`, and whose connection tasks can be aborted at once when their instance
//! is declared dead.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::{ClientWrapper, StatementCache};
use tokio::task::AbortHandle;

use super::error::{from_connect, from_pg};
use super::tls::Tls;
use crate::auth::{ConnectTarget, CredentialProvider, Credentials};
use crate::error::{Error, Result};
use crate::pool::login;
use crate::pool::targets::{Route, Targets};
use crate::topology::{IS_READER, Role};

/// A connection used this recently is handed out again without asking the server.
const ALIVE_BYPASS_WINDOW: Duration = Duration::from_millis(500);

/// The connections of one pool: to the instance (or instances, in turn) its targets name
/// now. A pool that follows its role is pointed at another instance instead of replaced;
/// connections opened before a change that dropped their instance are stale and are closed
/// at checkout instead of handed out.
pub struct Manager {
    pub(super) base: tokio_postgres::Config,
    pub(super) tls: Tls,
    pub(super) provider: Arc<dyn CredentialProvider>,
    pub(super) user: String,
    pub(super) targets: Arc<Targets>,
    pub(super) connect_timeout: Duration,
    pub(super) max_lifetime: Option<Duration>,
    /// Every connection this manager opened that may still be open (finished ones are
    /// pruned as new ones come).
    opened: Mutex<Vec<Opened>>,
    /// Set when the pool closes; dropped with it. The pool's maintenance task watches it.
    closed: tokio::sync::watch::Sender<bool>,
    /// Set for a writer pool: its new connections check that their instance takes writes,
    /// and wait this long for a route while the writer is unavailable (the pool's create
    /// timeout cuts them at the same bound).
    writer_route_wait: Option<Duration>,
    /// What the pool's metrics are recorded under: its recovery after a failover (the time
    /// from the routes' change to its first connection on the new writer), refused logins.
    cluster_id: Arc<str>,
}

/// Opens one tokio-postgres connection to where `tls` pointed `config` (which carries the
/// TCP keepalives and `tcp_user_timeout`), with TLS, logging in with `credentials`.
pub(super) async fn connect_client(
    mut config: tokio_postgres::Config,
    tls: Tls,
    connect_timeout: Duration,
    context: &str,
    credentials: Arc<Credentials>,
) -> Result<(ClientWrapper, AbortHandle)> {
    if let Some(user) = credentials.user() {
        config.user(user);
    }
    if let Some(password) = credentials.password() {
        config.password(password);
    }
    // Keepalives and `tcp_user_timeout` come with `config` (the URL's `TcpSettings`).
    config.connect_timeout(connect_timeout);
    let (client, connection) = tokio::time::timeout(connect_timeout, tls.connect(&config))
        .await
        .map_err(|_| {
            // The instance did not accept a connection in time: as unreachable as a refused
            // one, so checkouts treat it like a failover.
            Error::connect(format!(
                "{context} took longer than connect_timeout ({connect_timeout:?})"
            ))
        })?
        .map_err(|err| from_connect(err, context))?;
    let task = tokio::spawn(async move {
        // The error is the client's to report, on its next query.
        let _ = connection.await;
    });
    let abort = task.abort_handle();
    Ok((ClientWrapper::new(client, task), abort))
}

/// One connection a manager opened: when, to which instance, and its connection task.
struct Opened {
    at: Instant,
    instance: String,
    task: AbortHandle,
    /// The connection's statement cache, one `Arc` per connection for its whole life: what
    /// tells a pooled `ClientWrapper` (which has room for no tag of the crate's) apart. The
    /// `Weak` keeps the allocation, so its address is not reused while this entry lives.
    cache: Weak<StatementCache>,
}

impl Opened {
    fn is_of(&self, client: &ClientWrapper) -> bool {
        std::ptr::eq(self.cache.as_ptr(), Arc::as_ptr(&client.statement_cache))
    }
}

/// How many times a new connection is opened again because its pool moved to another
/// instance while it was being opened.
const MOVED_WHILE_CONNECTING: usize = 3;

impl Manager {
    pub(super) fn new(
        base: tokio_postgres::Config,
        tls: Tls,
        provider: Arc<dyn CredentialProvider>,
        user: String,
        targets: Arc<Targets>,
        connect_timeout: Duration,
        max_lifetime: Option<Duration>,
    ) -> Manager {
        Manager {
            base,
            tls,
            provider,
            user,
            targets,
            connect_timeout,
            max_lifetime,
            opened: Mutex::new(Vec::new()),
            closed: tokio::sync::watch::channel(false).0,
            writer_route_wait: None,
            cluster_id: Arc::from(""),
        }
    }

    /// Records the pool's metrics under `cluster_id`.
    pub(super) fn recorded_as(mut self, cluster_id: Arc<str>) -> Manager {
        self.cluster_id = cluster_id;
        self
    }

    /// Makes every new connection check that its instance is the writer (one round trip
    /// per connection, none per checkout): a demoted writer's connection is refused as a
    /// failover instead of letting writes fail with 25006; while the writer is unavailable
    /// a new connection waits up to `route_wait` for one.
    pub(super) fn confirming_writer(mut self, route_wait: Duration) -> Manager {
        self.writer_route_wait = Some(route_wait);
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

    /// Ends every stale connection at once (the connections to the instances that left):
    /// queries in flight fail with a closed connection instead of waiting on a dead host.
    pub(super) fn abort_stale(&self) {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened.retain(|o| {
            if self.targets.is_stale_on(&o.instance, o.at) {
                o.task.abort();
                false
            } else {
                !o.task.is_finished()
            }
        });
    }

    /// Whether `client`, created at `created`, must not be handed out again: its instance
    /// left after it was opened (any instance, when the manager does not know its own), or
    /// its turn to make room for an instance that joined the routes has come.
    pub(super) fn is_stale(&self, client: &ClientWrapper, created: Instant) -> bool {
        if !self.targets.may_replace() {
            return false;
        }
        if self.targets.is_rebalanced(created) {
            return true;
        }
        if !self.targets.any_left() {
            return false;
        }
        let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        match opened.iter().find(|o| o.is_of(client)) {
            Some(o) => self.targets.is_stale_on(&o.instance, o.at),
            None => self.targets.is_stale(created),
        }
    }

    /// Opens a connection to the next target, logging in with the provider's credentials.
    async fn open_to(&self, route: &Route) -> Result<ClientWrapper> {
        let address = route.instance.address();
        let mut config = self.base.clone();
        self.tls.point(&mut config, address);
        let target = ConnectTarget::new(address.host.clone(), address.port, self.user.clone())
            .in_region(route.instance.region());
        let context = format!("connecting to {address}");
        let at = Instant::now();
        let (client, task) = login::connect_with_login(
            self.provider.as_ref(),
            &target,
            Some((&self.cluster_id, route.instance.id())),
            self.connect_timeout,
            |credentials| {
                Box::pin(connect_client(
                    config.clone(),
                    self.tls.clone(),
                    self.connect_timeout,
                    &context,
                    credentials,
                ))
            },
        )
        .await?;
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened.retain(|o| !o.task.is_finished() && o.cache.strong_count() > 0);
        opened.push(Opened {
            at,
            instance: route.instance.id().to_owned(),
            task,
            cache: Arc::downgrade(&client.statement_cache),
        });
        Ok(client)
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("user", &self.user)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// Refuses a new connection of a writer pool whose instance is read-only.
async fn confirm_writer(client: &ClientWrapper, route: &Route, timeout: Duration) -> Result<()> {
    let address = route.instance.address();
    let context = format!("confirming {address} is the writer");
    let rows = tokio::time::timeout(timeout, client.simple_query(IS_READER))
        .await
        .map_err(|_| Error::connect(format!("{context} took longer than connect_timeout")))?
        .map_err(|err| from_pg(err, &context))?;
    let read_only = rows.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
    );
    if read_only {
        return Err(Error::connect(format!(
            "{address} is read-only: it is no longer the writer"
        )));
    }
    Ok(())
}

impl managed::Manager for Manager {
    type Type = ClientWrapper;
    type Error = Error;

    async fn create(&self) -> Result<ClientWrapper> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let generation = self.targets.generation();
            let route = match (self.targets.next(), self.writer_route_wait) {
                (Some(route), _) => route,
                // The writer is unavailable (declared dead, a failover under way): wait for
                // the pool to be routed again (deadpool bounds this by its create timeout).
                (None, Some(route_wait)) => {
                    self.targets.changed_after(generation, route_wait).await;
                    attempt -= 1;
                    continue;
                }
                // A pool from `connect_lazy` before its first discovery: wait for it (the
                // pool's create timeout cuts this as it cuts a connect).
                (None, None) if self.targets.awaits_discovery() => {
                    self.targets
                        .changed_after(generation, self.connect_timeout)
                        .await;
                    attempt -= 1;
                    continue;
                }
                (None, None) => {
                    return Err(Error::no_reader(
                        "no reachable reader may serve reads now, and reads may not use the writer (failover_mode is strict_reader, or the custom endpoint excludes the writer)",
                    ));
                }
            };
            let started = Instant::now();
            let client = self.open_to(&route).await?;
            // Pointed elsewhere while connecting: this connection went to an instance the
            // pool left.
            if self.targets.generation() != generation
                && !self.targets.contains(&route)
                && attempt < MOVED_WHILE_CONNECTING
            {
                continue;
            }
            if self.writer_route_wait.is_some() {
                confirm_writer(&client, &route, self.connect_timeout).await?;
                if let Some(took) = self.targets.recovered_on(
                    route.instance.id(),
                    self.writer_route_wait.unwrap_or_default(),
                ) {
                    crate::metrics::recovered(&self.cluster_id, took);
                }
            }
            let role = match self.writer_route_wait {
                Some(_) => Role::Writer,
                None => Role::Reader,
            };
            crate::metrics::connection_created(
                &self.cluster_id,
                route.instance.id(),
                role,
                started.elapsed(),
            );
            return Ok(client);
        }
    }

    async fn recycle(&self, client: &mut ClientWrapper, metrics: &Metrics) -> RecycleResult<Error> {
        if self.is_stale(client, metrics.created) {
            return Err(RecycleError::message(
                "the connection was opened before its pool moved to another instance",
            ));
        }
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
