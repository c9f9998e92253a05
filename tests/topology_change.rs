//! When the topology changes, the monitor publishes it and the pool re-routes: writes move
//! to the new writer and pools to the old one are closed.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::eventually;
use support::flavour::{Flavour, HELD_INSTANCE_ID, INSTANCE_ID, connect, flavour_tests};

async fn writes_follow_the_writer_after_a_topology_change<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(&cluster, test, "cluster_topology_refresh_rate_ms=200").await;
    let before = pool.topology();
    assert_eq!(before.writer().id(), "instance-1");
    let kept_writer_handle = pool.handle(Role::Writer);
    let served = F::handle_text(&kept_writer_handle, INSTANCE_ID).await;
    assert_eq!(served.expect("write"), "instance-1");

    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");

    let moved = eventually(Duration::from_secs(15), || async {
        pool.topology().writer().id() == "instance-2"
    })
    .await;
    assert!(
        moved,
        "the pool never saw the new writer: {}",
        pool.topology()
    );
    let after = pool.topology();
    assert!(after.version() > before.version());

    let served = F::handle_text(&pool.handle(Role::Writer), INSTANCE_ID).await;
    assert_eq!(served.expect("write"), "instance-2");
    let in_recovery = pool
        .query_text(Role::Writer, "SELECT pg_catalog.pg_is_in_recovery()::text")
        .await
        .expect("writer checkout");
    assert_eq!(in_recovery, "false");
    let status = pool.status();
    assert!(status.topology_version >= after.version());
    assert_eq!(status.instances[0].instance_id, "instance-2");
    assert_eq!(status.instances[0].role, Role::Writer);

    // A writer handle taken before the change follows the writer.
    assert!(!F::handle_is_closed(&kept_writer_handle));
    let served = F::handle_text(&kept_writer_handle, INSTANCE_ID).await;
    assert_eq!(served.expect("write through the kept handle"), "instance-2");
    pool.close().await;
}

/// With default settings: reads through a kept `reader()` handle, 8 callers in a loop on
/// the only reader, spread onto a reader that joins: within `REBALANCE_WINDOW` (10 s) of the
/// pool seeing it, a fair share of the reads lands there, although no connection of the
/// handle's pool expires (idle and lifetime limits of 10 and 30 minutes).
async fn reads_spread_onto_a_reader_that_joins<F: Flavour>(test: &str) {
    let cluster = LocalCluster::builder()
        .instances(2)
        .spare_instances(1)
        .start()
        .await
        .expect("cluster");
    let pool: F = connect(&cluster, test, "").await;
    let reader = pool.handle(Role::Reader);
    let answers = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (reader, answers, stop) = (reader.clone(), answers.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(id) = F::handle_text(&reader, HELD_INSTANCE_ID).await {
                        answers.lock().expect("answers").push((Instant::now(), id));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let share_since = |since: Instant| {
        let answers = answers.lock().expect("answers");
        let recent: Vec<&String> = answers
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, id)| id)
            .collect();
        let on_new = recent.iter().filter(|id| ***id == "instance-3").count();
        (on_new, recent.len())
    };
    assert_eq!(share_since(Instant::now() - Duration::from_secs(1)).0, 0);
    cluster
        .add_instance("instance-3")
        .await
        .expect("add instance-3");
    // The monitor reads the topology every 30 s by default.
    let seen = eventually(Duration::from_secs(40), || async {
        pool.topology()
            .instance("instance-3")
            .is_some_and(|i| i.is_available())
    })
    .await;
    assert!(seen, "the pool never saw instance-3: {}", pool.topology());
    let joined = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (on_new, total) = share_since(window);
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("caller");
    }
    eprintln!(
        "{test}: {on_new} of {total} reads on instance-3, {:?} after the pool saw it",
        window.duration_since(joined)
    );
    assert!(
        total > 0 && on_new * 4 >= total,
        "{on_new} of {total} reads on the new reader, 10 s after the pool saw it: {:?}",
        pool.status()
    );
    pool.close().await;
}

flavour_tests!(
    writes_follow_the_writer_after_a_topology_change,
    reads_spread_onto_a_reader_that_joins,
);

/// Frequent health-probe reports must not postpone the topology polls: a reader that joins
/// shows up within a few refresh intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_keep_their_schedule_while_probes_report() {
    let cluster = LocalCluster::builder()
        .instances(2)
        .spare_instances(1)
        .start()
        .await
        .expect("cluster");
    let pool = support::connect(
        &cluster,
        "poll-schedule",
        "cluster_topology_refresh_rate_ms=300&failure_detection_time_ms=0\
         &failure_detection_interval_ms=50",
    )
    .await;
    // Probes report every 50 ms; the topology is still read every 0.3 s: a reader that joins
    // shows up within a few polls.
    cluster
        .add_instance("instance-3")
        .await
        .expect("add instance-3");
    let added = std::time::Instant::now();
    let seen = eventually(Duration::from_secs(3), || async {
        pool.topology().instance("instance-3").is_some()
    })
    .await;
    assert!(
        seen,
        "no poll saw the new reader within 3 s (every 0.3 s expected): {}",
        pool.topology()
    );
    eprintln!("new reader seen {:?} after it joined", added.elapsed());
    pool.close().await;
}
