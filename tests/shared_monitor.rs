//! One monitor (and one monitoring connection) per `cluster_id`, shared by every pool with
//! that id whatever its URL, isolated from other ids, stopped with the last pool.

mod support;

use std::time::Duration;

use aurora_pool::AuroraPool;
use aurora_pool::testing::LocalCluster;
use support::{connections_named, eventually, unique_cluster_id, url_with};

fn monitor_name(cluster_id: &str) -> String {
    format!("aurora-pool-monitor:{cluster_id}")
}

/// Waits until the writer holds `expected` of the connections the monitor of `cluster_id`
/// reads the topology on (its own, or the writer's probe's).
async fn settles_at(cluster: &LocalCluster, cluster_id: &str, expected: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        support::monitor_connections(cluster, cluster_id).await == expected
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_with_one_cluster_id_share_one_monitor_connection() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let shared = unique_cluster_id("shared-monitor");
    let other = unique_cluster_id("other-monitor");
    let encoded: String =
        url::form_urlencoded::byte_serialize(cluster.instance_endpoints_param().as_bytes())
            .collect();

    // Three pools, three URLs (cluster endpoint, the writer's and the reader's instance
    // endpoints), one cluster_id.
    let a = AuroraPool::connect(&url_with(
        &cluster,
        &format!("cluster_id={shared}&failure_detection_time_ms=0"),
    ))
    .await
    .expect("a");
    let b = AuroraPool::connect(&format!(
        "{}?cluster_id={shared}&instance_endpoints={encoded}",
        cluster.instance_url("instance-1").expect("known instance")
    ))
    .await
    .expect("b");
    let c = AuroraPool::connect(&format!(
        "{}?cluster_id={shared}&instance_endpoints={encoded}",
        cluster.instance_url("instance-2").expect("known instance")
    ))
    .await
    .expect("c");
    let d = AuroraPool::connect(&url_with(&cluster, &format!("cluster_id={other}")))
        .await
        .expect("d");

    assert!(
        settles_at(&cluster, &shared, 1).await,
        "expected one monitor connection for {shared}"
    );
    assert!(
        settles_at(&cluster, &other, 1).await,
        "expected one monitor connection for {other}"
    );
    // One health probe per instance for the whole cluster_id, not per pool.
    let probes = format!("aurora-pool-probe:{shared}");
    for id in ["instance-1", "instance-2"] {
        let one = eventually(Duration::from_secs(10), || async {
            connections_named(&cluster, id, &probes).await == 1
        })
        .await;
        assert!(one, "expected one probe connection on {id}");
    }
    // The monitor sits on the writer: nothing of it on the reader.
    assert_eq!(
        connections_named(&cluster, "instance-2", &monitor_name(&shared)).await,
        0
    );
    // Discovery connections are closed once the pools are up.
    let discovery = format!("aurora-pool-discovery:{shared}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            connections_named(&cluster, "instance-1", &discovery).await == 0
                && connections_named(&cluster, "instance-2", &discovery).await == 0
        })
        .await
    );

    // Dropping some pools keeps the monitor; dropping the last one stops it.
    drop(a);
    drop(b);
    assert!(settles_at(&cluster, &shared, 1).await);
    drop(c);
    assert!(
        settles_at(&cluster, &shared, 0).await,
        "the monitor outlived its last pool"
    );
    // Its health probes are gone too, from every instance.
    for id in ["instance-1", "instance-2"] {
        let gone = eventually(Duration::from_secs(10), || async {
            connections_named(&cluster, id, &probes).await == 0
        })
        .await;
        assert!(gone, "probe connections of {shared} remain on {id}");
    }
    assert!(
        settles_at(&cluster, &other, 1).await,
        "another cluster_id's monitor must be untouched"
    );

    d.close().await;
    assert!(
        settles_at(&cluster, &other, 0).await,
        "close() must stop the monitor"
    );
    assert!(d.is_closed());
    let err = d
        .acquire(aurora_pool::Role::Writer)
        .await
        .expect_err("closed pool");
    assert!(err.is_closed(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_under_one_cluster_id_are_refused() {
    let first = LocalCluster::start(1).await.expect("first cluster");
    let second = LocalCluster::start(1).await.expect("second cluster");
    let id = unique_cluster_id("mismatch");
    let pool = AuroraPool::connect(&url_with(&first, &format!("cluster_id={id}")))
        .await
        .expect("first pool");
    let err = AuroraPool::connect(&url_with(&second, &format!("cluster_id={id}")))
        .await
        .expect_err("a second cluster under the same id");
    assert!(err.is_cluster_id_mismatch(), "{err}");
    assert_eq!(err.cluster_id(), Some(id.as_str()));
    assert!(format!("{err:#}").contains("cluster_id"), "{err}");

    // With its own id the second cluster is fine and isolated.
    let own = AuroraPool::connect(&url_with(
        &second,
        &format!("cluster_id={}", unique_cluster_id("mismatch-own")),
    ))
    .await
    .expect("second pool with its own id");
    assert_ne!(
        pool.topology().writer().address(),
        own.topology().writer().address()
    );
}

/// A sqlx pool and a deadpool pool under one `cluster_id` share one monitor, which keeps
/// running (on the other flavour's connections) when the first pool goes.
#[cfg(feature = "deadpool")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_flavours_share_one_monitor() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let shared = unique_cluster_id("mixed-flavours");
    let url = url_with(
        &cluster,
        &format!(
            "cluster_id={shared}&failure_detection_time_ms=0&cluster_topology_refresh_rate_ms=200"
        ),
    );
    let sqlx_pool = AuroraPool::connect(&url).await.expect("sqlx flavour");
    let deadpool_pool = aurora_pool::deadpool::AuroraPool::connect(&url)
        .await
        .expect("deadpool flavour");
    assert!(
        settles_at(&cluster, &shared, 1).await,
        "expected one monitor connection for {shared}"
    );
    let probes = format!("aurora-pool-probe:{shared}");
    let one_probe = eventually(Duration::from_secs(10), || async {
        connections_named(&cluster, "instance-2", &probes).await == 1
    })
    .await;
    assert!(one_probe, "expected one probe connection on instance-2");

    // The first pool goes: the monitor stays, and logs in again when its connection ends.
    drop(sqlx_pool);
    assert!(settles_at(&cluster, &shared, 1).await);
    assert!(
        support::monitor_logs_in_again(&cluster, &shared).await,
        "the monitor did not reconnect through the remaining pool"
    );
    let client = deadpool_pool.writer().get().await.expect("checkout");
    client.simple_query("SELECT 1").await.expect("query");
    drop(client);
    deadpool_pool.close().await;
    assert!(
        settles_at(&cluster, &shared, 0).await,
        "the monitor outlived its last pool"
    );
}

/// The way parallel `#[tokio::test]`s meet the shared monitor: pool A, on a runtime of its
/// own, starts the monitor; pool B, on another runtime, joins it; A's test ends (its pool
/// dropped, its runtime shut down, the monitor's task with it). With default settings, B
/// still follows a writer crash: the monitor runs again on B's runtime.
fn a_monitor_outlives_the_runtime_that_started_it<F: support::flavour::Flavour>(test: &str) {
    let runtime = |threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
    };
    // The cluster's own helpers live on a runtime of their own for the whole test.
    let cluster_runtime = runtime(1);
    let cluster = cluster_runtime
        .block_on(LocalCluster::start(3))
        .expect("cluster");
    let config = aurora_pool::Config::from_url(&url_with(
        &cluster,
        &format!("cluster_id={}", unique_cluster_id(test)),
    ))
    .expect("config");

    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool_a: F = first
        .block_on(F::connect_with(config.clone()))
        .expect("pool A");
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool_b: F = second.block_on(F::connect_with(config)).expect("pool B");
    // Test A ends.
    drop(pool_a);
    drop(first);

    second.block_on(async {
        let writer = pool_b.handle(aurora_pool::Role::Writer);
        let before = F::handle_text(&writer, support::flavour::INSTANCE_ID).await;
        assert_eq!(before.as_deref(), Ok("instance-1"));
        cluster.crash("instance-1").await.expect("crash");
        cluster
            .failover("instance-2", None)
            .await
            .expect("failover");
        let promoted = std::time::Instant::now();
        let mut last = Err(String::new());
        while promoted.elapsed() < Duration::from_secs(5) {
            last = F::handle_text(&writer, support::flavour::INSTANCE_ID).await;
            if last.as_deref() == Ok("instance-2") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            last.as_deref(),
            Ok("instance-2"),
            "pool B never followed the failover, {:?} after the promotion",
            promoted.elapsed()
        );
    });
    drop(pool_b);
    drop(second);
    let _entered = cluster_runtime.enter();
    drop(cluster);
}

#[test]
fn sqlx_a_monitor_outlives_the_runtime_that_started_it() {
    a_monitor_outlives_the_runtime_that_started_it::<AuroraPool>("sqlx-monitor-runtime");
}

#[cfg(feature = "deadpool")]
#[test]
fn deadpool_a_monitor_outlives_the_runtime_that_started_it() {
    a_monitor_outlives_the_runtime_that_started_it::<aurora_pool::deadpool::AuroraPool>(
        "deadpool-monitor-runtime",
    );
}
