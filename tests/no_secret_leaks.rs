//! Passwords never reach `Debug`, `Display`, errors or logs (everything at trace level,
//! sqlx's own events included), across discovery, queries, a failover and a failed login.

mod support;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{Config, Role};
use support::flavour::{Flavour, flavour_tests};

const PASSWORD: &str = "s3cr3t-Pa55-never-shown";

fn assert_clean(what: &str, text: &str) {
    for secret in [PASSWORD, "s3cr3t"] {
        assert!(!text.contains(secret), "{what} shows the password: {text}");
    }
}

async fn no_password_in_debug_errors_or_logs<F: Flavour>(test: &str) {
    support::capture_logs();

    let cluster = LocalCluster::builder()
        .instances(2)
        .password(PASSWORD)
        .start()
        .await
        .expect("cluster");
    let url = support::url_with(
        &cluster,
        &format!(
            "cluster_id={}&{}",
            support::unique_cluster_id(test),
            support::AGGRESSIVE
        ),
    );
    let config = Config::from_url(&url).expect("config");
    assert_clean("Config's Debug", &format!("{config:?}"));
    assert_clean("LocalCluster's Debug", &format!("{cluster:?}"));
    let pool = F::connect_with(config).await.expect("connect");
    assert_clean(
        "AuroraPool's Debug",
        &format!("{pool:?} {:?} {}", pool.status(), pool.topology()),
    );
    pool.run("SELECT 1").await.expect("query");
    pool.instance_id(Role::Reader).await.expect("read");
    // The handed-out pools, after they opened connections with the password.
    let (writer, reader) = (pool.handle(Role::Writer), pool.handle(Role::Reader));
    F::handle_text(&writer, "SELECT 'w'")
        .await
        .expect("a write handle");
    F::handle_text(&reader, "SELECT 'r'")
        .await
        .expect("a read handle");
    assert_clean(
        "the handed-out pools' Debug",
        &format!("{writer:?} {reader:?}"),
    );

    // A failover, with every state change logged.
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    pool.run("SELECT 1")
        .await
        .expect("query after the failover");

    // Errors: a refused login (the right password in the URL of another user) and a bad
    // parameter next to the password.
    let wrong_user = url.replacen(&format!("{}:", cluster.user()), "nobody:", 1);
    let err = F::connect_with(Config::from_url(&wrong_user).expect("config"))
        .await
        .expect_err("unknown user");
    assert_clean(
        "a login error",
        &format!(
            "{err} {err:#} {err:?} {:?}",
            std::error::Error::source(&err)
        ),
    );
    let err = Config::from_url(&format!("{url}&colour=blue")).expect_err("bad parameter");
    assert_clean("a configuration error", &format!("{err} {err:#} {err:?}"));
    pool.close().await;

    let logs = support::captured_logs();
    assert!(
        logs.contains("failover finished"),
        "the failover was not logged"
    );
    assert_clean("the logs", &logs);
}

flavour_tests!(no_password_in_debug_errors_or_logs);

/// The one exception the README documents, sqlx's: `PgPool::connect_options()` of a
/// handed-out pool holds the password its next connection logs in with, and sqlx's `Debug`
/// prints it. Should sqlx ever redact it, this fails and the README's "Secrets in output"
/// is due for an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_options_are_the_documented_exception() {
    let cluster = LocalCluster::builder()
        .instances(1)
        .password(PASSWORD)
        .start()
        .await
        .expect("cluster");
    let pool: aurora_pool::AuroraPool =
        support::flavour::connect(&cluster, "sqlx-connect-options", "").await;
    let writer = pool.writer();
    sqlx::query("SELECT 1")
        .execute(&writer)
        .await
        .expect("a write handle");
    assert_clean("the handed-out pool's Debug", &format!("{writer:?}"));
    let options = format!("{:?}", writer.connect_options());
    assert!(
        options.contains(PASSWORD),
        "sqlx no longer prints the password of connect_options(): update the README"
    );
    pool.close().await;
}
