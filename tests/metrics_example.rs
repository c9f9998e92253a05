//! `examples/metrics.rs` run as a new user would: the Prometheus recorder installed, the
//! pool connected with default settings, `/metrics` scraped over HTTP before and after a
//! writer failover on a local cluster. The failover shows up in the scrape: a counter and a
//! histogram (rendered as a summary) with one sample each.

#[path = "../examples/metrics.rs"]
#[allow(dead_code)]
mod example;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, Role};

/// The value of the scraped line that starts with `name` and carries `cluster_id`.
fn value(lines: &[String], name: &str, cluster_id: &str) -> Option<f64> {
    lines
        .iter()
        .find(|line| {
            line.starts_with(name)
                && line[name.len()..].starts_with(['{', ' '])
                && line.contains(&format!("cluster_id=\"{cluster_id}\""))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_shows_up_in_the_scraped_metrics() {
    let metrics = example::install_recorder().expect("the only recorder");
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let cluster_id = "metrics-example-test";
    let pool = AuroraPool::connect(&format!("{}&cluster_id={cluster_id}", cluster.url()))
        .await
        .expect("connect");
    pool.acquire(Role::Writer)
        .await
        .expect("a writer connection");
    let addr = example::serve(example::app(pool.clone(), metrics))
        .await
        .expect("serve");
    let before = example::scrape_failovers(addr).await.expect("scrape");
    assert_eq!(
        value(&before, "aurora_pool_failovers_succeeded", cluster_id),
        None,
        "a failover before any: {before:#?}"
    );

    example::fail_over(&cluster, &pool).await.expect("failover");
    let after = example::scrape_failovers(addr).await.expect("scrape");
    assert_eq!(
        value(&after, "aurora_pool_failovers_succeeded", cluster_id),
        Some(1.0),
        "{after:#?}"
    );
    assert_eq!(
        value(
            &after,
            "aurora_pool_failover_recovery_time_count",
            cluster_id
        ),
        Some(1.0),
        "{after:#?}"
    );
    assert_eq!(
        value(&after, "aurora_pool_failover_duration_count", cluster_id),
        Some(1.0),
        "{after:#?}"
    );
    pool.close().await;
}
