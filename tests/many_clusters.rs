//! Many clusters in one process: pools with distinct `cluster_id`s are fully isolated
//! (topology, monitors, failover), as in a migration job that reads one cluster and writes
//! another.

mod support;

use std::time::Duration;

use aurora_pool::ClusterEvent;
use aurora_pool::testing::LocalCluster;
use support::{AGGRESSIVE, drain_events, eventually, served_by};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_one_cluster_leaves_the_other_untouched() {
    let (source, target) = tokio::join!(LocalCluster::start(2), LocalCluster::start(2));
    let (source, target) = (source.expect("source"), target.expect("target"));
    let reads = support::connect(&source, "many-source", AGGRESSIVE).await;
    let writes = support::connect(&target, "many-target", AGGRESSIVE).await;
    let mut target_events = writes.events();
    let target_before = writes.topology();

    // Each pool reaches only its own cluster's instances.
    assert_eq!(served_by(&reads.writer()).await, "instance-1");
    let source_port = |id: &str| source.instance_addr(id).expect("instance").port();
    for instance in reads.topology().instances() {
        assert_eq!(instance.address().port, source_port(instance.id()));
    }
    let target_port = |id: &str| target.instance_addr(id).expect("instance").port();
    for instance in writes.topology().instances() {
        assert_eq!(instance.address().port, target_port(instance.id()));
    }

    // The source cluster fails over.
    source
        .failover("instance-2", Some(Duration::from_millis(200)))
        .await
        .expect("failover");
    let moved = eventually(Duration::from_secs(15), || async {
        reads.topology().writer().id() == "instance-2"
    })
    .await;
    assert!(
        moved,
        "the source pool never saw its new writer: {}",
        reads.topology()
    );
    assert_eq!(served_by(&reads.writer()).await, "instance-2");

    // The target cluster saw nothing: same topology, same writer, no event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target_after = writes.topology();
    assert_eq!(
        target_after.version(),
        target_before.version(),
        "{target_after}"
    );
    assert_eq!(target_after.writer().id(), "instance-1");
    assert_eq!(served_by(&writes.writer()).await, "instance-1");
    let seen = drain_events(&mut target_events);
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ClusterEvent::WriterChanged { .. } | ClusterEvent::InstanceDown { .. }
        )),
        "{seen:?}"
    );

    // Each cluster has exactly one monitor, its own.
    source
        .wait_rejoined("instance-1")
        .await
        .expect("old writer rejoined");
    for (cluster, test) in [(&source, "many-source"), (&target, "many-target")] {
        let name = format!("aurora-pool-monitor:{}", support::unique_cluster_id(test));
        let mut monitors = 0;
        for id in cluster.instance_ids() {
            monitors += support::connections_named(cluster, &id, &name).await;
        }
        assert_eq!(monitors, 1, "{test}");
        let other = if test == "many-source" {
            "many-target"
        } else {
            "many-source"
        };
        let foreign = format!("aurora-pool-monitor:{}", support::unique_cluster_id(other));
        for id in cluster.instance_ids() {
            assert_eq!(support::connections_named(cluster, &id, &foreign).await, 0);
        }
    }
    reads.close().await;
    writes.close().await;
}
