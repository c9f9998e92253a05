//! The `PG*` environment never weakens TLS and never redirects connections (#24, items 2
//! and 3), both flavours: `PGSSLMODE=verify-full` holds with a URL that says nothing (or
//! less), `PGSSLROOTCERT` is the CA it verifies with, a `connect_options` hook asking for
//! `verify-full` is not overwritten, and `PGHOSTADDR` is refused by name (the sqlx flavour,
//! where sqlx would apply it to every instance) or ignored (the deadpool flavour).
//!
//! One test in a binary of its own: the environment belongs to the process.

mod support;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::flavour::{Flavour, config};

const ENCRYPTED: &str =
    "SELECT ssl::text FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()";

fn set(name: &str, value: Option<&str>) {
    // SAFETY: this binary's only test sets the environment between its steps, while no
    // other thread reads it (pools are connected after the change and closed before the next).
    unsafe {
        match value {
            Some(value) => std::env::set_var(name, value),
            None => std::env::remove_var(name),
        }
    }
}

async fn refused<F: Flavour>(
    cluster: &LocalCluster,
    name: &str,
    params: &str,
) -> aurora_pool::Error {
    match F::connect_with(config(cluster, name, params)).await {
        Ok(pool) => {
            pool.close().await;
            panic!("{name}: {params:?} connected");
        }
        Err(err) => err,
    }
}

async fn encrypted<F: Flavour>(cluster: &LocalCluster, name: &str, params: &str) -> bool {
    let pool = F::connect_with(config(cluster, name, params))
        .await
        .unwrap_or_else(|err| panic!("{name}: {err:?}"));
    let ssl = pool.query_text(Role::Writer, ENCRYPTED).await.expect("ssl");
    pool.close().await;
    ssl == "true"
}

async fn the_environment_is_a_source_of_tls<F: Flavour>(cluster: &LocalCluster, flavour: &str) {
    let ca = cluster.ca_cert_path().expect("CA").display().to_string();
    set("PGSSLMODE", Some("verify-full"));
    // The cluster's CA is not among the default roots: verify-full refuses it, whatever the
    // URL says less.
    for params in ["", "sslmode=prefer", "sslmode=require"] {
        let err = refused::<F>(cluster, &format!("{flavour}-env-{params}"), params).await;
        assert!(err.is_certificate_refused(), "{params:?}: {err:?}");
    }
    // PGSSLROOTCERT is the CA verify-full checks with.
    set("PGSSLROOTCERT", Some(&ca));
    assert!(encrypted::<F>(cluster, &format!("{flavour}-env-ca"), "").await);
    set("PGSSLROOTCERT", None);
    set("PGSSLMODE", None);
    // Without the environment, the URL alone decides (prefer: encrypted, unverified).
    assert!(encrypted::<F>(cluster, &format!("{flavour}-no-env"), "").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_never_weakens_tls_nor_redirects() {
    for name in ["PGSSLMODE", "PGSSLROOTCERT", "PGHOSTADDR"] {
        set(name, None);
    }
    let cluster = support::tls_cluster(1).await;
    the_environment_is_a_source_of_tls::<aurora_pool::AuroraPool>(&cluster, "sqlx").await;
    the_environment_is_a_source_of_tls::<aurora_pool::deadpool::AuroraPool>(&cluster, "deadpool")
        .await;

    // An invalid value is refused by name when the configuration is read.
    set("PGSSLMODE", Some("verify-everything"));
    let err = aurora_pool::Config::from_url(&support::url_with(&cluster, "cluster_id=bad-env"))
        .expect_err("an invalid PGSSLMODE");
    assert_eq!(err.parameter(), Some("PGSSLMODE"), "{err:?}");
    set("PGSSLMODE", None);

    // A hook asking for verify-full is one more source: not overwritten by the URL's mode.
    let err = aurora_pool::AuroraPoolOptions::new()
        .connect_options(|options| options.ssl_mode(sqlx::postgres::PgSslMode::VerifyFull))
        .connect_with(config(&cluster, "sqlx-hook", ""))
        .await
        .expect_err("the hook's verify-full");
    assert!(err.is_certificate_refused(), "{err:?}");

    // PGHOSTADDR would send every instance's connections to one address.
    set("PGHOSTADDR", Some("127.0.0.9"));
    let err = refused::<aurora_pool::AuroraPool>(&cluster, "sqlx-hostaddr", "").await;
    assert_eq!(err.parameter(), Some("PGHOSTADDR"), "{err:?}");
    assert!(
        encrypted::<aurora_pool::deadpool::AuroraPool>(&cluster, "deadpool-hostaddr", "").await,
        "tokio-postgres reads no environment"
    );
    set("PGHOSTADDR", None);
}
