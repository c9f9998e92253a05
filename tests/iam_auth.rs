//! `auth=iam` end to end on a local cluster with TLS. PostgreSQL cannot check an IAM token,
//! but with `iam_host`, `iam_default_port` and a clock the test controls the token is known in
//! advance, so the test makes it the role's password: a login succeeds only with exactly the
//! token AWS would accept at that moment.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aurora_pool::iam::{IamSettings, generate_auth_token};
use aurora_pool::testing::LocalCluster;
use aurora_pool::{Auth, Builder, Role};
use aws_credential_types::Credentials;
use aws_smithy_async::time::{SharedTimeSource, TimeSource};
use support::flavour::{Flavour, flavour_tests};
use support::{eventually, unique_cluster_id};

/// No token (every token carries a signature) and no AWS secret key in the logs.
fn assert_logs_clean() {
    let logs = support::captured_logs();
    assert!(logs.contains("IAM token generated"), "nothing was logged");
    assert!(
        !logs.contains("X-Amz-Signature"),
        "a token reached the logs"
    );
    assert!(
        !logs.contains("aws-secret-key-never-shown"),
        "the AWS secret reached the logs"
    );
}

/// Whether the session runs over TLS.
const TLS_IN_USE: &str = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

const IAM_HOST: &str = "orders.cluster-abc123.us-east-1.rds.amazonaws.com";

#[derive(Debug, Clone)]
struct ManualClock(Arc<AtomicU64>);

impl TimeSource for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

fn aws() -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        "aws-secret-key-never-shown",
        None,
        None,
        "test",
    )
}

/// The token the pool must send at `clock`'s time.
fn token_at(clock: &ManualClock, user: &str) -> String {
    generate_auth_token(IAM_HOST, 5432, user, "us-east-1", &aws(), clock.now()).expect("token")
}

async fn set_password(cluster: &LocalCluster, password: &str) {
    let sql = format!("ALTER ROLE \"{}\" PASSWORD '{password}'", cluster.user());
    cluster
        .psql(&cluster.writer_id(), "postgres", &sql)
        .await
        .expect("alter role");
}

/// A URL without a password; TLS verified against the cluster's CA.
fn iam_url(cluster: &LocalCluster, test: &str, extra: &str) -> String {
    let ca = cluster.ca_cert_path().expect("a TLS cluster");
    format!(
        "postgres://{}@{}/{}?instance_endpoints={}&cluster_id={}&sslmode=verify-full&sslrootcert={}\
         &writer_max_connections=1&failure_detection_time_ms=0&failure_detection_interval_ms=300&cluster_topology_refresh_rate_ms=500{extra}",
        cluster.user(),
        cluster.cluster_endpoint(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        unique_cluster_id(test),
        ca.display(),
    )
}

fn settings(clock: &ManualClock, expiration: Duration) -> IamSettings {
    let mut settings = IamSettings::new().credentials(aws());
    settings.host = Some(IAM_HOST.into());
    settings.region = Some("us-east-1".into());
    settings.default_port = Some(5432);
    settings.expiration = expiration;
    settings.time_source = SharedTimeSource::new(clock.clone());
    settings
}

async fn iam_tokens_log_in_everywhere_and_are_renewed_before_they_expire<F: Flavour>(test: &str) {
    support::capture_logs();
    let cluster = support::tls_cluster(2).await;
    let clock = ManualClock(Arc::new(AtomicU64::new(1_795_317_600)));
    let user = cluster.user().to_owned();
    set_password(&cluster, &token_at(&clock, &user)).await;

    // Tokens are reused for 2 s of the test's clock; the pool renews them on real time.
    let config = Builder::new()
        .url(iam_url(&cluster, test, ""))
        .auth(Auth::Iam(settings(&clock, Duration::from_secs(2))))
        .build()
        .expect("config");
    let pool = F::connect_with(config)
        .await
        .expect("discovery and monitor log in with the token");
    pool.fresh_login(Role::Writer).await.expect("writer login");
    let on_reader = pool
        .query_text(Role::Reader, TLS_IN_USE)
        .await
        .expect("reader login");
    assert_eq!(on_reader, "true", "IAM logins use TLS");
    // A connection kept open, back in the pool idle.
    pool.execute("SELECT 1").await.expect("writer login");

    // AWS moves on: the next token is the only one accepted now.
    clock.0.fetch_add(60, Ordering::SeqCst);
    set_password(&cluster, &token_at(&clock, &user)).await;
    let renewed = eventually(Duration::from_secs(10), || async {
        pool.fresh_login(Role::Writer).await.is_ok()
    })
    .await;
    assert!(
        renewed,
        "new connections never logged in with the renewed token"
    );

    // The monitor reconnects with the current token too.
    let back = support::monitor_logs_in_again(&cluster, &unique_cluster_id(test)).await;
    if !back {
        let logs = support::captured_logs();
        let tail: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("aurora_pool") && !l.contains("aurora_pool::testing"))
            .collect();
        panic!(
            "the monitor did not log in again:\n{}",
            tail[tail.len().saturating_sub(40)..].join("\n")
        );
    }
    pool.close().await;
    assert_logs_clean();
}

async fn a_wrong_token_is_a_login_error_not_an_endless_retry<F: Flavour>(test: &str) {
    support::capture_logs();
    let cluster = support::tls_cluster(1).await;
    let clock = ManualClock(Arc::new(AtomicU64::new(1_795_317_600)));
    let user = cluster.user().to_owned();
    set_password(&cluster, &token_at(&clock, &user)).await;
    let iam = Arc::new(
        aurora_pool::iam::IamAuth::new(settings(&clock, Duration::from_secs(870)), IAM_HOST)
            .expect("provider"),
    );
    let config = Builder::new()
        .url(iam_url(&cluster, test, ""))
        .credential_provider(iam.clone())
        .build()
        .expect("config");
    let pool = F::connect_with(config).await.expect("connect");
    pool.fresh_login(Role::Writer).await.expect("login");
    // The pool's own probe has logged in (probes start at a random point of their first
    // interval): only the checkout's refused login is counted below.
    let probe = format!("aurora-pool-probe:{}", unique_cluster_id(test));
    let probing = support::eventually(Duration::from_secs(10), || async {
        support::connections_named(&cluster, "instance-1", &probe).await >= 1
    })
    .await;
    assert!(probing, "the probe never logged in");

    // The database stops accepting the token (a revoked grant, a wrong policy).
    set_password(&cluster, "not-the-token").await;
    let before = iam.tokens_generated();
    let err = tokio::time::timeout(Duration::from_secs(30), pool.fresh_login(Role::Writer))
        .await
        .expect("the refused login was retried without end")
        .expect_err("the login must fail");
    assert!(err.is_login_rejected(), "{err}");
    assert!(
        !err.is_failover(),
        "a refused login is not a failover: {err}"
    );
    assert!(
        iam.tokens_generated() - before <= 1,
        "the cached token was regenerated {} times; the crate's login events:\n{}",
        iam.tokens_generated() - before,
        support::captured_logs()
            .lines()
            .filter(|l| l.contains("aurora_pool") && (l.contains("login") || l.contains("probe")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let shown = format!("{err} {err:?} {pool:?} {iam:?}");
    assert!(!shown.contains("X-Amz-Signature"), "{shown}");
    assert!(!shown.contains("aws-secret-key-never-shown"), "{shown}");
    pool.close().await;
    assert_logs_clean();
}

#[test]
fn iam_tokens_go_only_to_a_verified_server() {
    let base = "postgres://app@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app?auth=iam";
    let config = |params: &str| aurora_pool::Config::from_url(&format!("{base}{params}"));
    // Without TLS: never, whatever the opt-out says (RDS refuses such logins anyway).
    for mode in ["disable", "allow", "prefer"] {
        for opt_out in ["", "&allow_unverified_server=true"] {
            let err = config(&format!("&sslmode={mode}{opt_out}")).expect_err(mode);
            assert_eq!(err.parameter(), Some("sslmode"), "{err}");
        }
    }
    // TLS that does not verify the server: only with the opt-out, which the error names.
    let err = config("&sslmode=require").expect_err("require");
    assert_eq!(err.parameter(), Some("sslmode"), "{err}");
    assert!(
        format!("{err:#}").contains("allow_unverified_server"),
        "{err}"
    );
    config("&sslmode=require&allow_unverified_server=true").expect("require, opted out");
    // verify-ca checks no name: not enough for a token either.
    let err = config("&sslmode=verify-ca").expect_err("verify-ca");
    assert_eq!(err.parameter(), Some("sslmode"), "{err}");
    config("&sslmode=verify-ca&allow_unverified_server=true").expect("verify-ca, opted out");
    config("&sslmode=verify-full").expect("verify-full");
    // No sslmode: verify-full (nothing to refuse).
    config("").expect("no sslmode");
}

/// Without sslmode, IAM means `verify-full`: a server without TLS is refused.
async fn iam_refuses_to_log_in_without_tls<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let clock = ManualClock(Arc::new(AtomicU64::new(1_795_317_600)));
    let url = format!(
        "postgres://{}@{}/{}?instance_endpoints={}&cluster_id={}&connect_timeout=2",
        cluster.user(),
        cluster.cluster_endpoint(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        unique_cluster_id(test),
    );
    let config = Builder::new()
        .url(url)
        .auth(Auth::Iam(settings(&clock, Duration::from_secs(870))))
        .build()
        .expect("config");
    let err = F::connect_with(config)
        .await
        .expect_err("no TLS, no IAM login");
    assert!(err.is_connect(), "{err:?}");
    let cause = format!("{:?}", std::error::Error::source(&err));
    assert!(
        cause.to_lowercase().contains("tls") || cause.to_lowercase().contains("ssl"),
        "{cause}"
    );
}

flavour_tests!(
    iam_tokens_log_in_everywhere_and_are_renewed_before_they_expire,
    a_wrong_token_is_a_login_error_not_an_endless_retry,
    iam_refuses_to_log_in_without_tls,
);
