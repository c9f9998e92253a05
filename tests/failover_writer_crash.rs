//! The writer crashes and a replica is promoted: writes resume on the new writer, never
//! on a reader, the old writer's pool is gone and the new one is refilled.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{ClusterEvent, Role};
use support::flavour::{Flavour, connect, flavour_tests};
use support::{AGGRESSIVE, connections_named, drain_events, eventually, unique_cluster_id};

/// Where an acknowledged write landed.
const WRITE: &str = "INSERT INTO writes (instance) VALUES (pg_catalog.aurora_db_instance_identifier()) \
                     RETURNING instance";

async fn writes_resume_on_the_promoted_instance<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let app = unique_cluster_id(&format!("{test}-app"));
    let pool: F = connect(
        &cluster,
        test,
        &format!(
            "{AGGRESSIVE}&writer_min_connections=2&application_name={app}&failover_timeout_ms=30000"
        ),
    )
    .await;
    let mut events = pool.events();
    pool.run("CREATE TABLE writes (id serial PRIMARY KEY, instance text NOT NULL)")
        .await
        .expect("create");
    support::replicated(&cluster, "writes").await;

    // A write loop, bounded in time, recording where each acknowledged write landed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut landed = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let result = pool.run_text(Role::Writer, WRITE).await;
                landed.push(result);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            landed
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster
        .failover("instance-2", Some(Duration::from_millis(500)))
        .await
        .expect("failover");
    let moved = eventually(Duration::from_secs(20), || async {
        pool.topology().writer().id() == "instance-2"
            && pool
                .status()
                .instance("instance-2")
                .is_some_and(|s| s.size >= 2)
    })
    .await;
    assert!(
        moved,
        "no move to instance-2: {} / {:?}",
        pool.topology(),
        pool.status()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let landed = writer.await.expect("write loop");

    // The loop writes one at a time: only the write in flight when the writer crashed may
    // end without riding through, and then only as an unknown outcome (it may have
    // committed before the crash), never run again.
    let errors: Vec<_> = landed.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.len() <= 1 && errors.iter().all(|e| e.is_outcome_unknown()),
        "run() must ride through the failover: {errors:?}"
    );
    let instances: Vec<&str> = landed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(String::as_str)
        .collect();
    let first_new = instances
        .iter()
        .position(|i| *i == "instance-2")
        .expect("writes on instance-2");
    assert!(first_new > 0, "no write before the failover");
    assert!(
        instances[..first_new].iter().all(|i| *i == "instance-1"),
        "{instances:?}"
    );
    assert!(
        instances[first_new..].iter().all(|i| *i == "instance-2"),
        "{instances:?}"
    );

    let seen = drain_events(&mut events);
    assert!(
        seen.contains(&ClusterEvent::WriterChanged {
            old: "instance-1".into(),
            new: "instance-2".into()
        }),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, ClusterEvent::TopologyChanged { .. })),
        "{seen:?}"
    );

    // The old writer comes back as a reader: no connection of the pool goes back to it as
    // a writer, and the pool's status has no writer pool for it.
    cluster.wait_rejoined("instance-1").await.expect("rejoin");
    let status = pool.status();
    assert_eq!(status.instances[0].instance_id, "instance-2", "{status:?}");
    // The promoted reader left the readers; the demoted writer joined them once back.
    let rejoined = eventually(Duration::from_secs(10), || async {
        let status = pool.status();
        status
            .instance("instance-1")
            .is_some_and(|i| i.role == Role::Reader)
            && status
                .instances
                .iter()
                .filter(|i| i.instance_id == "instance-2")
                .count()
                == 1
    })
    .await;
    assert!(rejoined, "{:?}", pool.status());
    assert_eq!(connections_named(&cluster, "instance-1", &app).await, 0);
    let writes_on_new = connections_named(&cluster, "instance-2", &app).await;
    assert!(
        writes_on_new >= 2,
        "the writer pool was not refilled: {writes_on_new}"
    );
    pool.close().await;
}

/// Holds the connection 300 ms: with one writer connection, callers are served one at a time
/// in a visible order.
const SLOW_ID: &str =
    "SELECT pg_catalog.aurora_db_instance_identifier() FROM pg_catalog.pg_sleep(0.3)";

/// A `run` on the writer that began waiting while the writer was down is served in its turn
/// among the callers of the handed-out `writer()` pool that came after it, not behind all of
/// them once the new writer is routed (one writer connection, so that the order shows).
async fn a_run_waiting_through_a_failover_keeps_its_turn<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool: F = connect(&cluster, test, "writer_max_connections=1").await;
    assert_eq!(
        pool.run_text(Role::Writer, support::flavour::INSTANCE_ID)
            .await
            .expect("before the crash"),
        "instance-1"
    );
    cluster.crash("instance-1").await.expect("crash");
    let down = eventually(Duration::from_secs(10), || async { !pool.health().writes }).await;
    assert!(down, "the writer was never seen down: {:?}", pool.health());

    let run = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let answer = pool.run_text(Role::Writer, SLOW_ID).await;
            (answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut handles = Vec::new();
    for _ in 0..3 {
        let writer = pool.handle(Role::Writer);
        handles.push(tokio::spawn(async move {
            let answer = F::handle_text(&writer, SLOW_ID).await;
            (answer, Instant::now())
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");

    let (answer, run_done) = run.await.expect("run");
    assert_eq!(answer.expect("run").as_str(), "instance-2");
    let mut first_handle_done = None::<Instant>;
    for handle in handles {
        let (answer, done) = handle.await.expect("handle caller");
        assert_eq!(answer.expect("handle caller").as_str(), "instance-2");
        first_handle_done = Some(first_handle_done.map_or(done, |d| d.min(done)));
    }
    let first_handle_done = first_handle_done.expect("handle callers");
    assert!(
        run_done < first_handle_done,
        "the run that waited first was served after the pool's callers that came later ({:?} after the first of them)",
        run_done - first_handle_done
    );
    pool.close().await;
}

flavour_tests!(
    writes_resume_on_the_promoted_instance,
    a_run_waiting_through_a_failover_keeps_its_turn
);
