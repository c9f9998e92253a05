//! A pool taking its credentials from Secrets Manager (a real moto server, the real AWS SDK)
//! while the password is rotated under load: connections in use keep working, new ones log
//! in with the new password, and no checkout fails once the secret holds it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aurora_pool::Role;
use aurora_pool::secrets_manager::SecretsManagerSettings;
use aurora_pool::testing::MotoServer;
use support::flavour::{Flavour, flavour_tests};
use support::secrets::{alter_password, create_secret, pool_on_secret, secret};
use support::{eventually, unique_cluster_id};

const NEW_PASSWORD: &str = "rotated-Pa55-never-shown";

async fn rotation_under_load_loses_no_checkout_after_the_secret_changes<F: Flavour>(test: &str) {
    let _slot = support::cluster_slot().await;
    support::capture_logs();
    let cluster = support::tls_cluster(3).await;
    let moto = MotoServer::start().await.expect("moto");
    let aws = moto.secrets_manager_client().await;
    create_secret(&aws, "orders/app", &cluster).await;
    let (pool, provider): (F, _) = pool_on_secret(
        &cluster,
        test,
        SecretsManagerSettings::new("orders/app"),
        aws.clone(),
        // Probes of 1 s: on a loaded machine (TLS logins under load) 600 ms probes meet
        // false verdicts, which end the connections held across the rotation.
        "&failure_detection_time_ms=0&failure_detection_interval_ms=500&cluster_topology_refresh_rate_ms=500",
    )
    .await;
    pool.fresh_login(Role::Writer).await.expect("writer");
    pool.fresh_login(Role::Reader).await.expect("reader");
    // Discovery, the monitor, the probes and three instance pools: one GetSecretValue.
    assert_eq!(
        provider.fetch_count(),
        1,
        "concurrent connects share one fetch"
    );

    let mut in_use = pool.hold(Role::Writer).await.expect("a connection in use");

    // Load: every operation logs in anew.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for task in 0..4 {
        let (pool, stop, done) = (pool.clone(), stop.clone(), done.clone());
        load.spawn(async move {
            let role = if task % 2 == 0 {
                Role::Writer
            } else {
                Role::Reader
            };
            let mut outcomes = Vec::new();
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let result = pool.fresh_login(role).await.map(|_| ());
                outcomes.push((started, result.map_err(|err| format!("{err:#}"))));
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotation: the database first, then the secret (the window AWS rotation has too).
    let user = cluster.user().to_owned();
    alter_password(&cluster, NEW_PASSWORD).await;
    // Replicas replay the new password before the secret announces it.
    let hash_sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'");
    let primary_hash = cluster
        .psql("instance-1", "postgres", &hash_sql)
        .await
        .expect("hash");
    for id in cluster.instance_ids() {
        let replayed = eventually(Duration::from_secs(10), || async {
            cluster.psql(&id, "postgres", &hash_sql).await.ok() == Some(primary_hash.clone())
        })
        .await;
        assert!(replayed, "{id} never replayed the new password");
    }
    aws.put_secret_value()
        .secret_id("orders/app")
        .secret_string(secret(&user, NEW_PASSWORD))
        .send()
        .await
        .expect("PutSecretValue");
    let secret_updated = Instant::now();
    // At least 2 s and 40 checkouts of load after the update (bounded: a slow machine).
    let done_at_update = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually(Duration::from_secs(15), || async {
        done.load(Ordering::Relaxed) >= done_at_update + 40
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut after = 0;
    let mut failures_after = Vec::new();
    while let Some(outcomes) = load.join_next().await {
        for (at, result) in outcomes.expect("load task") {
            if at > secret_updated {
                after += 1;
                if let Err(err) = result {
                    failures_after.push(err);
                }
            }
        }
    }
    assert!(after > 20, "too little load after the rotation: {after}");
    assert!(
        failures_after.is_empty(),
        "{} of {after} checkouts failed after the secret was updated: {:?}",
        failures_after.len(),
        &failures_after[..failures_after.len().min(5)]
    );

    // The connection opened with the old password keeps working.
    pool.held_instance_id(&mut in_use)
        .await
        .expect("a connection in use survives the rotation");
    drop(in_use);
    // Once the new secret is known, logins stop fetching it.
    let settled = provider.fetch_count();
    for _ in 0..10 {
        pool.fresh_login(Role::Writer).await.expect("writer");
        pool.fresh_login(Role::Reader).await.expect("reader");
    }
    assert_eq!(
        provider.fetch_count(),
        settled,
        "logins fetched the secret again"
    );

    // The monitor logs in again with the new password.
    let back = support::monitor_logs_in_again(&cluster, &unique_cluster_id(test)).await;
    assert!(back, "the monitor did not log in with the rotated password");

    let shown = format!("{pool:?} {provider:?} {:?}", pool.config());
    assert!(
        !shown.contains(NEW_PASSWORD) && !shown.contains(cluster.password()),
        "{shown}"
    );
    pool.close().await;
    let logs = support::captured_logs();
    assert!(
        logs.contains("secret fetched from Secrets Manager"),
        "nothing logged"
    );
    for secret in [NEW_PASSWORD, cluster.password()] {
        assert!(!logs.contains(secret), "a password reached the logs");
    }
}

/// With `secrets_manager_connect_retry_timeout_ms`, the window between the database's new
/// password and the secret's (the single-user rotation order) is bridged: checkouts that
/// log in anew during it wait, fetch the secret again and succeed. None fails, before,
/// during or after the window.
async fn a_rotation_window_is_bridged<F: Flavour>(test: &str) {
    let _slot = support::cluster_slot().await;
    let cluster = support::tls_cluster(2).await;
    let moto = MotoServer::start().await.expect("moto");
    let aws = moto.secrets_manager_client().await;
    create_secret(&aws, "orders/bridged", &cluster).await;
    let mut settings = SecretsManagerSettings::new("orders/bridged");
    settings.connect_retry_timeout = Duration::from_secs(20);
    settings.connect_retry_interval = Duration::from_millis(200);
    let (pool, _): (F, _) = pool_on_secret(&cluster, test, settings, aws.clone(), "").await;
    pool.fresh_login(Role::Writer).await.expect("writer");

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for role in [Role::Writer, Role::Reader, Role::Writer] {
        let (pool, stop) = (pool.clone(), stop.clone());
        load.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..1_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let result = pool.fresh_login(role).await.map(|_| ());
                outcomes.push((
                    started,
                    Instant::now(),
                    result.map_err(|err| err.to_string()),
                ));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let user = cluster.user().to_owned();
    alter_password(&cluster, NEW_PASSWORD).await;
    let window_opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    aws.put_secret_value()
        .secret_id("orders/bridged")
        .secret_string(secret(&user, NEW_PASSWORD))
        .send()
        .await
        .expect("PutSecretValue");
    let window_closed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut in_window, mut failures) = (0, Vec::new());
    while let Some(outcomes) = load.join_next().await {
        for (started, ended, result) in outcomes.expect("load task") {
            // Logins that met the window: refused with the old secret, then bridged.
            if ended > window_opened && started < window_closed {
                in_window += 1;
            }
            if let Err(err) = result {
                failures.push(err);
            }
        }
    }
    assert!(in_window >= 3, "too few logins met the window: {in_window}");
    assert!(
        failures.is_empty(),
        "{} checkouts failed across the rotation ({in_window} met its window): {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    pool.close().await;
}

flavour_tests!(
    rotation_under_load_loses_no_checkout_after_the_secret_changes,
    a_rotation_window_is_bridged,
);
