//! `sslmode` as libpq means it (the README's table), in both flavours, against a
//! `LocalCluster` serving TLS with a CA of its own: which modes encrypt, which fall back,
//! which check the chain, the name and the dates, and what a refusal says.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::flavour::{Flavour, flavour_tests};

/// Whether the session serving the query is encrypted.
const ENCRYPTED: &str =
    "SELECT ssl::text FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()";

fn openssl() -> std::process::Command {
    std::process::Command::new(
        std::env::var("AURORA_POOL_OPENSSL").unwrap_or_else(|_| "openssl".into()),
    )
}

fn run(mut command: std::process::Command) {
    let done = command.output().expect("openssl");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// A throwaway CA that signed nothing the cluster serves.
fn another_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("other-ca.key"), dir.join("other-ca.pem"));
    let mut command = openssl();
    command
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    run(command);
    cert
}

/// Makes every instance serve a new certificate from the cluster's own CA, for `names`
/// (an openssl `subjectAltName`) and valid for `days` from now (negative: expired), and
/// waits until new sessions get it.
async fn serve_certificate(cluster: &LocalCluster, dir: &Path, names: &str, days: i32) {
    let tls = cluster.ca_cert_path().expect("CA").parent().expect("dir");
    let (ca_cert, ca_key) = (tls.join("ca.crt"), tls.join("ca.key"));
    let (server_key, server_cert) = (tls.join("server.key"), tls.join("server.crt"));
    let (csr, ext, cert) = (
        dir.join("server.csr"),
        dir.join("ext.cnf"),
        dir.join("server.pem"),
    );
    std::fs::write(&ext, format!("subjectAltName = {names}\n")).expect("ext");
    let mut command = openssl();
    command
        .args(["req", "-new", "-subj", "/CN=test", "-key"])
        .arg(&server_key)
        .arg("-out")
        .arg(&csr);
    run(command);
    let mut command = openssl();
    command
        .args(["x509", "-req", "-sha256", "-days", &days.to_string()])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_cert)
        .arg("-CAkey")
        .arg(&ca_key)
        .args(["-set_serial", &format!("{}", 1000 + days.unsigned_abs())])
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert);
    run(command);
    // Replaced in place: the file keeps the owner and mode the server needs.
    std::fs::write(&server_cert, std::fs::read(&cert).expect("cert")).expect("install");
    reload(cluster).await;
}

/// Has every instance read its files again (PostgreSQL >= 10 reloads its certificate on
/// SIGHUP), and gives the postmasters a moment.
async fn reload(cluster: &LocalCluster) {
    for id in cluster.instance_ids() {
        cluster
            .psql(&id, "postgres", "SELECT pg_catalog.pg_reload_conf()")
            .await
            .expect("reload");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Lets the client role log in without TLS too (a `host` line beside the `hostssl` one).
async fn accept_plain_logins(cluster: &LocalCluster) {
    for id in cluster.instance_ids() {
        let hba = cluster
            .psql(&id, "postgres", "SHOW hba_file")
            .await
            .expect("hba_file");
        let mut lines = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        lines.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(&hba, lines).expect("write pg_hba.conf");
    }
    reload(cluster).await;
}

struct Modes<'a> {
    cluster: &'a LocalCluster,
    test: &'a str,
    made: AtomicUsize,
}

impl Modes<'_> {
    /// A pool with `params` (each on a cluster id of its own: a monitor connects the way
    /// the pool that started it does).
    async fn connect<F: Flavour>(&self, params: &str) -> aurora_pool::Result<F> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", self.test);
        F::connect_with(support::flavour::config(self.cluster, &name, params)).await
    }

    /// Whether a pool with `params` connects over TLS, through a checkout and through the
    /// kept writer handle; closes the pool.
    async fn encrypted<F: Flavour>(&self, params: &str) -> bool {
        let pool: F = self
            .connect(params)
            .await
            .unwrap_or_else(|err| panic!("{params}: {err:?}"));
        let checkout = pool
            .query_text(Role::Writer, ENCRYPTED)
            .await
            .unwrap_or_else(|err| panic!("{params}: {err:?}"));
        let handle = pool.handle(Role::Writer);
        let kept = F::handle_text(&handle, ENCRYPTED)
            .await
            .unwrap_or_else(|err| panic!("{params}, kept handle: {err}"));
        assert_eq!(checkout, kept, "{params}");
        pool.close().await;
        checkout == "true"
    }

    /// The error of a pool with `params` that must not connect.
    async fn refused<F: Flavour>(&self, params: &str) -> aurora_pool::Error {
        match self.connect::<F>(params).await {
            Ok(pool) => {
                pool.close().await;
                panic!("{params} connected");
            }
            Err(err) => {
                eprintln!("{}: {params}: {err}", self.test);
                err
            }
        }
    }
}

async fn every_sslmode_as_libpq_documents<F: Flavour>(test: &str) {
    let cluster = support::tls_cluster(1).await;
    let dir = std::env::temp_dir().join(format!("aurora-pool-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let own_ca = cluster.ca_cert_path().expect("CA").display().to_string();
    let other_ca = another_ca(&dir).display().to_string();
    let modes = Modes {
        cluster: &cluster,
        test,
        made: AtomicUsize::new(0),
    };

    // The client role may log in over TLS only (`hostssl`).
    let err = modes.refused::<F>("sslmode=disable").await;
    assert!(
        err.is_login_rejected(),
        "disable sends a plain login: {err:?}"
    );
    assert!(
        modes.encrypted::<F>("sslmode=allow").await,
        "allow: the plain login is refused, then TLS"
    );
    // Through the kept writer handle alone (no checkout of the pool's own): the first
    // refusal may reach it (sqlx flavour), the pool then connects over TLS.
    let pool: F = modes.connect("sslmode=allow").await.expect("allow");
    let handle = pool.handle(Role::Writer);
    let through_handle = support::eventually(Duration::from_secs(10), || {
        let handle = handle.clone();
        async move {
            F::handle_text(&handle, ENCRYPTED)
                .await
                .is_ok_and(|ssl| ssl == "true")
        }
    })
    .await;
    assert!(through_handle, "allow through a kept handle");
    pool.close().await;
    assert!(modes.encrypted::<F>("sslmode=prefer").await, "prefer");
    assert!(modes.encrypted::<F>("").await, "no sslmode is prefer");
    assert!(
        modes.encrypted::<F>("sslmode=require").await,
        "require checks nothing"
    );
    assert!(
        modes
            .encrypted::<F>(&format!("sslmode=require&sslrootcert={own_ca}"))
            .await
    );
    assert!(
        modes
            .encrypted::<F>(&format!("sslmode=verify-full&sslrootcert={own_ca}"))
            .await
    );
    // The chain: the cluster's CA is neither among the default roots nor another CA.
    for params in [
        "sslmode=verify-ca".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        format!("sslmode=verify-full&sslrootcert={other_ca}"),
        format!("sslmode=require&sslrootcert={other_ca}"),
    ] {
        let err = modes.refused::<F>(&params).await;
        assert!(err.is_certificate_refused(), "{params}: {err:?}");
        let shown = format!("{err:#}").to_lowercase();
        assert!(shown.contains("127.0.0.1"), "names the host: {shown}");
        assert!(
            shown.contains("issuer") || shown.contains("certificate verify failed"),
            "says why: {shown}"
        );
        assert_eq!(
            shown.contains("no sslrootcert is set"),
            !params.contains("sslrootcert"),
            "points at sslrootcert when none is set: {shown}"
        );
    }

    // Plain logins accepted too: `allow` stays plain, `prefer` takes TLS.
    accept_plain_logins(&cluster).await;
    assert!(!modes.encrypted::<F>("sslmode=disable").await, "disable");
    assert!(
        !modes.encrypted::<F>("sslmode=allow").await,
        "allow tries plain first"
    );
    assert!(modes.encrypted::<F>("sslmode=prefer").await, "prefer");

    // A certificate for another name: verify-full refuses it, verify-ca does not look.
    serve_certificate(&cluster, &dir, "DNS:elsewhere.example", 2).await;
    let err = modes
        .refused::<F>(&format!("sslmode=verify-full&sslrootcert={own_ca}"))
        .await;
    assert!(err.is_certificate_refused(), "{err:?}");
    let shown = format!("{err:#}").to_lowercase();
    assert!(shown.contains("127.0.0.1"), "names the host: {shown}");
    assert!(
        shown.contains("name") || shown.contains("mismatch"),
        "says why: {shown}"
    );
    assert!(
        modes
            .encrypted::<F>(&format!("sslmode=verify-ca&sslrootcert={own_ca}"))
            .await,
        "verify-ca does not check the name"
    );

    // A certificate that expires under a running pool: its next new connection is refused
    // at once (no retry until failover_timeout), naming the instance and the reason.
    let pool: F = modes
        .connect(&format!(
            "sslmode=verify-ca&sslrootcert={own_ca}&writer_max_connections=1"
        ))
        .await
        .expect("verify-ca");
    pool.fresh_login(Role::Writer).await.expect("a login");
    serve_certificate(&cluster, &dir, "IP:127.0.0.1", -1).await;
    let started = std::time::Instant::now();
    let err = pool
        .fresh_login(Role::Writer)
        .await
        .expect_err("an expired certificate");
    assert!(err.is_certificate_refused(), "{err:?}");
    let shown = format!("{err:#}").to_lowercase();
    assert!(shown.contains("instance-1"), "names the instance: {shown}");
    assert!(shown.contains("expired"), "says why: {shown}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not retried as a failover: {:?}",
        started.elapsed()
    );
    pool.close().await;

    // An expired certificate: refused by the modes that verify, not by require.
    let err = modes
        .refused::<F>(&format!("sslmode=verify-ca&sslrootcert={own_ca}"))
        .await;
    assert!(err.is_certificate_refused(), "{err:?}");
    let shown = format!("{err:#}").to_lowercase();
    assert!(shown.contains("expired"), "says why: {shown}");
    assert!(
        modes.encrypted::<F>("sslmode=require").await,
        "require checks nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

flavour_tests!(every_sslmode_as_libpq_documents);

/// The sqlx flavour checks a certificate against the address it connects to: with
/// `hostaddr`, `verify-full` could not check the URL's host as libpq does, so it is refused
/// before any connection (the deadpool flavour checks the host; see `src/deadpool/tls.rs`).
#[tokio::test]
async fn sqlx_refuses_hostaddr_with_verify_full() {
    let err = aurora_pool::AuroraPool::connect(
        "postgres://app:pw@db.cluster-abc123.us-east-1.rds.amazonaws.com/app?hostaddr=127.0.0.1&sslmode=verify-full",
    )
    .await
    .map(|_| ())
    .expect_err("refused");
    assert_eq!(err.parameter(), Some("hostaddr"), "{err}");
}
