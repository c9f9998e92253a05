//! `SecretsManagerAuth` against a real moto server through the real AWS SDK client: caching,
//! single-flight fetches, rotation, refused logins and errors that keep secrets out.

#[cfg(feature = "metrics")]
#[path = "support/recorder.rs"]
mod recorder;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_pool::auth::{ConnectTarget, CredentialProvider, Credentials, LoginFailure};
use aurora_pool::secrets_manager::{SecretsManagerAuth, SecretsManagerSettings};
use aurora_pool::testing::MotoServer;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_secretsmanager::primitives::Blob;

/// Every test finishes within this, or fails.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

async fn create_secret(client: &Client, name: &str, json: &str) {
    client
        .create_secret()
        .name(name)
        .secret_string(json)
        .send()
        .await
        .expect("CreateSecret");
}

async fn put_secret(client: &Client, name: &str, json: &str) {
    client
        .put_secret_value()
        .secret_id(name)
        .secret_string(json)
        .send()
        .await
        .expect("PutSecretValue");
}

fn target() -> ConnectTarget {
    ConnectTarget::new("instance-1.example.internal", 5432, "url_user")
}

/// A moto server, a client and a provider for a new secret holding `json`.
async fn setup(
    name: &str,
    json: &str,
    settings: impl FnOnce(SecretsManagerSettings) -> SecretsManagerSettings,
) -> (MotoServer, Client, Arc<SecretsManagerAuth>) {
    let moto = MotoServer::start().await.expect("moto server");
    let client = moto.secrets_manager_client().await;
    create_secret(&client, name, json).await;
    let auth = SecretsManagerAuth::with_client(
        settings(SecretsManagerSettings::new(name)),
        client.clone(),
    );
    (moto, client, Arc::new(auth))
}

fn password(credentials: &Credentials) -> &str {
    credentials.password().expect("a password")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_and_caches_the_secret() {
    bounded(async {
        let (_moto, _client, auth) = setup(
            "aur/app",
            r#"{"username":"app","password":"first-pw","engine":"postgres"}"#,
            |s| s,
        )
        .await;
        let fresh = auth.credentials(&target()).await.expect("credentials");
        assert_eq!(fresh.user(), Some("app"));
        assert_eq!(password(&fresh), "first-pw");
        assert!(!fresh.is_from_cache());
        assert_eq!(fresh.lifetime(), Some(Duration::from_secs(870)));
        assert_eq!(auth.fetch_count(), 1);

        let cached = auth.credentials(&target()).await.expect("credentials");
        assert_eq!(
            (cached.user(), password(&cached)),
            (Some("app"), "first-pw")
        );
        assert!(cached.is_from_cache());
        let remaining = cached.lifetime().expect("a lifetime");
        assert!(
            remaining <= Duration::from_secs(870) && remaining > Duration::from_secs(860),
            "{remaining:?}"
        );
        assert_eq!(auth.fetch_count(), 1);
        let shown = format!("{auth:?} {fresh:?} {cached:?}");
        assert!(!shown.contains("first-pw"), "{shown}");
    })
    .await;
}

/// Secrets Manager goes away after the first fetch and the cached secret expires: new
/// connections keep getting the secret they had (the database did not change), marked as
/// cached so that a refused login still fetches anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_secret_is_served_while_the_service_is_down() {
    bounded(async {
        let (moto, _client, auth) = setup(
            "aur/outage",
            r#"{"username":"app","password":"kept-pw"}"#,
            |mut s| {
                s.expiration = Duration::from_millis(300);
                s
            },
        )
        .await;
        #[cfg(feature = "metrics")]
        recorder::snapshotter();
        auth.credentials(&target()).await.expect("first fetch");
        drop(moto);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kept = auth
            .credentials(&target())
            .await
            .expect("the secret fetched before, with Secrets Manager down");
        assert_eq!(password(&kept), "kept-pw");
        assert!(kept.is_from_cache());
        assert_eq!(auth.fetch_count(), 2, "the service was asked again first");
        #[cfg(feature = "metrics")]
        assert!(
            recorder::counter_with(
                "aurora_pool.credentials.stale_served",
                &[("provider", "secrets_manager")]
            ) >= 1,
            "the stale secret served was not counted"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_share_one_fetch() {
    bounded(async {
        let (_moto, client, auth) = setup(
            "aur/concurrent",
            r#"{"username":"app","password":"pw-1"}"#,
            |mut s| {
                s.expiration = Duration::from_secs(2);
                s
            },
        )
        .await;
        let connect_all = |auth: Arc<SecretsManagerAuth>| async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..50 {
                let auth = Arc::clone(&auth);
                tasks.spawn(async move { auth.credentials(&target()).await });
            }
            let mut passwords = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let credentials = done.expect("task").expect("credentials");
                passwords.push(password(&credentials).to_owned());
            }
            passwords
        };

        let passwords = connect_all(Arc::clone(&auth)).await;
        assert_eq!(passwords.len(), 50);
        assert!(passwords.iter().all(|p| p == "pw-1"), "{passwords:?}");
        assert_eq!(auth.fetch_count(), 1, "50 connects after a miss: one fetch");

        // After the cached secret expires, the next burst fetches once again.
        put_secret(
            &client,
            "aur/concurrent",
            r#"{"username":"app","password":"pw-2"}"#,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let passwords = connect_all(Arc::clone(&auth)).await;
        assert!(passwords.iter().all(|p| p == "pw-2"), "{passwords:?}");
        assert_eq!(auth.fetch_count(), 2, "one fetch per expiry");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_reaches_refused_logins() {
    bounded(async {
        let (_moto, client, auth) = setup(
            "aur/rotated",
            r#"{"username":"app","password":"old-pw"}"#,
            |s| s,
        )
        .await;
        let target = target();
        auth.credentials(&target).await.expect("credentials");
        let old = auth.credentials(&target).await.expect("credentials");
        assert!(old.is_from_cache());
        assert_eq!(auth.fetch_count(), 1);

        put_secret(
            &client,
            "aur/rotated",
            r#"{"username":"app","password":"new-pw"}"#,
        )
        .await;
        let started = Instant::now();
        let renewed = auth
            .login_rejected(LoginFailure::new(&target, &old, 1, Duration::ZERO))
            .await
            .expect("login_rejected")
            .expect("a cached secret that was refused is fetched again");
        assert_eq!(password(&renewed), "new-pw");
        assert_eq!(renewed.user(), Some("app"));
        assert!(!renewed.is_from_cache());
        assert_eq!(auth.fetch_count(), 2);
        // A retry after refused cached credentials does not wait.
        assert!(started.elapsed() < Duration::from_secs(5));

        // Another connection refused with the old cached credentials gets the new ones
        // without another fetch.
        let again = auth
            .login_rejected(LoginFailure::new(&target, &old, 1, Duration::ZERO))
            .await
            .expect("login_rejected")
            .expect("the secret fetched meanwhile");
        assert_eq!(password(&again), "new-pw");
        assert_eq!(auth.fetch_count(), 2);

        // New connects use the new secret from the cache.
        let next = auth.credentials(&target).await.expect("credentials");
        assert_eq!(password(&next), "new-pw");
        assert!(next.is_from_cache());
        assert_eq!(auth.fetch_count(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refusals_share_one_fetch() {
    bounded(async {
        let (_moto, client, auth) = setup(
            "aur/refusals",
            r#"{"username":"app","password":"old-pw"}"#,
            |s| s,
        )
        .await;
        auth.credentials(&target()).await.expect("credentials");
        let old = auth.credentials(&target()).await.expect("credentials");
        put_secret(
            &client,
            "aur/refusals",
            r#"{"username":"app","password":"new-pw"}"#,
        )
        .await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (auth, old) = (Arc::clone(&auth), old.clone());
            tasks.spawn(async move {
                let target = target();
                auth.login_rejected(LoginFailure::new(&target, &old, 1, Duration::ZERO))
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            let renewed = done
                .expect("task")
                .expect("login_rejected")
                .expect("renewed");
            assert_eq!(password(&renewed), "new-pw");
        }
        assert_eq!(
            auth.fetch_count(),
            2,
            "20 refusals of one rotation: one re-fetch"
        );
    })
    .await;
}

/// 100 logins refused at once with a secret that did not change (a wrong password in the
/// secret, a missing grant) cost one fetch, not 100 serialized ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refusals_of_an_unchanged_secret_cost_one_fetch() {
    bounded(async {
        let (_moto, _client, auth) = setup(
            "aur/unchanged",
            r#"{"username":"app","password":"same-pw"}"#,
            |s| s,
        )
        .await;
        auth.credentials(&target()).await.expect("credentials");
        let cached = auth.credentials(&target()).await.expect("credentials");
        assert!(cached.is_from_cache());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (auth, cached) = (Arc::clone(&auth), cached.clone());
            tasks.spawn(async move {
                let target = target();
                auth.login_rejected(LoginFailure::new(&target, &cached, 1, Duration::ZERO))
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("login_rejected");
        }
        assert_eq!(
            auth.fetch_count(),
            2,
            "100 refusals of an unchanged secret: one re-fetch"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_fresh_secret_without_budget_is_reported() {
    bounded(async {
        let (_moto, _client, auth) = setup(
            "aur/wrong",
            r#"{"username":"app","password":"wrong-pw"}"#,
            |s| s,
        )
        .await;
        let target = target();
        let fresh = auth.credentials(&target).await.expect("credentials");
        assert!(!fresh.is_from_cache());
        let retry = auth
            .login_rejected(LoginFailure::new(&target, &fresh, 1, Duration::ZERO))
            .await
            .expect("login_rejected");
        assert!(retry.is_none(), "{retry:?}");
        assert_eq!(auth.fetch_count(), 1);

        // A cached secret refused, fetched again, and refused again: given up after one
        // re-fetch.
        let cached = auth.credentials(&target).await.expect("credentials");
        let refetched = auth
            .login_rejected(LoginFailure::new(&target, &cached, 1, Duration::ZERO))
            .await
            .expect("login_rejected")
            .expect("one re-fetch");
        assert_eq!(password(&refetched), "wrong-pw");
        assert_eq!(auth.fetch_count(), 2);
        let retry = auth
            .login_rejected(LoginFailure::new(&target, &refetched, 2, Duration::ZERO))
            .await
            .expect("login_rejected");
        assert!(retry.is_none(), "{retry:?}");
        assert_eq!(auth.fetch_count(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_refetches_with_backoff_and_stops() {
    bounded(async {
        let budget = Duration::from_secs(2);
        let (_moto, _client, auth) = setup(
            "aur/budget",
            r#"{"username":"app","password":"not-yet-pw"}"#,
            |mut s| {
                s.connect_retry_timeout = budget;
                s.connect_retry_interval = Duration::from_millis(200);
                s
            },
        )
        .await;
        let target = target();
        // What the pool does: log in, and on every refusal ask for new credentials.
        let started = Instant::now();
        let mut credentials = auth.credentials(&target).await.expect("credentials");
        let mut attempt = 1;
        let mut pauses = Vec::new();
        loop {
            let asked = Instant::now();
            let failure = LoginFailure::new(&target, &credentials, attempt, started.elapsed());
            match auth.login_rejected(failure).await.expect("login_rejected") {
                Some(renewed) => {
                    pauses.push(asked.elapsed());
                    assert_eq!(password(&renewed), "not-yet-pw");
                    assert!(!renewed.is_from_cache());
                    credentials = renewed;
                    attempt += 1;
                }
                None => break,
            }
            assert!(attempt < 20, "login_rejected never gives up");
        }
        let total = started.elapsed();
        // Pauses of 200, 400, 800 ms, then what is left of the 2 s.
        assert!(total >= budget, "{total:?}");
        assert!(total < budget + Duration::from_secs(2), "{total:?}");
        assert!(
            (3..=5).contains(&pauses.len()),
            "{} retries: {pauses:?}",
            pauses.len()
        );
        assert!(pauses[0] >= Duration::from_millis(200), "{pauses:?}");
        assert!(pauses[1] >= Duration::from_millis(400), "{pauses:?}");
        assert_eq!(auth.fetch_count(), 1 + pauses.len() as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_inside_the_budget_is_picked_up() {
    bounded(async {
        let (_moto, client, auth) = setup(
            "aur/window",
            r#"{"username":"app","password":"pending-pw"}"#,
            |mut s| {
                s.connect_retry_timeout = Duration::from_secs(10);
                s.connect_retry_interval = Duration::from_millis(500);
                s
            },
        )
        .await;
        let target = target();
        let fresh = auth.credentials(&target).await.expect("credentials");
        // The secret changes while the provider pauses before re-fetching.
        let rotate = tokio::spawn({
            let client = client.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                put_secret(
                    &client,
                    "aur/window",
                    r#"{"username":"app","password":"final-pw"}"#,
                )
                .await;
            }
        });
        let renewed = auth
            .login_rejected(LoginFailure::new(&target, &fresh, 1, Duration::ZERO))
            .await
            .expect("login_rejected")
            .expect("within the budget");
        rotate.await.expect("rotation");
        assert_eq!(password(&renewed), "final-pw");
        assert_eq!(auth.fetch_count(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_are_errors_without_their_values() {
    bounded(async {
        let moto = MotoServer::start().await.expect("moto server");
        let client = moto.secrets_manager_client().await;
        let leaks = ["db.internal.example", "appdb", "tok-5ecret", "hunter2"];

        create_secret(
            &client,
            "aur/no-password",
            r#"{"username":"app","host":"db.internal.example","dbname":"appdb","api_token":"tok-5ecret"}"#,
        )
        .await;
        let auth =
            SecretsManagerAuth::with_client(SecretsManagerSettings::new("aur/no-password"), client.clone());
        let err = auth.credentials(&target()).await.expect_err("no password key");
        assert!(err.is_credentials(), "{err}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("`password`"), "{shown}");
        assert!(shown.contains("aur/no-password"), "{shown}");
        for leak in leaks {
            assert!(!shown.contains(leak), "{shown}");
        }

        // Custom keys are honoured and named.
        let mut settings = SecretsManagerSettings::new("aur/no-password");
        settings.password_key = "api_token".to_owned();
        settings.username_key = "login".to_owned();
        let auth = SecretsManagerAuth::with_client(settings, client.clone());
        let err = auth.credentials(&target()).await.expect_err("no login key");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("`login`"), "{shown}");
        for leak in leaks {
            assert!(!shown.contains(leak), "{shown}");
        }

        create_secret(&client, "aur/plain", "hunter2").await;
        let auth = SecretsManagerAuth::with_client(SecretsManagerSettings::new("aur/plain"), client.clone());
        let err = auth.credentials(&target()).await.expect_err("not JSON");
        let shown = format!("{err} {err:?}");
        assert!(err.is_credentials() && shown.contains("not valid JSON"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        client
            .create_secret()
            .name("aur/binary")
            .secret_binary(Blob::new(br#"{"username":"app","password":"hunter2"}"#.to_vec()))
            .send()
            .await
            .expect("CreateSecret");
        let auth = SecretsManagerAuth::with_client(SecretsManagerSettings::new("aur/binary"), client.clone());
        let err = auth.credentials(&target()).await.expect_err("binary only");
        let shown = format!("{err} {err:?}");
        assert!(err.is_credentials() && shown.contains("binary"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        // An SDK error names the secret and what AWS said, and keeps the service error.
        let auth = SecretsManagerAuth::with_client(SecretsManagerSettings::new("aur/missing"), client);
        let err = auth.credentials(&target()).await.expect_err("no such secret");
        assert!(err.is_credentials(), "{err}");
        let shown = format!("{err:#}");
        assert!(shown.contains("aur/missing"), "{shown}");
        assert!(shown.contains("ResourceNotFoundException"), "{shown}");
        let service = err
            .source()
            .and_then(|fetch| fetch.source())
            .and_then(|service| service.downcast_ref::<GetSecretValueError>())
            .expect("the service error is kept");
        assert!(service.is_resource_not_found_exception(), "{service:?}");
        assert_eq!(auth.fetch_count(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_credentials_error() {
    bounded(async {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .region(Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "static",
            ))
            .load()
            .await;
        let auth = SecretsManagerAuth::with_client(
            SecretsManagerSettings::new("aur/app"),
            Client::new(&config),
        );
        let err = auth.credentials(&target()).await.expect_err("unreachable");
        assert!(err.is_credentials(), "{err}");
        let shown = format!("{err:#}");
        assert!(
            shown.contains("aur/app") && shown.contains("eu-west-1"),
            "{shown}"
        );
        assert!(shown.contains("dispatch failure"), "{shown}");
    })
    .await;
}
