//! One behaviour suite for every backend: the same scenarios (routing by role, a writer crash,
//! a black-holed writer, a transaction across a crash, the retry helpers, rotated credentials,
//! cleanup) run against the sqlx flavour and the deadpool flavour.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aurora_pool::auth::{ConnectTarget, CredentialProvider, Credentials};
use aurora_pool::testing::LocalCluster;
use aurora_pool::{BoxFuture, Role};
use support::flavour::{Flavour, INSTANCE_ID, connect, failover_to, flavour_tests, with_provider};
use support::{AGGRESSIVE, eventually, unique_cluster_id};

async fn reads_and_writes_go_to_their_roles<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    assert_eq!(
        pool.instance_id(Role::Writer).await.expect("writer"),
        "instance-1"
    );
    let mut readers = std::collections::BTreeSet::new();
    for _ in 0..40 {
        readers.insert(pool.instance_id(Role::Reader).await.expect("reader"));
    }
    let expected: std::collections::BTreeSet<String> = ["instance-2", "instance-3"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(readers, expected);
    pool.close().await;
}

async fn writes_continue_on_the_new_writer_after_a_crash<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, AGGRESSIVE).await;
    pool.execute("CREATE TABLE behaviour (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "behaviour").await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let written = eventually(Duration::from_secs(20), || async {
        match pool.execute("INSERT INTO behaviour VALUES (1)").await {
            Ok(()) => true,
            Err(err) => {
                assert!(
                    err.is_failover()
                        || err.is_failover_failed()
                        || err.is_connect()
                        || err.is_timeout(),
                    "{err:?}"
                );
                false
            }
        }
    })
    .await;
    assert!(
        written,
        "no write reached the new writer: {}",
        pool.topology()
    );
    assert_eq!(
        pool.instance_id(Role::Writer).await.expect("writer"),
        "instance-2"
    );
    pool.close().await;
}

async fn the_retry_helpers_ride_through_a_crash<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, AGGRESSIVE).await;
    pool.run("CREATE TABLE helpers (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "helpers").await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    // One call each, no retry loop here: the helpers wait for the new writer.
    pool.run("INSERT INTO helpers VALUES (1)")
        .await
        .expect("run after the crash");
    pool.transaction("INSERT INTO helpers VALUES (2)")
        .await
        .expect("transaction after the crash");
    // A statement error is returned at once and rolls the transaction back.
    let err = pool
        .transaction("INSERT INTO no_such_table VALUES (1)")
        .await
        .expect_err("no table");
    assert_eq!(err.sqlstate(), Some("42P01"), "{err:?}");
    assert!(!err.is_retryable());
    let count = cluster
        .psql(
            "instance-2",
            cluster.database(),
            "SELECT count(*) FROM helpers",
        )
        .await
        .expect("count");
    assert_eq!(count.trim(), "3");
    pool.close().await;
}

/// The writer goes silent (traffic dropped, no RST): health probes declare it dead, the work
/// hanging on it is abandoned and, declared idempotent (it only reads), run again on the new
/// writer.
async fn a_black_holed_writer_is_detected_and_failed_over<F: Flavour>(test: &str) {
    let cluster = Arc::new(LocalCluster::start(3).await.expect("cluster"));
    let params = format!("{AGGRESSIVE}&failover_timeout_ms=30000");
    let pool = connect::<F>(&cluster, test, &params).await;
    let mut events = pool.events();
    // A connection to the writer is open, so the work below runs on it at once.
    pool.run("SELECT 1").await.expect("warm");
    let in_flight = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run_text_with(
                aurora_pool::RetryPolicy::new().idempotent(),
                Role::Writer,
                "SELECT pg_catalog.pg_sleep(1)::text || pg_catalog.aurora_db_instance_identifier()",
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cluster.blackhole("instance-1", true));
    // Aurora notices the silent writer too and promotes a replica.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    // Without detection it would hang on the silent writer for minutes (TCP's own timeout).
    let result = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the in-flight work must not hang")
        .expect("task");
    let served = result.expect("the work is retried on the new writer");
    assert!(served.ends_with("instance-2"), "{served}");
    let declared = eventually(Duration::from_secs(10), || async {
        !pool
            .topology()
            .instance("instance-1")
            .is_some_and(|i| i.is_available())
    })
    .await;
    assert!(
        declared,
        "instance-1 was never declared unreachable: {}",
        pool.topology()
    );
    let seen = support::drain_events(&mut events);
    for expected in [
        aurora_pool::ClusterEvent::InstanceDown {
            instance: "instance-1".into(),
        },
        aurora_pool::ClusterEvent::WriterChanged {
            old: "instance-1".into(),
            new: "instance-2".into(),
        },
    ] {
        assert!(seen.contains(&expected), "{seen:?}");
    }
    pool.close().await;
}

/// A transaction open when the writer crashes ends as "state unknown", and its insert is not
/// committed.
/// The writer dies before COMMIT was sent: the server rolled back, so the error is a
/// retryable failover (not an unknown outcome) and nothing of the transaction survives.
async fn a_transaction_across_a_crash_is_reported_and_not_committed<F: Flavour>(test: &str) {
    let cluster = Arc::new(LocalCluster::start(3).await.expect("cluster"));
    let params = format!("{AGGRESSIVE}&failover_timeout_ms=30000");
    let pool = connect::<F>(&cluster, test, &params).await;
    pool.run("CREATE TABLE ledger (note text NOT NULL)")
        .await
        .expect("create");
    support::replicated(&cluster, "ledger").await;
    let crash = failover_to(&cluster, "instance-2");
    let err = pool
        .transaction_interrupted("INSERT INTO ledger VALUES ('lost')", crash)
        .await
        .expect_err("the writer died inside the transaction");
    assert!(err.is_failover() && err.is_retryable(), "{err:?}");
    assert!(!err.is_transaction_state_unknown(), "{err:?}");
    let count = pool
        .run_text(Role::Writer, "SELECT count(*)::text FROM ledger")
        .await;
    assert_eq!(
        count.expect("count"),
        "0",
        "the uncommitted insert must not survive"
    );
    assert_eq!(pool.topology().writer().id(), "instance-2");
    pool.close().await;
}

/// Connections on every instance whose `application_name` contains `needle`.
async fn server_connections(cluster: &LocalCluster, needle: &str) -> usize {
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%{needle}%'");
    let mut total = 0;
    for id in cluster.instance_ids() {
        let count = cluster
            .psql(&id, "postgres", &sql)
            .await
            .expect("pg_stat_activity");
        total += count.trim().parse::<usize>().expect("count");
    }
    total
}

/// Nothing outlives the pool: server connections, monitor, probe and maintenance tasks are
/// gone after drop or close, over many create/drop cycles.
async fn dropped_pools_leave_no_connections_and_no_tasks<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let app = unique_cluster_id(&format!("{test}-app"));
    for cycle in 0..10 {
        let params = format!(
            "application_name={app}-{cycle}&writer_min_connections=2&failure_detection_time_ms=0"
        );
        let pool = connect::<F>(&cluster, test, &params).await;
        pool.run("SELECT 1").await.expect("write");
        pool.instance_id(Role::Reader).await.expect("read");
        if cycle % 2 == 0 {
            pool.close().await;
        }
        drop(pool);
    }
    let id = unique_cluster_id(test);
    let gone = eventually(Duration::from_secs(15), || async {
        server_connections(&cluster, &app).await == 0
            && server_connections(&cluster, &id).await == 0
    })
    .await;
    assert!(
        gone,
        "connections left: {} of the pools, {} of the monitors and probes",
        server_connections(&cluster, &app).await,
        server_connections(&cluster, &id).await
    );
    let settled = eventually(Duration::from_secs(10), || async {
        metrics.num_alive_tasks() <= tasks_before
    })
    .await;
    assert!(
        settled,
        "tasks alive: {tasks_before} before, {} after",
        metrics.num_alive_tasks()
    );
}

/// A vault of one password that the test rotates.
#[derive(Debug, Clone)]
struct Vault(Arc<Mutex<String>>);

impl CredentialProvider for Vault {
    fn credentials<'a>(
        &'a self,
        _: &'a ConnectTarget,
    ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
        let password = self.0.lock().expect("vault").clone();
        Box::pin(
            async move { Ok(Credentials::new(password).valid_for(Duration::from_millis(300))) },
        )
    }
}

async fn new_connections_use_rotated_credentials<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let vault = Vault(Arc::new(Mutex::new(cluster.password().to_owned())));
    let pool: F = with_provider(&cluster, test, "&writer_max_connections=1", vault.clone()).await;
    pool.execute("SELECT 1").await.expect("first login");
    let sql = format!(
        "ALTER ROLE \"{}\" PASSWORD 'rotated-in-the-vault'",
        cluster.user()
    );
    cluster
        .psql("instance-1", "postgres", &sql)
        .await
        .expect("alter role");
    *vault.0.lock().expect("vault") = "rotated-in-the-vault".to_owned();
    // New connections (the writer pool holds one; terminate it) log in with the new password.
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}' AND application_name NOT LIKE 'aurora-pool-%'",
        cluster.user()
    );
    let rotated = eventually(Duration::from_secs(10), || async {
        let _ = cluster.psql("instance-1", "postgres", &terminate).await;
        pool.execute("SELECT 1").await.is_ok() && pool.execute("SELECT 1").await.is_ok()
    })
    .await;
    assert!(rotated, "no login with the rotated password");
    pool.close().await;
}

/// A vault that answers until told to fail.
#[derive(Debug, Clone)]
struct FailingVault {
    password: String,
    failing: Arc<AtomicBool>,
}

impl CredentialProvider for FailingVault {
    fn credentials<'a>(
        &'a self,
        _: &'a ConnectTarget,
    ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
        let answer = match self.failing.load(Ordering::SeqCst) {
            true => Err(aurora_pool::Error::credentials("the vault is down")),
            false => Ok(Credentials::new(self.password.clone())),
        };
        Box::pin(async move { answer })
    }
}

/// A new instance's pool opened while the provider fails has no credentials: a checkout on
/// it says the provider gave none, not that the password is wrong.
async fn a_pool_without_credentials_says_so<F: Flavour>(test: &str) {
    let cluster = LocalCluster::builder()
        .instances(2)
        .spare_instances(1)
        .start()
        .await
        .expect("cluster");
    let vault = FailingVault {
        password: cluster.password().to_owned(),
        failing: Arc::new(AtomicBool::new(false)),
    };
    let pool: F = with_provider(
        &cluster,
        test,
        "&cluster_topology_refresh_rate_ms=300&failover_mode=strict_reader",
        vault.clone(),
    )
    .await;
    pool.execute("SELECT 1").await.expect("a login");
    // The probes' connections open first (one of them reads the topology).
    let probes = format!("aurora-pool-probe:{}", unique_cluster_id(test));
    let connected = eventually(Duration::from_secs(10), || async {
        support::connections_named(&cluster, "instance-1", &probes).await == 1
            && support::connections_named(&cluster, "instance-2", &probes).await == 1
    })
    .await;
    assert!(connected, "the probes never connected");
    vault.failing.store(true, Ordering::SeqCst);
    cluster
        .add_instance("instance-3")
        .await
        .expect("add instance-3");
    let known = eventually(Duration::from_secs(10), || async {
        pool.topology().instance("instance-3").is_some()
    })
    .await;
    assert!(known, "instance-3 never joined: {}", pool.topology());
    // Checkouts for readers until one tries the new instance's pool.
    let mut seen = Vec::new();
    for _ in 0..40 {
        if let Err(err) = pool.fresh_login(Role::Reader).await {
            seen.push(format!("{err:#}"));
            if err.is_credentials() {
                pool.close().await;
                return;
            }
            assert!(
                !err.is_login_rejected(),
                "a refused login instead of the provider's failure: {err:?}"
            );
        }
    }
    panic!("no checkout reached the new instance's pool: {seen:?}");
}

/// A password vault that answers until told to hang (Secrets Manager or STS out).
#[derive(Debug, Clone)]
struct HangingVault {
    password: String,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl CredentialProvider for HangingVault {
    fn credentials<'a>(
        &'a self,
        _: &'a ConnectTarget,
    ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
        let hang = self.hang.load(std::sync::atomic::Ordering::SeqCst);
        let password = self.password.clone();
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(Credentials::new(password).valid_for(Duration::from_millis(300)))
        })
    }
}

/// Credentials come due while the provider hangs: checkouts go on with the pooled
/// connections and the cached credentials, never waiting on the provider.
async fn a_hanging_provider_does_not_stall_checkouts<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let vault = HangingVault {
        password: cluster.password().to_owned(),
        hang: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let pool: F = with_provider(&cluster, test, "", vault.clone()).await;
    pool.execute("SELECT 1").await.expect("first login");
    vault.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    // Past the credentials' lifetime: every checkout now finds them due.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = std::time::Instant::now();
        pool.execute("SELECT 1")
            .await
            .expect("a checkout with the provider hanging");
        slowest = slowest.max(started.elapsed());
    }
    // A liveness bound: a checkout that waited on the provider would take connect_timeout
    // (10 s).
    assert!(
        slowest < Duration::from_secs(3),
        "a checkout waited {slowest:?} on the hanging provider"
    );
    pool.close().await;
}

/// A user name that must be percent-encoded in the URL (`alice%40corp`) logs in as itself,
/// in every flavour and in the crate's own connections.
async fn a_percent_encoded_user_logs_in_as_itself<F: Flavour>(test: &str) {
    let cluster = LocalCluster::builder()
        .instances(2)
        .user("alice@corp")
        .start()
        .await
        .expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let user = pool
        .query_text(Role::Writer, "SELECT current_user::text")
        .await
        .expect("a login as alice@corp");
    assert_eq!(user, "alice@corp");
    assert_eq!(pool.config().user(), "alice@corp");
    pool.close().await;
}

/// The provider hangs while the probes must log in again (their connections ended): the
/// instances are not declared down, since nothing is known about them.
async fn a_hanging_provider_declares_nothing_down<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let vault = HangingVault {
        password: cluster.password().to_owned(),
        hang: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let pool: F = with_provider(&cluster, test, "", vault.clone()).await;
    let mut events = pool.events();
    let probes = format!("aurora-pool-probe:{}", unique_cluster_id(test));
    let connected = eventually(Duration::from_secs(10), || async {
        support::connections_named(&cluster, "instance-1", &probes).await == 1
    })
    .await;
    assert!(connected, "the probes never connected");
    vault.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{probes}'"
    );
    for id in ["instance-1", "instance-2"] {
        cluster
            .psql(id, "postgres", &terminate)
            .await
            .expect("end the probes' sessions");
    }
    // Several probe intervals (0.5 s) and detection counts (2) later.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let topology = pool.topology();
    assert!(
        topology.instances().iter().all(|i| i.is_available()),
        "an instance was declared down because the provider hung: {topology}"
    );
    let seen = support::drain_events(&mut events);
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, aurora_pool::ClusterEvent::InstanceDown { .. })),
        "{seen:?}"
    );
    pool.close().await;
}

/// The pool's own connections (`application_name`) on instance `on`.
async fn app_connections_on(cluster: &LocalCluster, on: &str, app: &str) -> usize {
    support::connections_named(cluster, on, app).await
}

/// #22 item 7: no connection lands on an instance the pool has left. Writer connects are in
/// flight (held by the network) when the writer role moves to instance-2 while instance-1
/// stays up and writable (split brain); released, they reach instance-1, which still takes
/// writes: each is refused and opened again on instance-2, where the writes land.
async fn a_connect_in_flight_never_lands_on_the_writer_the_pool_left<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let app = unique_cluster_id(&format!("{test}-app"));
    let pool = connect::<F>(
        &cluster,
        test,
        &format!(
            "application_name={app}&writer_min_connections=0&cluster_topology_refresh_rate_ms=300"
        ),
    )
    .await;
    let idle = eventually(Duration::from_secs(5), || async {
        app_connections_on(&cluster, "instance-1", &app).await == 0
    })
    .await;
    assert!(
        idle,
        "the writer pool kept connections it was not asked for"
    );
    assert!(cluster.hold_connects("instance-1", true));
    let writer = pool.handle(Role::Writer);
    let mut writes = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let writer = writer.clone();
        writes.spawn(async move { F::handle_text(&writer, INSTANCE_ID).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .promote_leaving_writer_up("instance-2")
        .await
        .expect("split-brain promotion");
    let moved = eventually(Duration::from_secs(10), || async {
        pool.topology().writer().id() == "instance-2"
    })
    .await;
    assert!(
        moved,
        "the pool never followed the promotion: {}",
        pool.topology()
    );
    assert!(cluster.hold_connects("instance-1", false));
    // A write whose connect was in flight either lands on instance-2 or ends with an error
    // (its socket to the instance the pool left was ended); it never lands on instance-1.
    while let Some(write) = writes.join_next().await {
        if let Ok(landed) = write.expect("task") {
            assert_eq!(
                landed, "instance-2",
                "a held connect landed on the writer the pool left"
            );
        }
    }
    for _ in 0..5 {
        let landed = F::handle_text(&writer, INSTANCE_ID).await.expect("write");
        assert_eq!(landed, "instance-2");
    }
    let none_left = eventually(Duration::from_secs(5), || async {
        app_connections_on(&cluster, "instance-1", &app).await == 0
    })
    .await;
    assert!(
        none_left,
        "pool connections stayed on instance-1: {}",
        app_connections_on(&cluster, "instance-1", &app).await
    );
    pool.close().await;
}

flavour_tests!(
    a_connect_in_flight_never_lands_on_the_writer_the_pool_left,
    a_pool_without_credentials_says_so,
    a_hanging_provider_declares_nothing_down,
    a_percent_encoded_user_logs_in_as_itself,
    a_hanging_provider_does_not_stall_checkouts,
    reads_and_writes_go_to_their_roles,
    writes_continue_on_the_new_writer_after_a_crash,
    the_retry_helpers_ride_through_a_crash,
    dropped_pools_leave_no_connections_and_no_tasks,
    a_black_holed_writer_is_detected_and_failed_over,
    a_transaction_across_a_crash_is_reported_and_not_committed,
    new_connections_use_rotated_credentials,
);

/// A provider whose logins to one port take `delay` while armed, counting the logins
/// abandoned half-way (their connect was dropped).
#[derive(Debug, Clone)]
struct SlowLogin {
    password: String,
    port: u16,
    delay: Duration,
    armed: Arc<AtomicBool>,
    abandoned: Arc<std::sync::atomic::AtomicU32>,
}

/// Counts itself abandoned unless `finished` before it is dropped.
struct Unfinished {
    abandoned: Arc<std::sync::atomic::AtomicU32>,
    finished: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.finished {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl CredentialProvider for SlowLogin {
    fn credentials<'a>(
        &'a self,
        target: &'a ConnectTarget,
    ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
        let slow = target.port == self.port && self.armed.load(Ordering::SeqCst);
        Box::pin(async move {
            if slow {
                let mut unfinished = Unfinished {
                    abandoned: self.abandoned.clone(),
                    finished: false,
                };
                tokio::time::sleep(self.delay).await;
                unfinished.finished = true;
            }
            Ok(Credentials::new(self.password.clone()))
        })
    }
}

/// deadpool only (its connects ask the provider each time, which makes a cancelled connect
/// countable): a writer connect in flight is not thrown away when the routing changes for
/// another reason (a reader leaving), #22 item 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_connect_outlives_an_unrelated_routing_change() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let writer_port = cluster
        .instance_addr("instance-1")
        .expect("writer address")
        .port();
    let login = SlowLogin {
        password: cluster.password().to_owned(),
        port: writer_port,
        delay: Duration::from_millis(1500),
        armed: Arc::new(AtomicBool::new(false)),
        abandoned: Arc::default(),
    };
    let test = "deadpool-connect-outlives-routing";
    let pool: aurora_pool::deadpool::AuroraPool = with_provider(
        &cluster,
        test,
        &format!("&writer_min_connections=0&{AGGRESSIVE}"),
        login.clone(),
    )
    .await;
    let version = pool.topology().version();
    login.armed.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let write = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute("SELECT 1").await }
    });
    // The connect is logging in; a reader leaves meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.crash("instance-3").await.expect("crash a reader");
    let rerouted = eventually(Duration::from_secs(5), || async {
        pool.topology().version() > version
            || pool
                .topology()
                .instance("instance-3")
                .is_some_and(|i| !i.is_available())
    })
    .await;
    assert!(
        rerouted,
        "the reader was never dropped: {}",
        pool.topology()
    );
    write.await.expect("task").expect("the write");
    assert_eq!(
        login.abandoned.load(Ordering::SeqCst),
        0,
        "a writer login was dropped half-way and begun again ({:?})",
        started.elapsed()
    );
    pool.close().await;
}
