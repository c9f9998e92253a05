//! A reader crashes: reads continue on the other readers, and come back to it when it
//! returns.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{ClusterEvent, Role};
use support::flavour::{Flavour, INSTANCE_ID, connect, flavour_tests};
use support::{AGGRESSIVE, drain_events, eventually};

async fn reads_continue_on_the_other_readers<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(
        &cluster,
        test,
        &format!(
            "{AGGRESSIVE}&reader_host_selector_strategy=round_robin&failover_timeout_ms=20000"
        ),
    )
    .await;
    let read = || pool.run_text(Role::Reader, INSTANCE_ID);
    let mut events = pool.events();
    let mut before = BTreeSet::new();
    for _ in 0..4 {
        before.insert(read().await.expect("read"));
    }
    assert_eq!(
        before,
        BTreeSet::from(["instance-2".to_owned(), "instance-3".to_owned()])
    );

    cluster.crash("instance-3").await.expect("crash");
    // Every read succeeds, whatever reader it was sent to first.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut during = Vec::new();
    while Instant::now() < deadline {
        during.push(read().await.expect("reads must continue"));
    }
    assert!(
        during.iter().all(|i| i != "instance-1"),
        "reads reached the writer: {during:?}"
    );
    assert!(
        !pool
            .topology()
            .instance("instance-3")
            .expect("listed")
            .is_available()
    );
    let tail = &during[during.len().saturating_sub(5)..];
    assert!(tail.iter().all(|i| i == "instance-2"), "{during:?}");
    assert!(
        drain_events(&mut events).contains(&ClusterEvent::InstanceDown {
            instance: "instance-3".into()
        })
    );

    cluster.start_instance("instance-3").await.expect("restart");
    let back = eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance("instance-3")
            .is_some_and(|i| i.is_available())
    })
    .await;
    assert!(back, "instance-3 never came back: {}", pool.topology());
    let mut after = BTreeSet::new();
    for _ in 0..4 {
        after.insert(read().await.expect("read"));
    }
    assert!(after.contains("instance-3"), "{after:?}");
    assert!(
        drain_events(&mut events).contains(&ClusterEvent::InstanceUp {
            instance: "instance-3".into()
        })
    );
    pool.close().await;
}

flavour_tests!(reads_continue_on_the_other_readers);
