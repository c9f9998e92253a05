//! `connect_lazy`: a pool opened while its database is down serves, with default settings,
//! once the database comes up: the handles taken before, and `run`, `acquire`, with callers
//! waiting when it does. A lazy pool whose database stays down gives up within its timeout
//! and says why.

mod support;

use std::time::Duration;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{Config, Role};
use support::flavour::{Flavour, INSTANCE_ID, flavour_tests};

/// The settings of a pool on `cluster` through the instances' own ports, not the cluster's
/// proxies: a stopped instance then refuses connections as a host whose server is down does
/// (a proxy accepts them, then closes them). `params` are added to the URL.
fn direct_config(cluster: &LocalCluster, test: &str, params: &str) -> Config {
    let writer = cluster.direct_addr("instance-1").expect("instance-1");
    let url = format!(
        "postgres://{}:{}@{writer}/{}?instance_endpoints={}&cluster_id={}{params}",
        cluster.user(),
        cluster.password(),
        cluster.database(),
        cluster.direct_endpoints_param(),
        support::unique_cluster_id(test),
    );
    Config::from_url(&url).expect("config")
}

/// Every instance of `cluster` down (a clean stop): the database is not up yet.
async fn all_down(cluster: &LocalCluster) {
    for id in cluster.instance_ids().iter().rev() {
        cluster.stop(id).await.expect("stop");
    }
}

/// With default settings: the pool opens while no instance runs; callers in flight through
/// a `writer()` and a `reader()` handle taken before, `run` on the writer and `acquire` of a
/// reader, with no timeout of their own, are all answered once the instances start, writes
/// by the writer.
async fn a_lazy_pool_serves_once_its_database_is_up<F: Flavour>(test: &str) {
    support::trace();
    let cluster = LocalCluster::start(2).await.expect("cluster");
    all_down(&cluster).await;
    let pool = F::connect_lazy_with(direct_config(&cluster, test, ""))
        .await
        .expect("a lazy pool opens with its database down");
    assert_eq!(pool.topology().version(), 0, "nothing discovered yet");
    assert!(!pool.health().writes && !pool.health().reads);
    let (writer, reader) = (pool.handle(Role::Writer), pool.handle(Role::Reader));
    let callers = vec![
        tokio::spawn(async move { F::handle_text(&writer, INSTANCE_ID).await }),
        tokio::spawn(async move { F::handle_text(&reader, INSTANCE_ID).await }),
        {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run_text(Role::Writer, INSTANCE_ID)
                    .await
                    .map_err(|err| format!("{err:#}"))
            })
        },
        {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.instance_id(Role::Reader)
                    .await
                    .map_err(|err| format!("{err:#}"))
            })
        },
    ];
    // A few discoveries fail meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(done) = callers.iter().position(|caller| caller.is_finished()) {
        let answer = callers.into_iter().nth(done).expect("caller").await;
        panic!("caller {done} was answered while the database was down: {answer:?}");
    }
    for id in cluster.instance_ids() {
        cluster.start_instance(&id).await.expect("start");
    }
    let mut answers = Vec::new();
    for caller in callers {
        answers.push(caller.await.expect("join"));
    }
    let answers: Vec<String> = answers
        .into_iter()
        .map(|answer| answer.expect("answered once the database is up"))
        .collect();
    assert_eq!(answers[0], "instance-1", "the writer handle: {answers:?}");
    assert_eq!(answers[2], "instance-1", "run on the writer: {answers:?}");
    assert!(pool.topology().version() >= 1);
    assert_eq!(pool.topology().writer().id(), "instance-1");
    assert!(pool.health().writes);
    pool.close().await;
}

/// Tuned, in addition to the defaults above (timeouts of 1.5 s, a connect timeout of 1 s,
/// which bounds the deadpool flavour's connects at 2 s): a lazy pool whose database stays
/// down gives up within its timeouts, with an error saying that the cluster was never
/// discovered and why the last discovery failed; the password is nowhere in it.
async fn a_lazy_pool_that_never_finds_its_database_says_why<F: Flavour>(test: &str) {
    support::trace();
    let cluster = LocalCluster::start(1).await.expect("cluster");
    all_down(&cluster).await;
    let pool = F::connect_lazy_with(direct_config(
        &cluster,
        test,
        "&failover_timeout_ms=1500&acquire_timeout_ms=1500&connect_timeout=1",
    ))
    .await
    .expect("a lazy pool opens with its database down");
    let err = pool
        .run_text(Role::Writer, INSTANCE_ID)
        .await
        .expect_err("no database");
    let explained = format!("{err:#}");
    assert!(err.is_failover_failed(), "{explained}");
    assert!(
        explained.contains("has not been discovered yet"),
        "{explained}"
    );
    assert!(!explained.contains(cluster.password()), "{explained}");
    let handle = F::handle_text(&pool.handle(Role::Writer), INSTANCE_ID).await;
    assert!(
        handle.is_err(),
        "the handle's query failed in time: {handle:?}"
    );
    pool.close().await;
}

flavour_tests!(
    a_lazy_pool_serves_once_its_database_is_up,
    a_lazy_pool_that_never_finds_its_database_says_why,
);
