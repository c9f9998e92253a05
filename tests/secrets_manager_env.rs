//! `SecretsManagerAuth::new` and the AWS configuration chain: the region from the settings,
//! the secret's ARN or `AWS_REGION`, and the endpoint from the settings or
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
//!
//! The process environment is changed here, so this binary holds a single test and sets
//! the environment before anything else could read it.

mod support;

use std::time::Duration;

use aurora_pool::auth::{ConnectTarget, CredentialProvider};
use aurora_pool::secrets_manager::{SecretsManagerAuth, SecretsManagerSettings};
use aurora_pool::testing::MotoServer;
use aurora_pool::{AuroraPool, AuroraPoolOptions};
use aws_config::{BehaviorVersion, Region};

fn set_env(key: &str, value: &str) {
    // SAFETY: this binary's only test changes the environment between steps that do not
    // run concurrently with anything reading it.
    unsafe { std::env::set_var(key, value) }
}

fn remove_env(key: &str) {
    // SAFETY: as in `set_env`.
    unsafe { std::env::remove_var(key) }
}

#[test]
fn the_aws_configuration_chain_is_used() {
    // No profile, no instance metadata, no ambient endpoint or region: only what is set
    // below.
    for key in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        remove_env(key);
    }
    set_env("AWS_CONFIG_FILE", "/nonexistent/aurora-pool-test/config");
    set_env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/aurora-pool-test/credentials",
    );
    set_env("AWS_EC2_METADATA_DISABLED", "true");
    set_env("AWS_ACCESS_KEY_ID", "test");
    set_env("AWS_SECRET_ACCESS_KEY", "test");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), steps())
            .await
            .expect("test timed out")
    });
}

async fn steps() {
    let moto = MotoServer::start().await.expect("moto server");
    let target = ConnectTarget::new("instance-1.example.internal", 5432, "url_user");

    let admin = aws_sdk_secretsmanager::Client::new(
        &aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(Region::new("us-east-1"))
            .load()
            .await,
    );
    let created = admin
        .create_secret()
        .name("aur/env")
        .secret_string(r#"{"username":"env_user","password":"env-pw"}"#)
        .send()
        .await
        .expect("CreateSecret");
    let arn = created.arn().expect("an ARN").to_owned();
    assert!(
        arn.starts_with("arn:aws:secretsmanager:us-east-1:"),
        "{arn}"
    );

    set_env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto.endpoint());

    // A name, no region anywhere: a configuration error naming secrets_manager_region.
    let err = SecretsManagerAuth::new(SecretsManagerSettings::new("aur/env"))
        .await
        .expect_err("no region");
    assert!(err.is_config(), "{err}");
    assert_eq!(err.parameter(), Some("secrets_manager_region"), "{err}");

    // The ARN's region; the endpoint from AWS_ENDPOINT_URL_SECRETS_MANAGER.
    let auth = SecretsManagerAuth::new(SecretsManagerSettings::new(arn.clone()))
        .await
        .expect("provider");
    let credentials = auth.credentials(&target).await.expect("credentials by ARN");
    assert_eq!(credentials.user(), Some("env_user"));
    assert_eq!(credentials.password(), Some("env-pw"));
    assert_eq!(auth.fetch_count(), 1);

    // The settings' region.
    let mut settings = SecretsManagerSettings::new("aur/env");
    settings.region = Some("us-east-1".to_owned());
    let auth = SecretsManagerAuth::new(settings).await.expect("provider");
    let credentials = auth.credentials(&target).await.expect("credentials");
    assert_eq!(credentials.password(), Some("env-pw"));

    // AWS_REGION.
    set_env("AWS_REGION", "us-east-1");
    let auth = SecretsManagerAuth::new(SecretsManagerSettings::new("aur/env"))
        .await
        .expect("provider");
    let credentials = auth.credentials(&target).await.expect("credentials");
    assert_eq!(credentials.password(), Some("env-pw"));

    // The settings' endpoint wins over the environment's.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    set_env(
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        &format!("http://{dead}"),
    );
    let auth = SecretsManagerAuth::new(SecretsManagerSettings::new("aur/env"))
        .await
        .expect("provider");
    let err = auth
        .credentials(&target)
        .await
        .expect_err("the environment's endpoint is dead");
    assert!(err.is_credentials(), "{err}");
    let mut settings = SecretsManagerSettings::new("aur/env");
    settings.endpoint = Some(moto.endpoint());
    let auth = SecretsManagerAuth::new(settings).await.expect("provider");
    let credentials = auth.credentials(&target).await.expect("credentials");
    assert_eq!(credentials.password(), Some("env-pw"));

    // A malformed endpoint is refused before anything is fetched.
    let mut settings = SecretsManagerSettings::new("aur/env");
    settings.endpoint = Some("127.0.0.1:5000".to_owned());
    let err = SecretsManagerAuth::new(settings)
        .await
        .expect_err("bad endpoint");
    assert_eq!(err.parameter(), Some("secrets_manager_endpoint"), "{err}");

    pool_from_a_url(&moto, &admin).await;
    iam_signs_with_the_default_chain().await;
    pools_use_the_applications_sdk_config(&moto, &admin).await;
}

/// With no region, credentials or endpoint in the environment, a pool given the
/// application's `SdkConfig` (`AuroraPoolOptions::sdk_config`) fetches its secret with it.
async fn pools_use_the_applications_sdk_config(
    moto: &MotoServer,
    admin: &aws_sdk_secretsmanager::Client,
) {
    for key in [
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    ] {
        remove_env(key);
    }
    let sdk_config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(aws_credential_types::Credentials::new(
            "app-key-id",
            "app-secret",
            None,
            None,
            "the application's",
        ))
        .load()
        .await;
    let cluster = support::tls_cluster(1).await;
    let ca = cluster.ca_cert_path().expect("CA").display().to_string();
    support::secrets::create_secret(admin, "orders/sdk", &cluster).await;
    let url = format!(
        "postgres://{}/{}?instance_endpoints={}&cluster_id=sm-sdk-{}\
         &secrets_manager_secret_id=orders/sdk&sslrootcert={ca}",
        cluster.cluster_endpoint(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        std::process::id(),
    );
    // The environment alone has no region for the secret.
    let err = AuroraPool::connect(&url).await.expect_err("no region");
    assert_eq!(err.parameter(), Some("secrets_manager_region"), "{err:#}");
    let pool = AuroraPoolOptions::new()
        .sdk_config(sdk_config.clone())
        .connect(&url)
        .await
        .expect("connect with the application's SdkConfig");
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool.writer())
        .await
        .expect("writer");
    assert_eq!(user, cluster.user());
    pool.close().await;
}

/// `auth=iam` without explicit credentials signs with the AWS configuration chain (here the
/// environment's access key).
async fn iam_signs_with_the_default_chain() {
    use aurora_pool::iam::{IamAuth, IamSettings};
    let iam = IamAuth::new(
        IamSettings::new(),
        "orders.cluster-abc123.eu-west-1.rds.amazonaws.com",
    )
    .expect("provider");
    let target = ConnectTarget::new(
        "instance-1.abc123.eu-west-1.rds.amazonaws.com",
        5432,
        "app_iam",
    );
    let token = iam.credentials(&target).await.expect("a token");
    let token = token.password().expect("the token");
    assert!(
        token.starts_with(
            "instance-1.abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_iam&"
        ),
        "{token}"
    );
    assert!(
        token.contains("X-Amz-Credential=test%2F"),
        "signed with AWS_ACCESS_KEY_ID"
    );
    assert!(
        token.contains("%2Feu-west-1%2Frds-db%2Faws4_request"),
        "region from the host"
    );
}

/// `AuroraPool::connect` with nothing but URL parameters: the user and password come from
/// the secret, the AWS credentials from the environment, and they go only to a server the
/// handshake verified (`verify-full` unless told otherwise).
async fn pool_from_a_url(moto: &MotoServer, admin: &aws_sdk_secretsmanager::Client) {
    let cluster = support::tls_cluster(2).await;
    let ca = cluster.ca_cert_path().expect("CA").display().to_string();
    support::secrets::create_secret(admin, "orders/db", &cluster).await;
    let url = |secret: &str| {
        format!(
            "postgres://{}/{}?instance_endpoints={}&cluster_id=sm-url-{secret}-{}\
             &secrets_manager_secret_id={secret}&secrets_manager_endpoint={}\
             &secrets_manager_region=us-east-1",
            cluster.cluster_endpoint(),
            cluster.database(),
            cluster.instance_endpoints_param(),
            std::process::id(),
            moto.endpoint(),
        )
    };
    // The defaults: verify-full against the Mozilla roots, which did not sign the
    // cluster's certificate; the password is never sent.
    let err = AuroraPool::connect(&url("orders/db"))
        .await
        .expect_err("an unverifiable server gets no password");
    assert!(err.is_certificate_refused(), "{err:?}");
    assert!(
        format!("{err:#}").contains("127.0.0.1"),
        "names the host: {err}"
    );
    // A mode that does not verify is refused before anything is fetched or sent...
    let err = AuroraPool::connect(&format!("{}&sslmode=require", url("orders/db")))
        .await
        .expect_err("require does not verify the server");
    assert_eq!(err.parameter(), Some("sslmode"), "{err}");
    assert!(
        format!("{err:#}").contains("allow_unverified_server"),
        "{err}"
    );
    // ... unless the opt-out says so.
    let pool = AuroraPool::connect(&format!(
        "{}&sslmode=require&allow_unverified_server=true",
        url("orders/db")
    ))
    .await
    .expect("connect with the opt-out");
    pool.close().await;
    // The CA bundle (here the cluster's own CA) is all production needs.
    let pool = AuroraPool::connect(&format!("{}&sslrootcert={ca}", url("orders/db")))
        .await
        .expect("connect");
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool.writer())
        .await
        .expect("writer");
    assert_eq!(user, cluster.user());
    sqlx::query("SELECT 1")
        .execute(&pool.reader())
        .await
        .expect("reader");
    pool.close().await;

    // A secret without a password: an error naming the key, before any login.
    admin
        .create_secret()
        .name("orders/half")
        .secret_string(r#"{"username":"app","pass":"half-secret-value"}"#)
        .send()
        .await
        .expect("CreateSecret");
    let err = AuroraPool::connect(&format!("{}&sslrootcert={ca}", url("orders/half")))
        .await
        .expect_err("no password in the secret");
    assert!(err.is_credentials(), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("`password`"), "{shown}");
    assert!(!shown.contains("half-secret-value"), "{shown}");
}
