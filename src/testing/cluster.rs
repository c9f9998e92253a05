//! [`LocalCluster`] and its builder: process orchestration of the primary and
//! the replicas, failover, rejoin and teardown.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Flavour;
use super::error::{TestingError, join_error};
use super::host::{
    free_ports, initdb, initdb_template, random_password, sweep_orphans, unique_suffix,
};
use super::pki::{Tls, find_openssl};
use super::process::{PgEnv, kill_pid, log_tail, postmaster_pid, process_alive, run};
use super::proxy::{CutAt, Proxies};
use super::sql;

pub(super) const TARGET: &str = "aurora_pool::testing";
/// How long after a cross-region switchover's promotion the old writer's rebuild starts
/// (see [`LocalCluster::switchover_region`]).
const REGION_REJOIN_DELAY: Duration = Duration::from_secs(1);
/// Bound for an instance to start and accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a replica to stream from its primary.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one `psql` invocation.
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for `pg_ctl` / `pg_basebackup` / `initdb`.
pub(super) const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of server log quoted in errors.
const LOG_LINES: usize = 30;

/// Rounds of "read the old writer's WAL position, wait for the replicas to replay it" before
/// a failover kills it, while the position still moves.
const CATCH_UP_ROUNDS: u32 = 2;

/// Per-instance settings file included from postgresql.conf.
const INSTANCE_CONF: &str = "aurora_pool_instance.conf";

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builder for a [`LocalCluster`]; see [`LocalCluster::builder`].
///
/// Defaults: 3 instances, [`Flavour::Aurora`], user `app`, a password made at random
/// for each builder (24 letters and digits; [`LocalCluster::password`] tells it), database
/// `app`, no TLS.
#[derive(Clone)]
pub struct LocalClusterBuilder {
    instances: usize,
    spares: usize,
    flavour: Flavour,
    user: String,
    password: String,
    database: String,
    tls: bool,
    shared_port: Option<u16>,
    /// The region of each instance, in order (empty: a regional cluster).
    regions: Vec<String>,
}

impl fmt::Debug for LocalClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalClusterBuilder")
            .field("instances", &self.instances)
            .field("spares", &self.spares)
            .field("flavour", &self.flavour)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("shared_port", &self.shared_port)
            .field("regions", &self.regions)
            .finish()
    }
}

impl Default for LocalClusterBuilder {
    fn default() -> Self {
        Self {
            instances: 3,
            spares: 0,
            flavour: Flavour::Aurora,
            user: "app".into(),
            password: random_password(),
            database: "app".into(),
            tls: false,
            shared_port: None,
            regions: Vec::new(),
        }
    }
}

impl LocalClusterBuilder {
    /// Instances reserved for [`LocalCluster::add_instance`]: `n` more ids after the
    /// started ones, each with its instance endpoint (proxy) listening and named in
    /// [`url`](LocalCluster::url)'s `instance_endpoints`, but no server and no row in the
    /// emulated catalog until it is added.
    pub fn spare_instances(mut self, n: usize) -> Self {
        self.spares = n;
        self
    }

    /// Every endpoint on its own loopback address and the same `port`, as Aurora's DNS names
    /// share one port: the cluster endpoint on `127.0.0.10`, `instance-N` on
    /// `127.0.0.(10+N)` (default: all on `127.0.0.1`, each on a free port). Clients whose
    /// host pattern carries one port for every instance (the AWS wrappers') reach them
    /// through host names mapped to these addresses, in `/etc/hosts` for instance.
    pub fn shared_port(mut self, port: u16) -> Self {
        self.shared_port = Some(port);
        self
    }

    /// Number of instances (at least 1): `instance-1` is the first writer,
    /// the others are streaming replicas.
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n;
        self
    }

    /// An emulated Aurora Global Database: `regions` lists each region with its number of
    /// instances, the primary region first (its first instance, `instance-1`, is the
    /// writer). Every other instance streams from the writer, as a secondary region's
    /// instances do; `aurora_global_db_instance_status()` and `aurora_global_db_status()`
    /// report each instance's region and visibility lag
    /// ([`set_replica_lag`](LocalCluster::set_replica_lag)). Sets the number of instances.
    pub fn global_regions(mut self, regions: &[(&str, usize)]) -> Self {
        self.regions = regions
            .iter()
            .flat_map(|(region, n)| std::iter::repeat_n(region.to_string(), *n))
            .collect();
        self.instances = self.regions.len();
        self
    }

    /// What the cluster emulates (default [`Flavour::Aurora`]).
    pub fn flavour(mut self, f: Flavour) -> Self {
        self.flavour = f;
        self
    }

    /// Name of the login role created for clients (default `app`).
    pub fn user(mut self, u: &str) -> Self {
        self.user = u.to_owned();
        self
    }

    /// Password of the login role (scram-sha-256). The default is random per builder: on a
    /// shared machine (a CI runner), another user who can reach the loopback ports
    /// cannot guess it.
    pub fn password(mut self, p: &str) -> Self {
        self.password = p.to_owned();
        self
    }

    /// Name of the database created for clients, owned by the login role
    /// (default `app`).
    pub fn database(mut self, d: &str) -> Self {
        self.database = d.to_owned();
        self
    }

    /// Serves TLS on every instance (default off).
    ///
    /// When on, [`start`](Self::start) generates with the `openssl`
    /// command-line tool (found in `PATH`, or set `AURORA_POOL_OPENSSL` to
    /// its path) a throwaway CA (CN `aurora-pool LocalCluster CA`) and a
    /// server certificate signed by it for `IP:127.0.0.1` and `DNS:localhost`
    /// (CN `localhost`, valid 2 days), all in the cluster's temp dir, and every
    /// instance (also replicas rebuilt later) runs with `ssl = on` and that
    /// certificate. Clients verify it with `sslmode=verify-full` and
    /// `sslrootcert=` [`LocalCluster::ca_cert_path`].
    ///
    /// The client role may then only log in over TLS (`hostssl` in
    /// pg_hba.conf, scram-sha-256): a plain TCP login is refused with
    /// `no pg_hba.conf entry ... no encryption`. The superuser `postgres` and
    /// replication connections keep trusting plain TCP and the unix socket.
    /// [`LocalCluster::url`] and [`LocalCluster::instance_url`] carry no
    /// `sslmode`; add it yourself.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Creates and starts the cluster: returns once every replica streams from
    /// the primary and the database is visible on every instance.
    ///
    /// The instances' ports are picked free but bound only when PostgreSQL starts; when
    /// another socket takes one meanwhile, the start is tried again on new ports (at most
    /// 3 times).
    pub async fn start(self) -> Result<LocalCluster, TestingError> {
        let mut attempt = 1;
        loop {
            let cfg = self.clone();
            let started = tokio::task::spawn_blocking(move || Inner::start(cfg))
                .await
                .map_err(|e| join_error("starting the local cluster", e))?;
            match started {
                Ok(inner) => return Ok(LocalCluster { inner }),
                Err(err)
                    if attempt < START_ATTEMPTS
                        && err.message().contains("Address already in use") =>
                {
                    tracing::info!(target: TARGET, attempt, "a port was taken meanwhile; starting again");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// How many times [`LocalClusterBuilder::start`] tries when a picked port is taken.
const START_ATTEMPTS: u32 = 3;

/// One PostgreSQL instance of the cluster.
#[derive(Debug)]
struct Instance {
    id: String,
    /// The server's own port (TCP on 127.0.0.1 and the unix socket).
    port: u16,
    /// The instance endpoint (proxy) clients use.
    proxy_addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    /// Numeric-looking id used by the RDS Multi-AZ emulation.
    resource_id: String,
    /// The region of a global database's instance.
    region: Option<String>,
    /// False for a spare until [`LocalCluster::add_instance`] starts it.
    added: AtomicBool,
    /// A spare's port, held until it is added.
    reserved: Mutex<Option<TcpListener>>,
}

/// A scheduled rebuild of an old writer as a replica.
struct Rejoin {
    result: watch::Receiver<Option<Result<(), TestingError>>>,
}

struct Inner {
    env: PgEnv,
    root: PathBuf,
    flavour: Flavour,
    user: String,
    password: String,
    database: String,
    tls: Option<Tls>,
    instances: Vec<Instance>,
    cluster_addr: SocketAddr,
    writer: Mutex<String>,
    proxies: Mutex<Option<Proxies>>,
    rejoins: Mutex<HashMap<String, Rejoin>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closing: Mutex<bool>,
    closing_cv: Condvar,
    cleaned: AtomicBool,
}

/// A local PostgreSQL primary plus streaming replicas on 127.0.0.1 that looks
/// like an Aurora PostgreSQL (or RDS Multi-AZ, or plain) cluster.
///
/// Dropping it stops every server process (immediate shutdown, falling back to
/// SIGKILL of the postmaster), stops the proxies and removes the temp dir.
///
/// Instance ids are `instance-1` ... `instance-N`; `instance-1` is the first
/// writer. Every instance is reached by clients through its own TCP proxy
/// ([`instance_addr`](Self::instance_addr)); [`psql`](Self::psql) bypasses the
/// proxies.
pub struct LocalCluster {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let instances: Vec<String> = i
            .instances
            .iter()
            .map(|x| format!("{} (port {}, proxy {})", x.id, x.port, x.proxy_addr))
            .collect();
        f.debug_struct("LocalCluster")
            .field("flavour", &i.flavour)
            .field("root", &i.root)
            .field("instances", &instances)
            .field("writer", &*lock(&i.writer))
            .field("cluster_endpoint", &i.cluster_addr)
            .field("user", &i.user)
            .field("password", &"<redacted>")
            .field("database", &i.database)
            .field("tls", &i.tls.is_some())
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl LocalCluster {
    /// A builder with the defaults (3 instances, Aurora flavour, user and database `app`,
    /// a random password).
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Starts an Aurora-flavoured cluster of `instances` instances with the
    /// default user, password and database.
    pub async fn start(instances: usize) -> Result<LocalCluster, TestingError> {
        Self::builder().instances(instances).start().await
    }

    /// All instance ids, `instance-1` first (spares once added).
    pub fn instance_ids(&self) -> Vec<String> {
        self.inner
            .instances
            .iter()
            .filter(|i| i.added.load(Ordering::SeqCst))
            .map(|i| i.id.clone())
            .collect()
    }

    /// Starts the spare instance `id` (see [`LocalClusterBuilder::spare_instances`]) as a
    /// streaming replica of the current writer and adds its row to the emulated catalog:
    /// the cluster gains a reader that a pool started earlier has never seen.
    pub async fn add_instance(&self, id: &str) -> Result<(), TestingError> {
        let id = id.to_owned();
        self.blocking("add_instance", move |inner| inner.add_instance(&id))
            .await
    }

    /// The region of instance `id` in a global database
    /// ([`LocalClusterBuilder::global_regions`]); `None` otherwise.
    pub fn region_of(&self, id: &str) -> Option<String> {
        self.inner
            .instances
            .iter()
            .find(|i| i.id == id)
            .and_then(|i| i.region.clone())
    }

    /// Sets the replica lag the catalog reports for instance `id` (`REPLICA_LAG_IN_MSEC`,
    /// and a global database's `VISIBILITY_LAG_IN_MSEC`), on the writer (it replicates).
    pub async fn set_replica_lag(&self, id: &str, lag_ms: f64) -> Result<(), TestingError> {
        let (writer, sql) = (self.writer_id(), sql::set_lag(id, lag_ms));
        self.blocking("set replica lag", move |inner| {
            inner
                .psql_catalogs(inner.instance(&writer)?, &sql)
                .map(drop)
        })
        .await
    }

    /// A planned cross-region switchover of a global database to `to`, an instance of
    /// another region than the writer's: as [`switchover`](Self::switchover) (the old
    /// writer comes back as a replica of `to`).
    ///
    /// The old writer starts its rebuild a second after the promotion rather than at once:
    /// in Aurora the old primary region's instances are rebuilt on their own hosts, while
    /// here their rebuild would take this machine's CPU from the clients following the
    /// switchover at the very moment they are measured.
    pub async fn switchover_region(&self, to: &str) -> Result<(), TestingError> {
        self.check_other_region(to)?;
        self.switchover_rejoining_after(to, REGION_REJOIN_DELAY)
            .await
    }

    /// An unplanned cross-region failover of a global database to `to`, an instance of
    /// another region than the writer's: as [`failover`](Self::failover), the old writer
    /// staying down.
    pub async fn fail_over_region(&self, to: &str) -> Result<(), TestingError> {
        self.check_other_region(to)?;
        self.failover(to, None).await
    }

    fn check_other_region(&self, to: &str) -> Result<(), TestingError> {
        let (writer, target) = (self.region_of(&self.writer_id()), self.region_of(to));
        match (writer, target) {
            (Some(w), Some(t)) if w != t => Ok(()),
            (Some(w), Some(_)) => Err(TestingError::new(format!(
                "`{to}` is in the writer's region `{w}`: use switchover or failover"
            ))),
            _ => Err(TestingError::new(format!(
                "`{to}` or the writer has no region: start the cluster with global_regions"
            ))),
        }
    }

    /// The current writer as the cluster knows it (changed by
    /// [`failover`](Self::failover)).
    pub fn writer_id(&self) -> String {
        lock(&self.inner.writer).clone()
    }

    /// The flavour the cluster emulates.
    pub fn flavour(&self) -> Flavour {
        self.inner.flavour
    }

    /// The instance endpoint (proxy address) of an instance; `None` for an
    /// unknown id.
    pub fn instance_addr(&self, id: &str) -> Option<SocketAddr> {
        self.inner.instance(id).ok().map(|i| i.proxy_addr)
    }

    /// The server's own address, bypassing the proxy (so black-holing does not
    /// apply): for benchmarks that should not pay for the proxy hop. `None`
    /// for an unknown id.
    pub fn direct_addr(&self, id: &str) -> Option<SocketAddr> {
        self.inner
            .instance(id)
            .ok()
            .map(|i| SocketAddr::from(([127, 0, 0, 1], i.port)))
    }

    /// `instance-1=127.0.0.1:P1,...` with the servers' own ports (no proxy).
    pub fn direct_endpoints_param(&self) -> String {
        self.inner
            .instances
            .iter()
            .map(|i| format!("{}=127.0.0.1:{}", i.id, i.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster endpoint: a proxy forwarding each new connection to the
    /// instance it currently points at (the writer, unless re-aimed with
    /// [`point_cluster_endpoint`](Self::point_cluster_endpoint)).
    pub fn cluster_endpoint(&self) -> SocketAddr {
        self.inner.cluster_addr
    }

    /// The login role for clients.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The login role's password.
    pub fn password(&self) -> &str {
        &self.inner.password
    }

    /// The database created for clients.
    pub fn database(&self) -> &str {
        &self.inner.database
    }

    /// The CA certificate (PEM) that signed the servers' certificate, for
    /// `sslrootcert=` / `PgConnectOptions::ssl_root_cert` with
    /// `sslmode=verify-full`; `None` unless the cluster was built with
    /// [`tls(true)`](LocalClusterBuilder::tls). The server certificate is
    /// valid for `127.0.0.1` and `localhost`, so verify-full holds for
    /// [`instance_addr`](Self::instance_addr),
    /// [`cluster_endpoint`](Self::cluster_endpoint) and
    /// [`direct_addr`](Self::direct_addr) alike. The file lives in the
    /// cluster's temp dir and is removed with the cluster.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.inner.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// Directory of the PostgreSQL binaries in use (`psql` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.inner.env.bindir
    }

    /// `instance-1=127.0.0.1:P1,instance-2=127.0.0.1:P2,...` with the proxy
    /// ports.
    pub fn instance_endpoints_param(&self) -> String {
        self.inner
            .instances
            .iter()
            .map(|i| format!("{}={}", i.id, i.proxy_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `postgres://user:password@<cluster endpoint>/db?instance_endpoints=<encoded>&cluster_id=<id>`,
    /// with this cluster's own [`cluster_id`](Self::cluster_id): the pools of one process
    /// share a monitor per cluster id, so two tests running at once, each with its own
    /// cluster and `AuroraPool::connect(&cluster.url())`, must not share the default id.
    /// A `cluster_id` appended after it wins.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@{}/{}?instance_endpoints={}&cluster_id={}",
            url_encode(self.user()),
            url_encode(self.password()),
            self.cluster_endpoint(),
            url_encode(self.database()),
            url_encode(&self.instance_endpoints_param()),
            url_encode(&self.cluster_id())
        )
    }

    /// A cluster id unique to this cluster in this process and on this machine (`local-`
    /// and the name of its private directory's suffix), as [`url`](Self::url) carries it.
    pub fn cluster_id(&self) -> String {
        let name = self
            .inner
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "local-{}",
            name.strip_prefix("aurora-pool-").unwrap_or(&name)
        )
    }

    /// `postgres://user:password@<instance endpoint>/db` for one instance;
    /// `None` for an unknown id.
    pub fn instance_url(&self, id: &str) -> Option<String> {
        let addr = self.instance_addr(id)?;
        Some(format!(
            "postgres://{}:{}@{}/{}",
            url_encode(self.user()),
            url_encode(self.password()),
            addr,
            url_encode(self.database())
        ))
    }

    async fn blocking<T, F>(&self, what: &str, f: F) -> Result<T, TestingError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Inner>) -> Result<T, TestingError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| join_error(what, e))?
    }

    /// Runs SQL as the superuser on one instance through its direct port (not
    /// the proxy; black-holing does not affect it) with
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1`; returns stdout, trimmed.
    /// Several statements may be given; rows print as `a|b`, one per line.
    /// The session runs with `synchronous_commit = on` (the cluster default is
    /// off), so a write done here is flushed and streamed before this returns.
    pub async fn psql(&self, id: &str, database: &str, sql: &str) -> Result<String, TestingError> {
        let (id, database, sql) = (id.to_owned(), database.to_owned(), sql.to_owned());
        self.blocking("psql", move |inner| {
            let inst = inner.instance(&id)?;
            inner.psql(inst, &database, &sql)
        })
        .await
    }

    /// Crashes an instance (`pg_ctl stop -m immediate`). No-op if it is not
    /// running. Before the writer is killed, the replicas
    /// replay what it had flushed (a few rounds while it moves, 5 s each at most): as on
    /// Aurora's shared storage, the commits it acknowledged survive a failover, but for
    /// those acknowledged in the last moment.
    pub async fn crash(&self, id: &str) -> Result<(), TestingError> {
        self.crash_catching_up(id, true).await
    }

    /// Crashes an instance as a single PostgreSQL server crashes (`pg_ctl stop -m
    /// immediate` at once): what it committed without flushing (the cluster commits
    /// asynchronously) is lost, and transaction ids it handed out may be handed out again
    /// after a restart. No-op if it is not running.
    pub async fn crash_losing_unflushed(&self, id: &str) -> Result<(), TestingError> {
        self.crash_catching_up(id, false).await
    }

    async fn crash_catching_up(&self, id: &str, catch_up: bool) -> Result<(), TestingError> {
        let id = id.to_owned();
        self.blocking("crash", move |inner| {
            let inst = inner.instance(&id)?;
            if catch_up && *lock(&inner.writer) == id {
                let replicas = inner
                    .instances
                    .iter()
                    .filter(|i| i.id != id && i.added.load(Ordering::SeqCst));
                inner.catch_up_replicas(inst, replicas);
            }
            tracing::info!(target: TARGET, instance = %id, "crashing instance");
            inner.stop(inst, "immediate")
        })
        .await
    }

    /// Stops an instance cleanly (`pg_ctl stop -m fast`). No-op if it is not
    /// running.
    pub async fn stop(&self, id: &str) -> Result<(), TestingError> {
        let id = id.to_owned();
        self.blocking("stop", move |inner| {
            tracing::info!(target: TARGET, instance = %id, "stopping instance");
            inner.stop(inner.instance(&id)?, "fast")
        })
        .await
    }

    /// Starts a stopped or crashed instance again with its previous role and
    /// waits until it accepts connections. No-op if it is running. (Starting
    /// a crashed former writer after a failover without
    /// [`failover`](Self::failover)'s rejoin gives a second primary, which is
    /// sometimes what a test wants.)
    pub async fn start_instance(&self, id: &str) -> Result<(), TestingError> {
        let id = id.to_owned();
        self.blocking("start_instance", move |inner| {
            let inst = inner.instance(&id)?;
            if inner.is_running(inst) {
                tracing::debug!(target: TARGET, instance = %id, "already running");
                return Ok(());
            }
            tracing::info!(target: TARGET, instance = %id, "starting instance");
            inner.start_server(inst)
        })
        .await
    }

    /// Fails the cluster over to the replica `to`:
    ///
    /// 1. waits (up to 5 s, best effort) until the replicas replayed the
    ///    writer's WAL, then crashes the writer (`pg_ctl stop -m immediate`);
    /// 2. promotes `to` and waits until it is out of recovery;
    /// 3. records `to` as writer (old writer as reader) in the emulated member
    ///    table on the new primary;
    /// 4. re-points the other running replicas at the new primary (rewrites
    ///    `primary_conninfo`, reloads) and waits until they stream from it and
    ///    replayed the member-table update (a replica that cannot follow is
    ///    rebuilt with `pg_basebackup`);
    /// 5. aims the cluster endpoint at `to`.
    ///
    /// With `Some(delay)`, a background thread waits `delay` after the
    /// failover, then wipes the old writer's data dir, rebuilds it as a replica
    /// of the new primary (same id and port) and starts it; await that with
    /// [`wait_rejoined`](Self::wait_rejoined). With `None` the old writer stays
    /// down.
    pub async fn failover(
        &self,
        to: &str,
        rejoin_old_writer_after: Option<Duration>,
    ) -> Result<(), TestingError> {
        let to = to.to_owned();
        self.blocking("failover", move |inner| {
            inner.failover(&to, rejoin_old_writer_after, Some("immediate"))
        })
        .await
    }

    /// Split brain: promotes the replica `to` while the writer stays up and writable (as a
    /// partition between the old writer and the rest of the cluster leaves it), and records
    /// `to` as the newer writer in every running instance's member table, the old writer's
    /// included: every topology read names `to` the writer promoted last, while the old
    /// writer still reports itself a writer and takes writes. For tests of what a pool does
    /// with an instance it has left that still answers as a writer.
    pub async fn promote_leaving_writer_up(&self, to: &str) -> Result<(), TestingError> {
        let to = to.to_owned();
        self.blocking("split-brain promotion", move |inner| {
            inner.failover(&to, None, None)
        })
        .await
    }

    /// A planned switchover to the replica `to`: the writer is stopped cleanly
    /// (`pg_ctl stop -m fast`: its sessions get 57P01), `to` is promoted as in
    /// [`failover`](Self::failover), and the old writer is rebuilt as a
    /// replica of `to` and started at once. Returns when the old writer
    /// streams from the new one, up again with the reader role: a client that
    /// kept writing to it would now get `25006`.
    pub async fn switchover(&self, to: &str) -> Result<(), TestingError> {
        self.switchover_rejoining_after(to, Duration::ZERO).await
    }

    async fn switchover_rejoining_after(
        &self,
        to: &str,
        delay: Duration,
    ) -> Result<(), TestingError> {
        let old = self.writer_id();
        let to = to.to_owned();
        self.blocking("switchover", move |inner| {
            inner.failover(&to, Some(delay), Some("fast"))
        })
        .await?;
        self.wait_rejoined(&old).await
    }

    /// Waits until the rejoin of `id` scheduled by [`failover`](Self::failover)
    /// finished (the instance streams from the new primary) and returns its
    /// outcome. Errors at once when no rejoin of `id` was scheduled. May be
    /// called any number of times.
    pub async fn wait_rejoined(&self, id: &str) -> Result<(), TestingError> {
        let rx = lock(&self.inner.rejoins)
            .get(id)
            .map(|r| r.result.clone())
            .ok_or_else(|| TestingError::new(format!("no rejoin of `{id}` was scheduled")))?;
        let mut rx = rx;
        let value = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| TestingError::new(format!("rejoin of `{id}` ended without a result")))?;
        value
            .clone()
            .unwrap_or_else(|| Err(TestingError::new("rejoin result missing")))
    }

    /// Black-holes (`on = true`) an instance's proxy: all traffic on existing
    /// and new connections through that instance endpoint (and through the
    /// cluster endpoint while it points there) is silently discarded, sockets
    /// stay open, so clients hang. `on = false` forwards NEW connections
    /// again; connections that were open while black-holed stay dead. The
    /// direct port ([`psql`](Self::psql)) is unaffected. Returns false (and
    /// does nothing) for an unknown id.
    pub fn blackhole(&self, id: &str, on: bool) -> bool {
        tracing::info!(target: TARGET, instance = %id, on, "blackhole");
        let ok = lock(&self.inner.proxies)
            .as_ref()
            .is_some_and(|p| p.blackhole(id, on));
        if !ok {
            tracing::warn!(target: TARGET, instance = %id, "blackhole: unknown instance");
        }
        ok
    }

    /// Holds (`on`) or releases the new connections to instance `id`'s endpoint: while held
    /// they are accepted but not connected to the server; released, they complete as if the
    /// network had been slow. Connections already open are not affected. Returns false for
    /// an unknown id.
    pub fn hold_connects(&self, id: &str, on: bool) -> bool {
        tracing::info!(target: TARGET, instance = %id, on, "hold connects");
        lock(&self.inner.proxies)
            .as_ref()
            .is_some_and(|p| p.hold_connects(id, on))
    }

    /// Arms a one-shot fault on instance `id`'s endpoint: the next connection that sends
    /// `statement` as a simple query (`"COMMIT"`, `"ROLLBACK"`) is cut, either before the
    /// statement reaches the server ([`CutAt::Request`]: the server sees its client vanish)
    /// or after the server answered it ([`CutAt::Reply`]: the answer is lost). Returns false
    /// (and does nothing) for an unknown id.
    pub fn cut_at(&self, id: &str, statement: &str, at: CutAt) -> bool {
        tracing::info!(target: TARGET, instance = %id, statement, ?at, "arming a connection cut");
        lock(&self.inner.proxies)
            .as_ref()
            .is_some_and(|p| p.cut_at(id, statement, at))
    }

    /// Aims the cluster endpoint at `id` for new connections (e.g. keep it on
    /// the old writer to simulate stale DNS). Returns false (and does nothing)
    /// for an unknown id.
    pub fn point_cluster_endpoint(&self, id: &str) -> bool {
        tracing::info!(target: TARGET, instance = %id, "pointing cluster endpoint");
        let ok = lock(&self.inner.proxies)
            .as_ref()
            .is_some_and(|p| p.point_cluster_endpoint(id));
        if !ok {
            tracing::warn!(target: TARGET, instance = %id, "point_cluster_endpoint: unknown instance");
        }
        ok
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.inner.begin_close();
        let threads: Vec<_> = lock(&self.inner.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.inner.cleanup();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.begin_close();
        self.cleanup();
    }
}

impl Inner {
    fn start(cfg: LocalClusterBuilder) -> Result<Arc<Inner>, TestingError> {
        let started = Instant::now();
        if cfg.instances == 0 {
            return Err(TestingError::new(
                "a LocalCluster needs at least 1 instance",
            ));
        }
        if cfg.user.is_empty() || cfg.database.is_empty() {
            return Err(TestingError::new(
                "user and database names must not be empty",
            ));
        }
        let env = PgEnv::discover()?;
        let openssl = if cfg.tls { Some(find_openssl()?) } else { None };
        let ids: Vec<String> = (1..=cfg.instances + cfg.spares)
            .map(|i| format!("instance-{i}"))
            .collect();
        let (ports, held): (Vec<u16>, Vec<TcpListener>) =
            free_ports(cfg.instances + cfg.spares)?.into_iter().unzip();
        // The servers started now bind their ports in a moment: released at once. A spare
        // keeps its port held until it is added (minutes later another process, or an
        // outgoing connection's local port, could have taken it).
        let mut held: Vec<Option<TcpListener>> = held
            .into_iter()
            .enumerate()
            .map(|(n, listener)| (n >= cfg.instances).then_some(listener))
            .collect();
        let upstreams: Vec<(String, SocketAddr)> = ids
            .iter()
            .zip(&ports)
            .map(|(id, port)| (id.clone(), SocketAddr::from(([127, 0, 0, 1], *port))))
            .collect();
        let proxies = Proxies::start(&upstreams, &ids[0], cfg.shared_port)?;

        sweep_orphans();
        let root = std::env::temp_dir().join(format!("aurora-pool-{}", unique_suffix()));
        fs::create_dir(&root)
            .map_err(|e| TestingError::new(format!("creating {}: {e}", root.display())))?;
        if let Err(e) = env.chown(&root) {
            let _ = fs::remove_dir_all(&root);
            return Err(e);
        }
        // Private: the unix sockets live here, and they trust the superuser.
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = fs::set_permissions(&root, fs::Permissions::from_mode(0o700)) {
                let _ = fs::remove_dir_all(&root);
                return Err(TestingError::new(format!(
                    "making {} private: {e}",
                    root.display()
                )));
            }
        }
        let tls = openssl.map(|o| Tls::new(o, &root));
        let instances = ids
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(n, (id, port))| Instance {
                id: id.clone(),
                port: *port,
                proxy_addr: proxies
                    .addr(id)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                data_dir: root.join(id),
                log: root.join(format!("{id}.log")),
                resource_id: (1_000_000_001 + n as u64).to_string(),
                region: cfg.regions.get(n).cloned(),
                added: AtomicBool::new(n < cfg.instances),
                reserved: Mutex::new(held[n].take()),
            })
            .collect();
        let inner = Arc::new(Inner {
            env,
            root,
            flavour: cfg.flavour,
            user: cfg.user,
            password: cfg.password,
            database: cfg.database,
            tls,
            instances,
            cluster_addr: proxies.cluster_addr(),
            writer: Mutex::new(ids[0].clone()),
            proxies: Mutex::new(Some(proxies)),
            rejoins: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            closing: Mutex::new(false),
            closing_cv: Condvar::new(),
            cleaned: AtomicBool::new(false),
        });
        // From here on, an error drops `inner`, which tears everything down.
        if let Some(tls) = &inner.tls {
            tls.generate(&inner.env)?;
        }
        inner.init_primary()?;
        let primary = &inner.instances[0];
        let replicas = &inner.instances[1..cfg.instances];
        let results: Vec<Result<(), TestingError>> = std::thread::scope(|s| {
            let handles: Vec<_> = replicas
                .iter()
                .map(|r| {
                    std::thread::Builder::new()
                        .name(format!("aurora-pool-{}", r.id))
                        .spawn_scoped(s, || inner.build_replica(r, primary))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(TestingError::new("replica setup thread panicked"))
                    }),
                    Err(e) => Err(TestingError::new(format!("spawning a thread: {e}"))),
                })
                .collect()
        });
        for r in results {
            r?;
        }
        for inst in replicas {
            inner.psql(inst, &inner.database, "SELECT 1").map_err(|e| {
                e.context(format!(
                    "database `{}` not visible on {}",
                    inner.database, inst.id
                ))
            })?;
        }
        tracing::info!(
            target: TARGET,
            root = %inner.root.display(),
            instances = inner.instances.len(),
            flavour = ?inner.flavour,
            tls = inner.tls.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local cluster started"
        );
        Ok(inner)
    }

    fn instance(&self, id: &str) -> Result<&Instance, TestingError> {
        self.instances.iter().find(|i| i.id == id).ok_or_else(|| {
            TestingError::new(format!(
                "unknown instance `{id}` (known: {})",
                self.instances
                    .iter()
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn is_closing(&self) -> bool {
        *lock(&self.closing)
    }

    fn begin_close(&self) {
        *lock(&self.closing) = true;
        self.closing_cv.notify_all();
    }

    /// Sleeps `d` unless the cluster is being dropped; true if it is.
    fn sleep_unless_closing(&self, d: Duration) -> bool {
        let guard = lock(&self.closing);
        let (guard, _) = self
            .closing_cv
            .wait_timeout_while(guard, d, |closing| !*closing)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn with_log(&self, inst: &Instance, e: TestingError) -> TestingError {
        TestingError::new(format!("{e}{}", log_tail(&inst.log, LOG_LINES)))
    }

    // ---- configuration -------------------------------------------------

    fn common_conf(&self) -> String {
        let rds_extensions = match self.flavour {
            Flavour::Aurora => "rds.extensions = 'aurora_stat_utils,pg_stat_statements'\n",
            Flavour::RdsMultiAz => "rds.extensions = 'rds_tools,pg_stat_statements'\n",
            Flavour::Plain => "",
        };
        // The files live outside the data dirs (absolute paths), so the
        // postgresql.conf pg_basebackup copies to every replica uses them too.
        let ssl = match &self.tls {
            Some(t) => format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                sql::conf_value(&t.server_cert.to_string_lossy()),
                sql::conf_value(&t.server_key.to_string_lossy())
            ),
            None => String::new(),
        };
        format!(
            "\n# ---- aurora-pool testing::LocalCluster ----\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             max_connections = 200\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = replica\n\
             max_wal_senders = 20\n\
             wal_keep_size = 64MB\n\
             hot_standby = on\n\
             wal_retrieve_retry_interval = '200ms'\n\
             password_encryption = 'scram-sha-256'\n\
             log_min_messages = warning\n\
             logging_collector = off\n\
             {rds_extensions}\
             {ssl}\
             include_if_exists = '{INSTANCE_CONF}'\n",
            sql::conf_value(&self.root.to_string_lossy())
        )
    }

    /// pg_hba.conf of the primary (pg_basebackup copies it to the replicas).
    /// `postgres` and replication are trusted on the unix socket only, which lives in the
    /// cluster's private (0700) directory: no other local user reaches the superuser, over
    /// TCP or through the proxies. The client role needs scram-sha-256, over TLS only when
    /// TLS is on.
    fn hba_conf(&self) -> String {
        let client = if self.tls.is_some() {
            "hostssl"
        } else {
            "host"
        };
        format!(
            "# aurora-pool LocalCluster\n\
             local all all trust\n\
             local replication all trust\n\
             {client} all all 127.0.0.1/32 scram-sha-256\n"
        )
    }

    fn write_instance_conf(&self, inst: &Instance) -> Result<(), TestingError> {
        self.env.write_file(
            &inst.data_dir.join(INSTANCE_CONF),
            &format!(
                "# per-instance settings (aurora-pool LocalCluster)\nport = {}\naurora_emul.instance_id = {}\ncluster_name = {}\n",
                inst.port,
                sql::conf_value(&inst.id),
                sql::conf_value(&inst.id)
            ),
        )
    }

    fn write_standby_conf(&self, inst: &Instance, primary_port: u16) -> Result<(), TestingError> {
        // Over the private unix socket: the superuser has no TCP access.
        let conninfo = format!(
            "host='{}' port={primary_port} user=postgres application_name={}",
            self.root
                .to_string_lossy()
                .replace('\\', "\\\\")
                .replace('\'', "\\'"),
            inst.id
        );
        self.env.write_file(
            &inst.data_dir.join("postgresql.auto.conf"),
            &format!(
                "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nprimary_conninfo = {}\n",
                sql::conf_value(&conninfo)
            ),
        )?;
        self.env
            .write_file(&inst.data_dir.join("standby.signal"), "")
    }

    // ---- process control ---------------------------------------------

    fn is_running(&self, inst: &Instance) -> bool {
        postmaster_pid(&inst.data_dir).is_some_and(process_alive)
    }

    fn pg_ctl(&self, inst: &Instance, args: &[&str]) -> Result<(), TestingError> {
        let mut cmd = self.env.pg("pg_ctl", &self.root);
        cmd.arg("-D").arg(&inst.data_dir).args(args);
        run(cmd, None, TOOL_TIMEOUT).map(|_| ())
    }

    fn start_server(&self, inst: &Instance) -> Result<(), TestingError> {
        if self.is_closing() {
            return Err(TestingError::new("the cluster is being dropped"));
        }
        let log = inst.log.to_string_lossy().into_owned();
        self.pg_ctl(inst, &["-l", &log, "-w", "-t", "30", "start"])
            .map_err(|e| self.with_log(inst, e.context(format!("starting {}", inst.id))))?;
        self.wait_ready(inst)
    }

    fn stop(&self, inst: &Instance, mode: &str) -> Result<(), TestingError> {
        if !self.is_running(inst) {
            tracing::debug!(target: TARGET, instance = %inst.id, "not running");
            return Ok(());
        }
        self.pg_ctl(inst, &["-m", mode, "-w", "-t", "30", "stop"])
            .map_err(|e| self.with_log(inst, e.context(format!("stopping {} ({mode})", inst.id))))
    }

    fn wait_ready(&self, inst: &Instance) -> Result<(), TestingError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.psql(inst, "postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.with_log(
                        inst,
                        e.context(format!("{} not ready within {READY_TIMEOUT:?}", inst.id)),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Polls `sql` (one boolean value) on `inst` until it prints `t`.
    fn wait_true(
        &self,
        inst: &Instance,
        sql: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<(), TestingError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.psql(inst, "postgres", sql) {
                Ok(v) if v == "t" => return Ok(()),
                Ok(v) => format!("last result: {v:?}"),
                Err(e) => format!("last error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(self.with_log(
                    inst,
                    TestingError::new(format!(
                        "{}: {what} not reached within {timeout:?} ({last})",
                        inst.id
                    )),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_streaming(
        &self,
        inst: &Instance,
        primary_port: u16,
        timeout: Duration,
    ) -> Result<(), TestingError> {
        self.wait_true(
            inst,
            &format!(
                "SELECT count(*) = 1 FROM pg_catalog.pg_stat_wal_receiver \
                 WHERE status = 'streaming' AND sender_port = {primary_port}"
            ),
            timeout,
            &format!("streaming from port {primary_port}"),
        )
    }

    /// Waits until `replica` replayed WAL up to `lsn`.
    fn wait_replayed(
        &self,
        replica: &Instance,
        lsn: &str,
        timeout: Duration,
    ) -> Result<(), TestingError> {
        self.wait_true(
            replica,
            &format!(
                "SELECT COALESCE(pg_catalog.pg_last_wal_replay_lsn() >= {}::pg_lsn, false)",
                sql::literal(lsn)
            ),
            timeout,
            &format!("replay up to {lsn}"),
        )
    }

    fn psql(&self, inst: &Instance, database: &str, sql: &str) -> Result<String, TestingError> {
        let mut cmd = self.env.pg("psql", &self.root);
        // Our own writes are flushed (and so streamed) before psql returns.
        cmd.env("PGOPTIONS", "-c synchronous_commit=on");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .args([
                "-p",
                &inst.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-f",
                "-",
            ]);
        run(cmd, Some(sql), PSQL_TIMEOUT)
            .map(|o| o.stdout.trim().to_owned())
            .map_err(|e| e.context(format!("psql on {} (database {database})", inst.id)))
    }

    // ---- setup -------------------------------------------------------

    fn init_primary(&self) -> Result<(), TestingError> {
        let inst = &self.instances[0];
        match initdb_template(&self.env)? {
            Some(template) => {
                let mut cp = Command::new("cp");
                cp.arg("-a").arg(&template).arg(&inst.data_dir);
                run(cp, None, TOOL_TIMEOUT)
                    .map_err(|e| e.context("copying the initdb template"))?;
            }
            None => initdb(&self.env, &inst.data_dir, &self.root)?,
        }
        self.env
            .append_file(&inst.data_dir.join("postgresql.conf"), &self.common_conf())?;
        self.env
            .write_file(&inst.data_dir.join("pg_hba.conf"), &self.hba_conf())?;
        self.write_instance_conf(inst)?;
        self.start_server(inst)?;

        let members: Vec<sql::Member<'_>> = self
            .instances
            .iter()
            .filter(|i| i.added.load(Ordering::SeqCst))
            .enumerate()
            .map(|(n, i)| sql::Member {
                server_id: &i.id,
                is_writer: n == 0,
                resource_id: &i.resource_id,
                proxy_port: i.proxy_addr.port(),
                region: i.region.as_deref(),
            })
            .collect();
        let catalog = sql::catalog(self.flavour, &members);
        if !catalog.is_empty() {
            // template1 first: the application database inherits it.
            for db in ["template1", "postgres"] {
                self.psql(inst, db, &catalog)
                    .map_err(|e| e.context("installing the emulated catalog"))?;
            }
        }
        self.psql(
            inst,
            "postgres",
            &sql::create_role_and_database(&self.user, &self.password, &self.database),
        )
        .map_err(|e| e.context("creating the login role and database"))?;
        Ok(())
    }

    /// (Re)creates `inst` as a streaming replica of `primary` with
    /// `pg_basebackup`, starts it and waits until it streams.
    fn build_replica(&self, inst: &Instance, primary: &Instance) -> Result<(), TestingError> {
        let started = Instant::now();
        if inst.data_dir.exists() {
            fs::remove_dir_all(&inst.data_dir).map_err(|e| {
                TestingError::new(format!("removing {}: {e}", inst.data_dir.display()))
            })?;
        }
        let mut cmd = self.env.pg("pg_basebackup", &self.root);
        cmd.arg("-h")
            .arg(&self.root)
            .args(["-p", &primary.port.to_string(), "-U", "postgres", "-D"])
            .arg(&inst.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(cmd, None, TOOL_TIMEOUT).map_err(|e| {
            self.with_log(
                primary,
                e.context(format!("base backup of {} for {}", primary.id, inst.id)),
            )
        })?;
        self.write_instance_conf(inst)?;
        self.write_standby_conf(inst, primary.port)?;
        self.start_server(inst)?;
        self.wait_streaming(inst, primary.port, STREAM_TIMEOUT)?;
        tracing::info!(
            target: TARGET,
            instance = %inst.id,
            primary = %primary.id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replica streaming"
        );
        Ok(())
    }

    // ---- failover ----------------------------------------------------

    /// Promotes `to` after stopping the writer with `pg_ctl stop -m stop_mode`.
    /// The databases holding the emulated catalog: `template1`, `postgres` and the
    /// application's (once).
    /// Runs `sql` on `inst` in every database holding the emulated catalog, the
    /// application's first (the one pools read), in one psql session: a failover's new
    /// writer appears in the catalog one psql start after the promotion, not three.
    fn psql_catalogs(&self, inst: &Instance, sql: &str) -> Result<String, TestingError> {
        let mut dbs = vec![self.database.as_str()];
        for db in ["template1", "postgres"] {
            if !dbs.contains(&db) {
                dbs.push(db);
            }
        }
        let script: String = dbs
            .iter()
            .map(|db| format!("\\connect {db}\n{sql}\n"))
            .collect();
        self.psql(inst, dbs[0], &script)
    }

    fn failover(
        self: &Arc<Self>,
        to: &str,
        rejoin_after: Option<Duration>,
        stop_mode: Option<&str>,
    ) -> Result<(), TestingError> {
        let started = Instant::now();
        let old_id = lock(&self.writer).clone();
        let old = self.instance(&old_id)?;
        let new = self.instance(to)?;
        if old.id == new.id {
            return Err(TestingError::new(format!(
                "failover: `{to}` already is the writer"
            )));
        }
        if !self.is_running(new) {
            return Err(TestingError::new(format!(
                "failover: `{to}` is not running"
            )));
        }
        tracing::info!(target: TARGET, from = %old.id, to = %new.id, "failover");
        let others: Vec<&Instance> = self
            .instances
            .iter()
            .filter(|i| i.id != old.id && i.id != new.id && i.added.load(Ordering::SeqCst))
            .collect();

        // Let the replicas catch up so they can all follow the new timeline.
        self.catch_up_replicas(old, std::iter::once(new).chain(others.iter().copied()));
        if let Some(mode) = stop_mode {
            self.stop(old, mode)?;
            self.take_what_others_received(new, &others);
        }

        self.pg_ctl(new, &["-w", "-t", "30", "promote"])
            .map_err(|e| self.with_log(new, e.context(format!("promoting {}", new.id))))?;
        self.wait_true(
            new,
            "SELECT NOT pg_catalog.pg_is_in_recovery()",
            READY_TIMEOUT,
            "end of recovery after promotion",
        )?;

        if self.flavour != Flavour::Plain {
            self.psql_catalogs(new, &sql::set_writer(&new.id))
                .map_err(|e| e.context("updating the emulated member table"))?;
            if stop_mode.is_none() {
                // Split brain: the old writer, still up, no longer replicates to the
                // others; its own table learns of the newer writer too.
                self.psql_catalogs(old, &sql::set_writer(&new.id))
                    .map_err(|e| e.context("updating the old writer's member table"))?;
            }
        }
        *lock(&self.writer) = new.id.clone();
        if let Some(p) = lock(&self.proxies).as_ref() {
            p.point_cluster_endpoint(&new.id);
        }

        let lsn = self.psql(
            new,
            "postgres",
            "SELECT pg_catalog.pg_current_wal_flush_lsn()",
        )?;
        for r in &others {
            self.write_standby_conf(r, new.port)?;
            if !self.is_running(r) {
                continue;
            }
            self.pg_ctl(r, &["reload"])?;
            let followed = self
                .wait_streaming(r, new.port, Duration::from_secs(15))
                .and_then(|()| self.wait_replayed(r, &lsn, Duration::from_secs(15)));
            if let Err(e) = followed {
                tracing::warn!(target: TARGET, instance = %r.id, error = %e, "replica cannot follow the new primary; rebuilding it");
                self.stop(r, "immediate")?;
                self.build_replica(r, new)?;
            }
        }
        tracing::info!(
            target: TARGET,
            writer = %new.id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "failover done"
        );

        if let Some(delay) = rejoin_after {
            let (tx, rx) = watch::channel(None);
            lock(&self.rejoins).insert(old.id.clone(), Rejoin { result: rx });
            let inner = Arc::clone(self);
            let id = old.id.clone();
            let thread = std::thread::Builder::new()
                .name(format!("aurora-pool-rejoin-{id}"))
                .spawn(move || {
                    let result = if inner.sleep_unless_closing(delay) {
                        Err(TestingError::new(format!("rejoin of `{id}` cancelled: cluster dropped")))
                    } else {
                        inner.rejoin(&id)
                    };
                    match &result {
                        Ok(()) => tracing::info!(target: TARGET, instance = %id, "old writer rejoined as a replica"),
                        Err(e) => tracing::warn!(target: TARGET, instance = %id, error = %e, "rejoin failed"),
                    }
                    let _ = tx.send(Some(result));
                })
                .map_err(|e| TestingError::new(format!("spawning the rejoin thread: {e}")))?;
            lock(&self.threads).push(thread);
        }
        Ok(())
    }

    /// Waits (a few rounds, 5 s each at most) for the running `replicas` to replay what the
    /// writer `old` has written, while its position still moves: what it loses when
    /// it is killed next is only what it committed in the last moment (replication is
    /// asynchronous here; Aurora's shared storage loses nothing).
    fn catch_up_replicas<'a>(&self, old: &Instance, replicas: impl Iterator<Item = &'a Instance>) {
        if !self.is_running(old) {
            return;
        }
        // Only replicas that stream: a promoted instance (a split brain's other writer)
        // replays nothing, and one whose stream is down cannot catch up.
        let streaming = "SELECT pg_catalog.pg_is_in_recovery() AND EXISTS (SELECT 1 FROM \
                         pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming')";
        let replicas: Vec<&Instance> = replicas
            .filter(|r| self.is_running(r))
            .filter(|r| {
                self.psql(r, "postgres", streaming)
                    .is_ok_and(|out| out.trim() == "t")
            })
            .collect();
        // The cluster commits asynchronously (`synchronous_commit = off`): what clients were
        // told is committed may not be flushed yet. A record written here, in a psql
        // commit that flushes (`synchronous_commit=on`), flushes all WAL before it; the
        // record's end is a position replay reaches (the insert position may sit past a
        // page header replay never passes, and a commit that wrote nothing flushes
        // nothing).
        let written = "SELECT pg_catalog.pg_logical_emit_message(true, 'aurora-pool', 'catch-up')";
        let mut caught_up_to: Option<String> = None;
        for _ in 0..CATCH_UP_ROUNDS {
            let lsn = match self
                .psql(old, "postgres", written)
                .map(|out| out.lines().last().unwrap_or_default().to_owned())
            {
                Ok(lsn) => lsn,
                Err(e) => {
                    tracing::warn!(target: TARGET, error = %e, "writer unreachable before it is killed");
                    break;
                }
            };
            tracing::debug!(target: TARGET, instance = %old.id, %lsn, "replicas catching up before the writer is killed");
            if caught_up_to.as_ref() == Some(&lsn) {
                break;
            }
            for r in &replicas {
                if let Err(e) = self.wait_replayed(r, &lsn, Duration::from_secs(5)) {
                    tracing::warn!(target: TARGET, instance = %r.id, error = %e, "replica did not catch up before the writer was killed");
                }
            }
            caught_up_to = Some(lsn);
        }
    }

    /// With the old writer stopped: when another replica received WAL that `new` did not
    /// (the old writer logs in the background, a standby snapshot every 15 s, and what it
    /// wrote after the last catch-up reached some replicas only), `new` streams it from
    /// that replica before it is promoted. Otherwise that replica could not follow the new
    /// timeline and would be rebuilt: a reader crash the test did not ask for, cutting
    /// reads in flight on it. On any failure the promotion goes ahead as before.
    fn take_what_others_received(&self, new: &Instance, others: &[&Instance]) {
        const RECEIVED: &str = "SELECT COALESCE(pg_catalog.pg_last_wal_receive_lsn(), \
                                pg_catalog.pg_last_wal_replay_lsn())";
        let received = |inst: &Instance| {
            self.psql(inst, "postgres", RECEIVED)
                .ok()
                .map(|out| out.trim().to_owned())
                .filter(|lsn| !lsn.is_empty())
        };
        for source in others.iter().filter(|r| self.is_running(r)) {
            let (Some(own), Some(lsn)) = (received(new), received(source)) else {
                continue;
            };
            let ahead = format!(
                "SELECT {}::pg_lsn > {}::pg_lsn",
                sql::literal(&lsn),
                sql::literal(&own)
            );
            if !self
                .psql(new, "postgres", &ahead)
                .is_ok_and(|out| out.trim() == "t")
            {
                continue;
            }
            tracing::info!(target: TARGET, instance = %new.id, from = %source.id, %lsn, "catching up from a replica that received more before the promotion");
            // Received, not replayed: the source's received position may end inside a
            // record the killed writer never finished, which replay never passes; the
            // promotion replays whatever was received.
            let received = format!(
                "SELECT COALESCE(pg_catalog.pg_last_wal_receive_lsn() >= {}::pg_lsn, false)",
                sql::literal(&lsn)
            );
            let caught_up = self
                .write_standby_conf(new, source.port)
                .and_then(|()| self.pg_ctl(new, &["reload"]))
                .and_then(|()| {
                    self.wait_true(
                        new,
                        &received,
                        Duration::from_secs(10),
                        "WAL received from another replica",
                    )
                });
            if let Err(e) = caught_up {
                tracing::warn!(target: TARGET, instance = %new.id, error = %e, "could not catch up from another replica before the promotion");
            }
        }
    }

    fn add_instance(&self, id: &str) -> Result<(), TestingError> {
        let inst = self.instance(id)?;
        if inst.added.load(Ordering::SeqCst) {
            return Err(TestingError::new(format!(
                "`{id}` is already part of the cluster"
            )));
        }
        let writer = lock(&self.writer).clone();
        let primary = self.instance(&writer)?;
        drop(lock(&inst.reserved).take());
        self.build_replica(inst, primary)?;
        if self.flavour != Flavour::Plain {
            let member = sql::Member {
                server_id: &inst.id,
                is_writer: false,
                resource_id: &inst.resource_id,
                proxy_port: inst.proxy_addr.port(),
                region: inst.region.as_deref(),
            };
            self.psql_catalogs(primary, &sql::add_member(&member))
                .map_err(|e| e.context("adding to the emulated member table"))?;
        }
        inst.added.store(true, Ordering::SeqCst);
        tracing::info!(target: TARGET, instance = %id, primary = %primary.id, "instance added");
        Ok(())
    }

    fn rejoin(&self, id: &str) -> Result<(), TestingError> {
        let inst = self.instance(id)?;
        let writer = lock(&self.writer).clone();
        let primary = self.instance(&writer)?;
        tracing::info!(target: TARGET, instance = %id, primary = %primary.id, "rebuilding old writer as a replica");
        self.stop(inst, "immediate")?;
        self.build_replica(inst, primary)
    }

    // ---- teardown ----------------------------------------------------

    /// Stops every server, the proxies, and removes the temp dir. Idempotent.
    fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        std::thread::scope(|s| {
            for inst in &self.instances {
                let spawned = std::thread::Builder::new().spawn_scoped(s, || self.force_stop(inst));
                if spawned.is_err() {
                    self.force_stop(inst);
                }
            }
        });
        if let Some(mut p) = lock(&self.proxies).take() {
            p.shutdown();
        }
        if let Err(e) = fs::remove_dir_all(&self.root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(target: TARGET, root = %self.root.display(), error = %e, "could not remove the cluster temp dir");
        }
        tracing::info!(target: TARGET, root = %self.root.display(), "local cluster removed");
    }

    fn force_stop(&self, inst: &Instance) {
        let Some(pid) = postmaster_pid(&inst.data_dir) else {
            return;
        };
        if process_alive(pid) {
            let mut cmd = self.env.pg("pg_ctl", &self.root);
            cmd.arg("-D")
                .arg(&inst.data_dir)
                .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
            if let Err(e) = run(cmd, None, Duration::from_secs(15)) {
                tracing::warn!(target: TARGET, instance = %inst.id, error = %e, "pg_ctl stop failed; killing the postmaster");
            }
        }
        if process_alive(pid) {
            kill_pid(pid);
            let deadline = Instant::now() + Duration::from_secs(5);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
