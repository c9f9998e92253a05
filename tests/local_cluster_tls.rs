//! `testing::LocalCluster` with TLS: every instance (also an old writer rebuilt
//! after a failover) serves a certificate that verifies with `verify-full`
//! against the cluster's CA, and the client role cannot log in without TLS.
#![cfg(all(feature = "sqlx", feature = "testing"))]

use std::str::FromStr;
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn options(cluster: &LocalCluster, id: &str) -> PgConnectOptions {
    let url = cluster.instance_url(id).expect("known instance");
    PgConnectOptions::from_str(&url).expect("instance url")
}

/// Connects, bounded by 10 s.
async fn connect(opts: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(opts))
        .await
        .expect("connecting took more than 10 s")
}

fn verify_full(cluster: &LocalCluster, id: &str) -> PgConnectOptions {
    options(cluster, id)
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(cluster.ca_cert_path().expect("a TLS cluster has a CA"))
}

/// Connects with `sslmode=verify-full` and returns whether the session is
/// encrypted (`pg_stat_ssl.ssl`) and whether the instance is in recovery.
async fn tls_session(cluster: &LocalCluster, id: &str) -> (bool, bool) {
    let mut conn = connect(&verify_full(cluster, id))
        .await
        .unwrap_or_else(|e| panic!("{id}: verify-full connection failed: {e}"));
    let row: (bool, bool) = sqlx::query_as(
        "SELECT ssl, pg_catalog.pg_is_in_recovery() FROM pg_catalog.pg_stat_ssl \
         WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("{id}: {e}"));
    conn.close().await.ok();
    row
}

/// A login without TLS is refused by pg_hba.conf (SQLSTATE 28000).
async fn assert_plain_login_refused(cluster: &LocalCluster, id: &str) {
    let err = connect(&options(cluster, id).ssl_mode(PgSslMode::Disable))
        .await
        .map(|_| ())
        .expect_err("a login without TLS must be refused");
    let db = err
        .as_database_error()
        .unwrap_or_else(|| panic!("{id}: expected a login error from the server, got {err}"));
    assert_eq!(db.code().as_deref(), Some("28000"), "{id}: {db}");
    assert!(
        db.message().contains("no pg_hba.conf entry") && db.message().contains("no encryption"),
        "{id}: {db}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_refuses_plain_logins_and_survives_failover() {
    init_tracing();
    let t = Instant::now();
    let cluster = LocalCluster::builder()
        .instances(2)
        .tls(true)
        .start()
        .await
        .expect("TLS cluster");
    eprintln!("TLS cluster of 2 started in {:?}", t.elapsed());

    let ca = cluster.ca_cert_path().expect("CA path").to_owned();
    let pem = std::fs::read_to_string(&ca).expect("CA readable");
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");

    for id in ["instance-1", "instance-2"] {
        let (ssl, in_recovery) = tls_session(&cluster, id).await;
        assert!(ssl, "{id}: session not encrypted");
        assert_eq!(in_recovery, id == "instance-2", "{id}");
        assert_plain_login_refused(&cluster, id).await;
    }

    // The certificate is really verified: without our CA it is not trusted.
    let err = connect(&options(&cluster, "instance-1").ssl_mode(PgSslMode::VerifyFull))
        .await
        .map(|_| ())
        .expect_err("verify-full without the cluster CA must fail");
    assert!(err.as_database_error().is_none(), "{err}");

    // The superuser tooling (unix socket, trust) is unaffected.
    assert_eq!(
        cluster
            .psql("instance-1", "postgres", "SELECT 1")
            .await
            .unwrap(),
        "1"
    );

    // After a failover the old writer is rebuilt from the new primary and
    // serves the same certificate, with the same pg_hba.conf.
    let t = Instant::now();
    cluster
        .failover("instance-2", Some(Duration::from_millis(200)))
        .await
        .expect("failover");
    cluster
        .wait_rejoined("instance-1")
        .await
        .expect("old writer rejoined");
    eprintln!("failover + rejoin took {:?}", t.elapsed());
    assert_eq!(cluster.writer_id(), "instance-2");
    assert_eq!(tls_session(&cluster, "instance-2").await, (true, false));
    assert_eq!(tls_session(&cluster, "instance-1").await, (true, true));
    assert_plain_login_refused(&cluster, "instance-1").await;
    assert_plain_login_refused(&cluster, "instance-2").await;

    let root = ca
        .parent()
        .and_then(|tls| tls.parent())
        .expect("cluster root")
        .to_owned();
    drop(cluster);
    assert!(!root.exists(), "{} left behind", root.display());
}
