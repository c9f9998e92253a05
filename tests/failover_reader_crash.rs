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

/// The backend pids of the pool's own connections (`application_name`) on instance `on`.
async fn backends(cluster: &LocalCluster, on: &str, app: &str) -> BTreeSet<String> {
    let sql =
        format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{app}' ORDER BY pid");
    cluster
        .psql(on, "postgres", &sql)
        .await
        .expect("pg_stat_activity")
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

const LONG_READ: &str =
    "SELECT pg_catalog.aurora_db_instance_identifier() FROM pg_catalog.pg_sleep(1.5)";

/// #22 item 8: one reader leaving closes only its own connections; the readers' pool keeps
/// its connections to the readers that stay, through checkouts and returns.
async fn a_reader_leaving_closes_only_its_own_connections<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(4).await.expect("cluster");
    let app = support::unique_cluster_id(&format!("{test}-app"));
    let pool: F = connect(
        &cluster,
        test,
        &format!("{AGGRESSIVE}&application_name={app}&reader_max_connections=12"),
    )
    .await;
    let readers = ["instance-2", "instance-3", "instance-4"];
    let up = eventually(Duration::from_secs(10), || async {
        let topology = pool.topology();
        readers
            .iter()
            .all(|id| topology.instance(id).is_some_and(|i| i.is_available()))
    })
    .await;
    assert!(up, "the readers never all came up: {}", pool.topology());
    // Long reads started one after another: each finds every connection busy and opens one,
    // after the previous connect moved the pool on to the next reader (on a loaded machine
    // two connects may overlap and land together: rounds until two readers hold some).
    let reads = pool.handle(Role::Reader);
    let mut holding: Vec<(&str, BTreeSet<String>)> = Vec::new();
    for round in 0..4u64 {
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..9 {
            let reads = reads.clone();
            held.spawn(async move { F::handle_text(&reads, LONG_READ).await });
            tokio::time::sleep(Duration::from_millis(150 * (round + 1))).await;
        }
        // Only the connections they leave behind matter here (a read cut by a loaded
        // machine's false verdict is no concern of this test).
        while let Some(read) = held.join_next().await {
            let _ = read.expect("task");
        }
        holding.clear();
        for id in readers {
            let on = backends(&cluster, id, &app).await;
            if !on.is_empty() {
                holding.push((id, on));
            }
        }
        if holding.len() >= 2 {
            break;
        }
    }
    assert!(
        holding.len() >= 2,
        "the readers' pool holds connections on fewer than two readers: {holding:?}"
    );
    // The first reader holding connections leaves; the others' connections must stay.
    let (victim, _) = holding[0];
    let kept: BTreeSet<String> = holding[1..]
        .iter()
        .flat_map(|(id, pids)| pids.iter().map(move |pid| format!("{id}:{pid}")))
        .collect();
    let staying: Vec<&str> = readers.iter().copied().filter(|id| *id != victim).collect();

    cluster.crash(victim).await.expect("crash a reader");
    let dropped = eventually(Duration::from_secs(10), || async {
        !pool
            .topology()
            .instance(victim)
            .expect("listed")
            .is_available()
    })
    .await;
    assert!(
        dropped,
        "{victim} was never declared down: {}",
        pool.topology()
    );
    // Every pooled connection is checked out and returned again.
    let after = F::spread_of(&reads, 48).await;
    assert!(!after.contains(victim), "{after:?}");
    let mut alive = BTreeSet::new();
    for id in &staying {
        let on = backends(&cluster, id, &app).await;
        alive.extend(on.into_iter().map(|pid| format!("{id}:{pid}")));
    }
    let closed: Vec<&String> = kept.difference(&alive).collect();
    assert!(
        closed.is_empty(),
        "connections to readers that stayed were closed when another reader left: {closed:?}"
    );
    pool.close().await;
}

flavour_tests!(
    reads_continue_on_the_other_readers,
    a_reader_leaving_closes_only_its_own_connections
);
