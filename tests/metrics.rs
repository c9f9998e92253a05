//! The crate's metrics (feature `metrics`), read through `metrics-util`'s debugging
//! recorder across a writer crash and a reader crash, a lost reply and a refused login,
//! both flavours, default settings.

mod support;

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_pool::auth::{ConnectTarget, CredentialProvider, Credentials, LoginFailure};
use aurora_pool::testing::{CutAt, LocalCluster};
use aurora_pool::{BoxFuture, RetryPolicy, Role};
use support::eventually;
use support::flavour::{Flavour, connect, flavour_tests, with_provider};
use support::recorder::{Metric, Value, recorded, snapshotter};

/// The metrics of `cluster_id`: name, the other labels, the value.
fn metrics_of(cluster_id: &str) -> Vec<Metric> {
    recorded()
        .into_iter()
        .filter(|(_, labels, _)| {
            labels
                .iter()
                .any(|(k, v)| k == "cluster_id" && v == cluster_id)
        })
        .map(|(name, labels, value)| {
            let others = labels.into_iter().filter(|(k, _)| k != "cluster_id");
            (name, others.collect(), value)
        })
        .collect()
}

fn counter(metrics: &[Metric], name: &str, instance: Option<&str>) -> u64 {
    metrics
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && instance.is_none_or(|i| labels.iter().any(|(k, v)| k == "instance" && v == i))
        })
        .map(|(_, _, value)| match value {
            Value::Counter(n) => *n,
            other => panic!("{name} is no counter: {other:?}"),
        })
        .sum()
}

/// The samples of histogram `name` recorded for the pool named `pool`.
fn pool_samples(metrics: &[Metric], name: &str, pool: &str) -> Vec<f64> {
    let of_pool: Vec<Metric> = metrics
        .iter()
        .filter(|(_, labels, _)| {
            labels
                .iter()
                .any(|(k, v)| k == "db.client.connection.pool.name" && v == pool)
        })
        .cloned()
        .collect();
    samples(&of_pool, name)
}

fn samples(metrics: &[Metric], name: &str) -> Vec<f64> {
    metrics
        .iter()
        .filter(|(n, ..)| n == name)
        .flat_map(|(_, _, value)| match value {
            Value::Histogram(samples) => samples.clone(),
            other => panic!("{name} is no histogram: {other:?}"),
        })
        .collect()
}

/// A writer crash, the promotion right behind it: one failover started and succeeded, with
/// its duration and the pool's recovery; the old writer declared down once, with its
/// detection time; topology reads counted; a reader's replica lag as the monitor reads it.
/// A reader crash: that reader down, no failover.
async fn failovers_and_verdicts_are_counted<F: Flavour>(test: &str) {
    snapshotter();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(&cluster, test, "").await;
    let cluster_id = pool.config().cluster_id.clone();
    let read = eventually(Duration::from_secs(10), || async {
        counter(&metrics_of(&cluster_id), "aurora_pool.topology.reads", None) > 0
    })
    .await;
    assert!(
        read,
        "no topology read counted: {:?}",
        metrics_of(&cluster_id)
    );

    cluster.crash("instance-1").await.expect("crash");
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pool.instance_id(Role::Writer).await.ok().as_deref() != Some("instance-2") {
        assert!(Instant::now() < deadline, "writes never reached instance-2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The recovery: from the pool's move to instance-2 to its first connection there.
    let metrics = metrics_of(&cluster_id);
    let recoveries = samples(&metrics, "aurora_pool.failover.recovery_time");
    assert_eq!(
        recoveries.len(),
        1,
        "one failover, one recovery: {metrics:?}"
    );
    assert!(
        recoveries[0] > 0.0 && recoveries[0] < 15.0,
        "{recoveries:?}"
    );
    // The replica lag of each reader, as the monitor reads it.
    cluster
        .set_replica_lag("instance-3", 1500.0)
        .await
        .expect("lag");
    let lag = eventually(Duration::from_secs(10), || async {
        instance_gauge(
            &metrics_of(&cluster_id),
            "aurora_pool.replica.lag",
            "instance-3",
        ) == Some(1.5)
    })
    .await;
    assert!(lag, "instance-3's lag: {:?}", metrics_of(&cluster_id));
    // A reader crash: no failover, that reader down.
    cluster.crash("instance-3").await.expect("crash");
    let down = eventually(Duration::from_secs(10), || async {
        counter(
            &metrics_of(&cluster_id),
            "aurora_pool.instances.down",
            Some("instance-3"),
        ) > 0
    })
    .await;
    assert!(
        down,
        "the reader's verdict was not counted: {:?}",
        metrics_of(&cluster_id)
    );

    let metrics = metrics_of(&cluster_id);
    assert_eq!(
        counter(&metrics, "aurora_pool.failovers.started", None),
        1,
        "{metrics:?}"
    );
    assert_eq!(
        counter(&metrics, "aurora_pool.failovers.succeeded", None),
        1,
        "{metrics:?}"
    );
    assert_eq!(
        counter(&metrics, "aurora_pool.failovers.failed", None),
        0,
        "{metrics:?}"
    );
    assert_eq!(
        counter(&metrics, "aurora_pool.instances.down", Some("instance-1")),
        1,
        "{metrics:?}"
    );
    let durations = samples(&metrics, "aurora_pool.failover.duration");
    assert_eq!(
        durations.len(),
        1,
        "one failover, one duration: {metrics:?}"
    );
    assert!(durations[0] > 0.0 && durations[0] < 15.0, "{durations:?}");
    let detections = samples(&metrics, "aurora_pool.instance.detection_time");
    assert_eq!(
        detections.len(),
        2,
        "instance-1 and instance-3: {metrics:?}"
    );
    pool.close().await;
}

/// The value of gauge `name` of `instance`.
fn instance_gauge(metrics: &[Metric], name: &str, instance: &str) -> Option<f64> {
    metrics
        .iter()
        .filter(|(n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == "instance" && v == instance)
        })
        .find_map(|(_, _, value)| match value {
            Value::Gauge(value) => Some(*value),
            _ => None,
        })
}

/// The value of gauge `name` of the pool named `pool` (and `state`, when given).
fn gauge(metrics: &[Metric], name: &str, pool: &str, state: Option<&str>) -> Option<f64> {
    metrics
        .iter()
        .filter(|(n, labels, _)| {
            let has = |key: &str, value: &str| labels.iter().any(|(k, v)| k == key && v == value);
            n == name
                && has("db.client.connection.pool.name", pool)
                && state.is_none_or(|state| has("db.client.connection.state", state))
        })
        .find_map(|(_, _, value)| match value {
            Value::Gauge(value) => Some(*value),
            _ => None,
        })
}

/// The pools' connection metrics, under OpenTelemetry's names, with default settings: each
/// pool's most connections and its idle and used ones (sampled every second), each
/// checkout's wait, labelled with the pool that served it; and, on a pool tuned to wait
/// 1 s for a writer, a checkout that found none counted as a timeout.
async fn pool_connections_are_measured<F: Flavour>(test: &str) {
    snapshotter();
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: F = connect(&cluster, test, "").await;
    let cluster_id = pool.config().cluster_id.clone();
    let writer_pool = format!("{cluster_id}/instance-1");
    let checkouts = 5;
    let mut held: Vec<_> = Vec::new();
    for _ in 0..checkouts {
        assert_eq!(
            pool.instance_id(Role::Writer).await.expect("write"),
            "instance-1"
        );
    }
    held.push(pool.hold(Role::Writer).await.expect("held"));
    let max = f64::from(pool.config().writer.max_connections);
    let sampled = eventually(Duration::from_secs(5), || async {
        let metrics = metrics_of(&cluster_id);
        gauge(&metrics, "db.client.connection.max", &writer_pool, None) == Some(max)
            && gauge(
                &metrics,
                "db.client.connection.count",
                &writer_pool,
                Some("used"),
            )
            .is_some_and(|used| used >= 1.0)
            && gauge(
                &metrics,
                "db.client.connection.count",
                &writer_pool,
                Some("idle"),
            )
            .is_some()
            && gauge(
                &metrics,
                "db.client.connection.max",
                &format!("{cluster_id}/reads"),
                None,
            )
            .is_some()
    })
    .await;
    assert!(sampled, "no pool gauges: {:?}", metrics_of(&cluster_id));
    let metrics = metrics_of(&cluster_id);
    let waits = pool_samples(&metrics, "db.client.connection.wait_time", &writer_pool);
    assert!(
        waits.len() > checkouts,
        "{} waits for {} checkouts: {metrics:?}",
        waits.len(),
        checkouts + 1
    );
    // How long `run` and `transaction` held their connections: one sample per call, each
    // at least the 50 ms the work sleeps.
    let sleeping = "SELECT pg_catalog.pg_sleep(0.05)::text";
    for _ in 0..2 {
        pool.run_text(Role::Writer, sleeping).await.expect("run");
        pool.transaction_text(sleeping).await.expect("transaction");
    }
    let used = eventually(Duration::from_secs(5), || async {
        let used = pool_samples(
            &metrics_of(&cluster_id),
            "db.client.connection.use_time",
            &writer_pool,
        );
        used.iter().filter(|took| **took >= 0.05).count() >= 4
    })
    .await;
    assert!(
        used,
        "no use times of run and transaction: {:?}",
        metrics_of(&cluster_id)
    );
    // The deadpool flavour times every new connection (the sqlx flavour has no hook before
    // sqlx's connects: see the README): the pool opened at least one to the writer.
    if test.starts_with("deadpool-") {
        let created = pool_samples(&metrics, "db.client.connection.create_time", &writer_pool);
        assert!(
            !created.is_empty() && created.iter().all(|took| *took > 0.0 && *took < 10.0),
            "create times of the writer's connections: {created:?}"
        );
    }

    // A checkout that waits: every writer connection is held.
    while held.len() < pool.config().writer.max_connections as usize {
        held.push(pool.hold(Role::Writer).await.expect("held"));
    }
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.instance_id(Role::Writer).await })
    };
    let writer_role_pool = format!("{cluster_id}/writer");
    let pending = eventually(Duration::from_secs(5), || async {
        gauge(
            &metrics_of(&cluster_id),
            "db.client.connection.pending_requests",
            &writer_role_pool,
            None,
        ) == Some(1.0)
    })
    .await;
    assert!(pending, "no pending request: {:?}", metrics_of(&cluster_id));
    drop(held);
    waiting.await.expect("join").expect("the waiting checkout");

    // Tuned, in addition: a pool that waits 1 s for a writer, the writer crashed, no
    // promotion.
    let impatient: F = connect(
        &cluster,
        &format!("{test}-impatient"),
        "&failover_timeout_ms=1000",
    )
    .await;
    let impatient_id = impatient.config().cluster_id.clone();
    cluster.crash("instance-1").await.expect("crash");
    let err = impatient
        .instance_id(Role::Writer)
        .await
        .expect_err("no writer");
    assert!(err.is_failover_failed() || err.is_timeout(), "{err:?}");
    let metrics = metrics_of(&impatient_id);
    assert!(
        counter(&metrics, "db.client.connection.timeouts", None) >= 1,
        "the give-up was not counted: {metrics:?}"
    );
    impatient.close().await;
    pool.close().await;
}

/// A caching provider: gives the password it read last, valid for an hour, and reads
/// `password` (the server's) again only when a login with it is refused.
#[derive(Debug, Clone)]
struct CachedPassword {
    password: Arc<Mutex<String>>,
    cached: Arc<Mutex<String>>,
}

impl CachedPassword {
    fn credentials_of(password: &Mutex<String>) -> Credentials {
        Credentials::new(password.lock().expect("password").clone())
            .valid_for(Duration::from_secs(3600))
    }
}

impl CredentialProvider for CachedPassword {
    fn credentials<'a>(
        &'a self,
        _target: &'a ConnectTarget,
    ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
        let credentials = Self::credentials_of(&self.cached);
        Box::pin(async move { Ok(credentials) })
    }

    fn login_rejected<'a>(
        &'a self,
        _failure: LoginFailure<'a>,
    ) -> BoxFuture<'a, aurora_pool::Result<Option<Credentials>>> {
        let current = self.password.lock().expect("password").clone();
        *self.cached.lock().expect("cached") = current;
        let credentials = Self::credentials_of(&self.cached);
        Box::pin(async move { Ok(Some(credentials)) })
    }
}

/// With default settings: a write whose reply is lost is counted as an unknown outcome; a
/// login refused after the password changed is counted, and so is the renewal that follows.
async fn lost_outcomes_and_refused_logins_are_counted<F: Flavour>(test: &str) {
    snapshotter();
    let cluster = LocalCluster::start(2).await.expect("cluster");
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            "CREATE TABLE metrics_lost (note text); GRANT ALL ON metrics_lost TO PUBLIC;",
        )
        .await
        .expect("create table");
    let password = Arc::new(Mutex::new(cluster.password().to_owned()));
    let provider = CachedPassword {
        password: password.clone(),
        cached: Arc::new(Mutex::new(cluster.password().to_owned())),
    };
    let pool: F = with_provider(&cluster, test, "", provider).await;
    let cluster_id = pool.config().cluster_id.clone();

    let insert = "INSERT INTO metrics_lost VALUES ('once')";
    assert!(cluster.cut_at("instance-1", insert, CutAt::Reply));
    let err = pool
        .run_counted(
            RetryPolicy::new(),
            Role::Writer,
            insert,
            Arc::new(AtomicU32::new(0)),
        )
        .await
        .expect_err("the reply was lost");
    assert!(err.is_outcome_unknown(), "{err:?}");
    let metrics = metrics_of(&cluster_id);
    assert_eq!(
        counter(&metrics, "aurora_pool.outcomes.unknown", None),
        1,
        "{metrics:?}"
    );

    // The password changes on the server (the provider learns it when a login with the one
    // it cached is refused); the pool's connections end.
    let new_password = "metrics-rotated-password";
    cluster
        .psql(
            "instance-1",
            "postgres",
            &format!(
                "ALTER ROLE {} PASSWORD '{new_password}'; SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = '{}';",
                cluster.user(),
                cluster.user()
            ),
        )
        .await
        .expect("new password");
    *password.lock().expect("password") = new_password.to_owned();
    let wrote = eventually(Duration::from_secs(10), || async {
        pool.instance_id(Role::Writer).await.is_ok()
    })
    .await;
    assert!(wrote, "no write after the password changed");
    let metrics = metrics_of(&cluster_id);
    assert!(
        counter(
            &metrics,
            "aurora_pool.credentials.refused",
            Some("instance-1")
        ) >= 1,
        "the refused login was not counted: {metrics:?}"
    );
    assert!(
        counter(
            &metrics,
            "aurora_pool.credentials.renewals",
            Some("instance-1")
        ) >= 1,
        "the renewal was not counted: {metrics:?}"
    );
    pool.close().await;
}

flavour_tests!(
    failovers_and_verdicts_are_counted,
    pool_connections_are_measured,
    lost_outcomes_and_refused_logins_are_counted
);
