//! Many clusters in one process: pools with distinct `cluster_id`s are fully isolated
//! (topology, monitors, failover), as in a migration job that reads one cluster and writes
//! another.

mod support;

use std::time::Duration;

use aurora_pool::testing::LocalCluster;
use aurora_pool::{ClusterEvent, Role};
use support::flavour::{Flavour, connect, flavour_tests};
use support::{AGGRESSIVE, drain_events, eventually, monitor_connections, unique_cluster_id};

async fn a_failover_of_one_cluster_leaves_the_other_untouched<F: Flavour>(test: &str) {
    let (source, target) = tokio::join!(LocalCluster::start(2), LocalCluster::start(2));
    let (source, target) = (source.expect("source"), target.expect("target"));
    let (source_test, target_test) = (format!("{test}-source"), format!("{test}-target"));
    let reads: F = connect(&source, &source_test, AGGRESSIVE).await;
    let writes: F = connect(&target, &target_test, AGGRESSIVE).await;
    let mut target_events = writes.events();
    let target_before = writes.topology();

    // Each pool reaches only its own cluster's instances.
    assert_eq!(
        F::served_by(&reads.handle(Role::Writer)).await,
        "instance-1"
    );
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
    assert_eq!(
        F::served_by(&reads.handle(Role::Writer)).await,
        "instance-2"
    );

    // The target cluster saw nothing: same topology, same writer, no event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target_after = writes.topology();
    assert_eq!(
        target_after.version(),
        target_before.version(),
        "{target_after}"
    );
    assert_eq!(target_after.writer().id(), "instance-1");
    assert_eq!(
        F::served_by(&writes.handle(Role::Writer)).await,
        "instance-1"
    );
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
    let (source_id, target_id) = (
        unique_cluster_id(&source_test),
        unique_cluster_id(&target_test),
    );
    assert_eq!(monitor_connections(&source, &source_id).await, 1);
    assert_eq!(monitor_connections(&target, &target_id).await, 1);
    assert_eq!(monitor_connections(&source, &target_id).await, 0);
    assert_eq!(monitor_connections(&target, &source_id).await, 0);
    reads.close().await;
    writes.close().await;
}

flavour_tests!(a_failover_of_one_cluster_leaves_the_other_untouched);
