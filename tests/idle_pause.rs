//! An idle pool lets an Aurora Serverless v2 instance pause (it pauses only with no
//! connection at all): once no pool of the cluster has had a connection open for
//! `monitor_idle_pause_ms`, the monitor closes its probes and its own connection, and the
//! next query wakes it without an error.

mod support;

use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::eventually;
use support::flavour::{Flavour, INSTANCE_ID, connect, flavour_tests};

/// The connections the pool's user holds on `instance` (the pools', the monitor's, the
/// probes').
async fn user_connections(cluster: &LocalCluster, instance: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = '{}'",
        cluster.user()
    );
    cluster
        .psql(instance, "postgres", &sql)
        .await
        .expect("count")
        .trim()
        .parse()
        .expect("a count")
}

async fn connections_everywhere(cluster: &LocalCluster) -> usize {
    let mut total = 0;
    for id in cluster.instance_ids() {
        total += user_connections(cluster, &id).await;
    }
    total
}

/// Tuned, as the defaults are too long for a test (idle connections close after 10 minutes,
/// the monitor pauses a minute after the last one): connections close after 1 s idle, the
/// monitor pauses 1.5 s after. The process then holds no connection on any instance, for as
/// long as it stays idle; a query through a `writer()` handle kept from before answers, the
/// monitor is back, and a failover after that is followed.
async fn an_idle_pool_leaves_no_connection_and_wakes_on_use<F: Flavour>(test: &str) {
    support::trace();
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: F = connect(
        &cluster,
        test,
        "idle_timeout_ms=1000&monitor_idle_pause_ms=1500",
    )
    .await;
    let cluster_id = pool.config().cluster_id.clone();
    let writer = pool.handle(Role::Writer);
    let reader = pool.handle(Role::Reader);
    assert_eq!(
        F::handle_text(&writer, INSTANCE_ID).await.expect("write"),
        "instance-1"
    );
    F::handle_text(&reader, INSTANCE_ID).await.expect("read");
    assert!(connections_everywhere(&cluster).await > 0);
    let idle = eventually(Duration::from_secs(20), || async {
        connections_everywhere(&cluster).await == 0
    })
    .await;
    assert!(idle, "the idle pool kept connections open");
    // And none comes back while it stays idle (a probe, a topology poll).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections_everywhere(&cluster).await, 0);

    assert_eq!(
        F::handle_text(&writer, INSTANCE_ID)
            .await
            .expect("the first query after the pause"),
        "instance-1"
    );
    assert_eq!(
        pool.run_text(Role::Writer, INSTANCE_ID)
            .await
            .expect("run after the pause"),
        "instance-1"
    );
    let monitored = eventually(Duration::from_secs(5), || async {
        support::monitor_connections(&cluster, &cluster_id).await == 1
    })
    .await;
    assert!(monitored, "the monitor did not resume");
    // Kept busy, it follows a failover as before.
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                let _ = pool.run_text(Role::Writer, INSTANCE_ID).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let followed = eventually(Duration::from_secs(10), || async {
        F::handle_text(&writer, INSTANCE_ID)
            .await
            .is_ok_and(|id| id == "instance-2")
    })
    .await;
    busy.abort();
    assert!(
        followed,
        "writes did not follow the failover: {}",
        pool.topology()
    );
    pool.close().await;
}

flavour_tests!(an_idle_pool_leaves_no_connection_and_wakes_on_use);
