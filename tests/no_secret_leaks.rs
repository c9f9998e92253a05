//! Passwords never reach `Debug`, `Display`, errors or logs (everything at trace level,
//! sqlx's own events included), across discovery, queries, a failover and a failed login.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Config, Role};

const PASSWORD: &str = "s3cr3t-Pa55-never-shown";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str) {
    for secret in [PASSWORD, "s3cr3t"] {
        assert!(!text.contains(secret), "{what} shows the password: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_debug_errors_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

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
            support::unique_cluster_id("leaks"),
            support::AGGRESSIVE
        ),
    );
    let config = Config::from_url(&url).expect("config");
    assert_clean("Config's Debug", &format!("{config:?}"));
    assert_clean("LocalCluster's Debug", &format!("{cluster:?}"));
    let pool = AuroraPool::connect_with(config).await.expect("connect");
    assert_clean(
        "AuroraPool's Debug",
        &format!("{pool:?} {:?} {}", pool.status(), pool.topology()),
    );
    pool.run(Role::Writer, |conn| {
        Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await })
    })
    .await
    .expect("query");

    // A failover, with every state change logged.
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    pool.run(Role::Writer, |conn| {
        Box::pin(async move { sqlx::query("SELECT 1").execute(conn).await })
    })
    .await
    .expect("query after the failover");

    // Errors: a refused login (the right password in the URL of another user) and a bad
    // parameter next to the password.
    let wrong_user = url.replacen(&format!("{}:", cluster.user()), "nobody:", 1);
    let err = AuroraPool::connect(&wrong_user)
        .await
        .expect_err("unknown user");
    assert_clean(
        "a login error",
        &format!("{err} {err:?} {:?}", std::error::Error::source(&err)),
    );
    let err = AuroraPool::connect(&format!("{url}&colour=blue"))
        .await
        .expect_err("bad parameter");
    assert_clean("a configuration error", &format!("{err} {err:?}"));
    pool.close().await;

    let logs = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(
        logs.contains("failover finished"),
        "the failover was not logged"
    );
    assert_clean("the logs", &logs);
}
