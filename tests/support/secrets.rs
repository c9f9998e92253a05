//! Pools whose credentials come from Secrets Manager (a real moto server, the real SDK).

use std::sync::Arc;

use aurora_pool::Builder;
use aurora_pool::secrets_manager::{SecretsManagerAuth, SecretsManagerSettings};
use aurora_pool::testing::LocalCluster;
use aws_sdk_secretsmanager::Client;

use super::flavour::Flavour;

/// A secret's JSON, as RDS stores it.
pub fn secret(user: &str, password: &str) -> String {
    serde_json::json!({ "username": user, "password": password, "engine": "postgres" }).to_string()
}

/// Creates secret `name` holding the cluster's user and password.
pub async fn create_secret(aws: &Client, name: &str, cluster: &LocalCluster) {
    aws.create_secret()
        .name(name)
        .secret_string(secret(cluster.user(), cluster.password()))
        .send()
        .await
        .expect("CreateSecret");
}

/// A pool of flavour `F` on `cluster` (a TLS cluster: Secrets Manager passwords go only to
/// a verified server) whose URL names neither user nor password: both come from the secret
/// `settings` names, fetched through `client`. The URL sets only `sslrootcert` (the
/// default `sslmode` is then `verify-full`, as in production with the RDS CA bundle);
/// `params` go after the URL's `cluster_id`. Returns the pool and its provider.
pub async fn pool_on_secret<F: Flavour>(
    cluster: &LocalCluster,
    test: &str,
    settings: SecretsManagerSettings,
    client: Client,
    params: &str,
) -> (F, Arc<SecretsManagerAuth>) {
    let provider = Arc::new(SecretsManagerAuth::with_client(settings, client));
    let ca = cluster
        .ca_cert_path()
        .expect("Secrets Manager pools verify the server: start the cluster with tls(true)");
    let url = format!(
        "postgres://nobody@{}/{}?instance_endpoints={}&cluster_id={}&sslrootcert={}{params}",
        cluster.cluster_endpoint(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        super::unique_cluster_id(test),
        ca.display(),
    );
    let config = Builder::new()
        .url(url)
        .credential_provider(provider.clone())
        .build()
        .expect("config");
    (F::connect_with(config).await.expect("connect"), provider)
}

/// Changes the login role's password on the database (replicated to the replicas).
pub async fn alter_password(cluster: &LocalCluster, password: &str) {
    let user = cluster.user().to_owned();
    cluster
        .psql(
            "instance-1",
            "postgres",
            &format!("ALTER ROLE \"{user}\" PASSWORD '{password}'"),
        )
        .await
        .expect("alter role");
}
