//! `sslmode` as libpq means it, in both flavours, against a `LocalCluster` serving TLS with
//! a CA of its own: `require` alone encrypts without checking the certificate, and
//! `require` with `sslrootcert` checks the chain like `verify-ca`, so a CA that did not sign
//! the server's certificate is refused.

mod support;

use std::path::{Path, PathBuf};

use aurora_pool::testing::LocalCluster;
use support::flavour::{Flavour, flavour_tests};

/// A throwaway CA that signed nothing the cluster serves, made with `openssl`.
fn another_ca(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "aurora-pool-other-ca-{test}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let (key, cert) = (dir.join("ca.key"), dir.join("ca.pem"));
    let made = std::process::Command::new(
        std::env::var("AURORA_POOL_OPENSSL").unwrap_or_else(|_| "openssl".into()),
    )
    .args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=another CA",
        "-keyout",
    ])
    .arg(&key)
    .arg("-out")
    .arg(&cert)
    .output()
    .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    cert
}

fn with_ca(mode: &str, ca: Option<&Path>) -> String {
    match ca {
        Some(ca) => format!("sslmode={mode}&sslrootcert={}", ca.display()),
        None => format!("sslmode={mode}"),
    }
}

async fn require_with_a_root_certificate_verifies_the_chain<F: Flavour>(test: &str) {
    let cluster = LocalCluster::builder()
        .instances(2)
        .tls(true)
        .start()
        .await
        .expect("TLS cluster");
    let own_ca = cluster
        .ca_cert_path()
        .expect("a TLS cluster has a CA")
        .to_owned();
    let other_ca = another_ca(test);
    let connect = |params: String| {
        let config =
            support::flavour::config(&cluster, &format!("{test}-{}", params.len()), &params);
        async move { F::connect_with(config).await }
    };

    // `require` alone: encrypted, nothing checked (as libpq).
    let pool = connect(with_ca("require", None)).await.expect("require");
    pool.execute("SELECT 1").await.expect("a query");
    pool.close().await;
    // `require` with the cluster's CA: verified, connects.
    let pool = connect(with_ca("require", Some(&own_ca)))
        .await
        .expect("require with the right CA");
    pool.execute("SELECT 1").await.expect("a query");
    pool.close().await;
    // `require` with a CA that did not sign the certificate: refused, as `verify-ca` is.
    let err = connect(with_ca("require", Some(&other_ca)))
        .await
        .map(|_| ())
        .expect_err("require with another CA must not connect");
    eprintln!("{test}: require with another CA: {err}");
    assert!(err.is_connect() || err.is_topology(), "{err:?}");
    // The refusal says why: the certificate's issuer is not a trusted CA.
    let shown = err.to_string().to_lowercase();
    assert!(
        shown.contains("issuer") || shown.contains("certificate verify failed"),
        "{err}"
    );
    let err = connect(with_ca("verify-ca", Some(&other_ca)))
        .await
        .map(|_| ())
        .expect_err("verify-ca with another CA must not connect");
    assert!(err.is_connect() || err.is_topology(), "{err:?}");
    let _ = std::fs::remove_dir_all(other_ca.parent().expect("dir"));
}

flavour_tests!(require_with_a_root_certificate_verifies_the_chain);
