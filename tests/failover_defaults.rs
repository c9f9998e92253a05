//! Failover with the DEFAULT settings, the way a new user runs the pool: a crashed writer, a
//! silent (black-holed) writer, a saturated writer, writes sent to a reader, a handed-out
//! pool closed by its user, the retry policy's time limit and a strict-reader wait.
//!
//! Every bound below is a liveness bound, far above the figures in BENCHMARKS.md: it fails
//! when the pool does not move at all with the defaults (as it did with a 30 s poll and a
//! 30 s probe grace period), not when it is a little slow on a loaded machine.

mod support;

use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{RetryPolicy, Role};
use support::flavour::{Flavour, connect, flavour_tests};
use support::{eventually, unique_cluster_id};

/// An INSERT that names the instance that took it.
const WRITE: &str =
    "INSERT INTO defaults_t VALUES (1) RETURNING pg_catalog.aurora_db_instance_identifier()";

/// Creates the table [`WRITE`] writes to, on every instance before a failover can lose it.
async fn create_table<F: Flavour>(cluster: &LocalCluster, pool: &F) {
    pool.execute("CREATE TABLE defaults_t (n int)")
        .await
        .expect("create");
    support::replicated(cluster, "defaults_t").await;
}

/// Starts a write through a fresh `writer()` handle every 20 ms, each in its own task (as
/// concurrent requests of a service: one write hung on a dead socket does not hold up the
/// next), until one lands on `target` or `limit` passes; returns how long after `from`
/// that write landed.
async fn first_write_on<F: Flavour>(
    pool: &F,
    target: &'static str,
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    support::trace_or("aurora_pool=debug,aurora_pool::testing=info");
    let deadline = from + limit;
    let (landed, mut first) = tokio::sync::mpsc::channel::<Duration>(1);
    let mut writes = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let landed = landed.clone();
        // Half through `writer()` handles, half through the retry helper, whose failed
        // attempts make the monitor re-read the topology (on a writer that may hang).
        let write: std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>> =
            if n.is_multiple_of(2) {
                let handle = pool.handle(Role::Writer);
                Box::pin(async move { F::handle_text(&handle, WRITE).await })
            } else {
                let pool = pool.clone();
                Box::pin(async move {
                    pool.run_text(Role::Writer, WRITE)
                        .await
                        .map_err(|err| err.to_string())
                })
            };
        writes.spawn(async move {
            let write = tokio::time::timeout(Duration::from_secs(5), write);
            if let Ok(Ok(id)) = write.await
                && id == target
            {
                let _ = landed.try_send(from.elapsed());
            }
        });
        tokio::select! {
            Some(after) = first.recv() => return Some(after),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    None
}

/// Asserts that a write through `writer()` lands on the promoted instance-2 within 15 s of
/// `from` (`moment` names it), and prints how long it took.
async fn expect_write_on_new_writer<F: Flavour>(test: &str, pool: &F, from: Instant, moment: &str) {
    let after = first_write_on(pool, "instance-2", from, Duration::from_secs(15)).await;
    assert!(
        after.is_some(),
        "no write reached the new writer within 15 s of {moment} with default settings: {}",
        pool.topology()
    );
    eprintln!(
        "{test}: first write on the new writer {:?} after {moment}",
        after.unwrap_or_default()
    );
}

async fn writes_follow_a_crashed_writer_with_defaults<F: Flavour>(test: &str) {
    let cluster = std::sync::Arc::new(LocalCluster::start(3).await.expect("cluster"));
    let pool = connect::<F>(&cluster, test, "").await;
    create_table(&cluster, &pool).await;
    // Early in the pool's life, as the report that found the 30 s grace period did.
    let crashed = Instant::now();
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    eprintln!("{test}: failover() returned after {:?}", crashed.elapsed());
    // Bounded from the end of the promotion: on a loaded machine the local promotion alone
    // has taken 25 s, which is the cluster's time, not the pool's.
    expect_write_on_new_writer(test, &pool, Instant::now(), "the promotion").await;
    // No write goes to the old writer once the pool moved: every later write lands on
    // instance-2.
    for _ in 0..20 {
        let id = F::handle_text(&pool.handle(Role::Writer), WRITE)
            .await
            .expect("write after the failover");
        assert_eq!(id, "instance-2");
    }
    pool.close().await;
}

async fn a_silent_writer_is_declared_dead_with_defaults<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    pool.execute("SELECT 1").await.expect("writer");
    assert!(cluster.blackhole("instance-1", true));
    let silenced = Instant::now();
    let declared = eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance("instance-1")
            .is_some_and(|i| !i.is_available())
    })
    .await;
    assert!(
        declared,
        "a black-holed writer was not declared unreachable within 10 s with default settings: {}",
        pool.topology()
    );
    eprintln!(
        "{test}: silent writer declared unreachable after {:?}",
        silenced.elapsed()
    );
    cluster.blackhole("instance-1", false);
    pool.close().await;
}

async fn writes_follow_a_black_holed_writer_with_defaults<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    create_table(&cluster, &pool).await;
    assert!(cluster.blackhole("instance-1", true));
    // The promotion right behind the silence; the old writer's crash is invisible behind
    // the black hole.
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    expect_write_on_new_writer(test, &pool, Instant::now(), "the promotion").await;
    pool.close().await;
}

async fn a_saturated_writer_is_busy_not_dead<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    // A role the connection limit applies to (it does not apply to superusers).
    let role = "busy_app";
    let setup = format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'busy-secret'; \
         CREATE TABLE busy_t (n int); GRANT ALL ON busy_t TO {role};"
    );
    cluster
        .psql("instance-1", cluster.database(), &setup)
        .await
        .expect("setup");
    support::replicated(&cluster, "busy_t").await;
    let url = format!(
        "postgres://{role}:busy-secret@{}/{}?instance_endpoints={}&cluster_id={}&writer_min_connections=2",
        cluster.cluster_endpoint(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        unique_cluster_id(test)
    );
    let pool = F::connect_with(aurora_pool::Config::from_url(&url).expect("config"))
        .await
        .expect("connect");
    // Two pooled connections to the writer, held open by the pool.
    let held = (
        pool.hold(Role::Writer).await.expect("first"),
        pool.hold(Role::Writer).await.expect("second"),
    );
    drop(held);
    let own = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' \
         AND application_name NOT LIKE 'aurora-pool-%'"
    );
    let pooled: u32 = cluster
        .psql("instance-1", "postgres", &own)
        .await
        .expect("count")
        .trim()
        .parse()
        .expect("a count");
    assert!(pooled >= 2, "{pooled} pooled connections");
    // The role is full: every new connection is refused with 53300. Then the pool's own
    // monitoring and probe connections are cut and must reconnect into the refusal.
    let limit = format!("ALTER ROLE {role} CONNECTION LIMIT {pooled}");
    cluster
        .psql("instance-1", "postgres", &limit)
        .await
        .expect("limit");
    let cut = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}' \
         AND application_name LIKE 'aurora-pool-%'"
    );
    cluster
        .psql("instance-1", "postgres", &cut)
        .await
        .expect("cut");
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let written = tokio::time::timeout(
            Duration::from_secs(3),
            pool.execute("INSERT INTO busy_t VALUES (1)"),
        )
        .await;
        match written {
            Ok(Ok(())) => served += 1,
            other => panic!(
                "a checkout stalled or failed on a saturated but healthy writer after {served} writes: {other:?}; {}",
                pool.topology()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pool.topology()
            .instance("instance-1")
            .is_some_and(|i| i.is_available()),
        "a full writer was declared unreachable: {}",
        pool.topology()
    );
    assert_eq!(pool.topology().writer().id(), "instance-1");
    eprintln!("{test}: {served} writes on a saturated writer");
    pool.close().await;
}

async fn a_write_on_a_reader_is_the_callers_error<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        pool.run_with_policy(
            RetryPolicy::new(),
            Role::Reader,
            "CREATE TABLE on_reader (n int)",
        ),
    )
    .await
    .expect("a write on a reader is returned at once, not retried");
    let err = outcome.expect_err("a reader refuses writes");
    assert_eq!(err.sqlstate(), Some("25006"), "{err:?}");
    assert!(
        !err.is_failover() && !err.is_retryable(),
        "a write on a reader is no failover: {err:?}"
    );
    assert!(err.is_driver(), "{err:?}");
    assert_eq!(pool.topology().writer().id(), "instance-1");
    pool.close().await;
}

async fn a_handed_out_pool_closed_by_its_user_is_replaced<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    pool.execute("SELECT 1").await.expect("writer");
    let handle = pool.handle(Role::Writer);
    F::close_handle(&handle).await;
    assert!(F::handle_is_closed(&handle));
    let served = tokio::time::timeout(Duration::from_secs(10), pool.execute("SELECT 1")).await;
    assert!(
        matches!(served, Ok(Ok(()))),
        "checkouts after a user closed the writer's pool: {served:?}"
    );
    assert!(!F::handle_is_closed(&pool.handle(Role::Writer)));
    pool.close().await;
}

async fn the_retry_time_limit_bounds_the_whole_call<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(4),
        pool.run_with_policy(
            RetryPolicy::new().timeout(Duration::from_secs(1)),
            Role::Writer,
            "SELECT pg_sleep(6)",
        ),
    )
    .await
    .expect("RetryPolicy::timeout(1 s) did not end a 6 s call within 4 s");
    let err = outcome.expect_err("cut off by the time limit");
    // Work on the writer outside a transaction may run on after it was abandoned.
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert!(format!("{err:#}").contains("time limit (1s)"), "{err}");
    eprintln!("{test}: cut off after {:?}", started.elapsed());
    pool.close().await;
}

/// Opens the pool's connections for `role` before a measured window: on a loaded machine
/// the first connects of a fresh pool can take seconds, and that is not what is measured.
async fn warm_up<F: Flavour>(pool: &F, role: Role) {
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let handle = pool.handle(role);
        reads.spawn(async move { F::handle_text(&handle, "SELECT 'warm'").await });
    }
    while let Some(read) = reads.join_next().await {
        read.expect("warm-up task").expect("warm-up read");
    }
}

/// What one write or read started at `at` came back with.
type Outcome = (Instant, Result<String, String>);

/// Runs `sql` through a fresh handle for `role` every 20 ms, each in its own task bounded
/// by 5 s, until `stop` is set; returns every outcome.
fn keep_running<F: Flavour>(
    pool: &F,
    role: Role,
    sql: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (handle, outcomes, at) = (pool.handle(role), outcomes.clone(), Instant::now());
            tasks.spawn(async move {
                let result = match tokio::time::timeout(
                    Duration::from_secs(5),
                    F::handle_text(&handle, sql),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err("no answer within 5 s".to_owned()),
                };
                outcomes.lock().expect("outcomes").push((at, result));
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while tasks.join_next().await.is_some() {}
        std::mem::take(&mut *outcomes.lock().expect("outcomes"))
    })
}

async fn no_write_reaches_a_demoted_writer<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    create_table(&cluster, &pool).await;
    warm_up(&pool, Role::Writer).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = keep_running(&pool, Role::Writer, WRITE, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The old writer stops cleanly and comes back as a replica of the new one.
    cluster.switchover("instance-2").await.expect("switchover");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = writes.await.expect("writes");
    let recovered = outcomes
        .iter()
        .filter(|(_, r)| r.as_deref() == Ok("instance-2"))
        .map(|(at, _)| *at)
        .min()
        .expect("writes reached the new writer");
    let late: Vec<&Outcome> = outcomes.iter().filter(|(at, _)| *at > recovered).collect();
    let wrong: Vec<&&Outcome> = late
        .iter()
        .filter(|(_, r)| match r {
            Ok(id) => id != "instance-2",
            Err(err) => err.contains("read-only"),
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} writes started after the first write on the new writer went to the old one or failed read-only: {wrong:?}",
        wrong.len(),
        late.len()
    );
    assert!(
        late.len() > 50,
        "{} writes after the switchover",
        late.len()
    );
    pool.close().await;
}

async fn a_writer_failure_costs_reads_nothing<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    warm_up(&pool, Role::Reader).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = keep_running(
        &pool,
        Role::Reader,
        support::flavour::INSTANCE_ID,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cluster.blackhole("instance-1", true));
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = reads.await.expect("reads");
    let failed: Vec<&Outcome> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} reads failed across a writer failure: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    pool.close().await;
}

async fn two_writers_get_one_verdict<F: Flavour>(test: &str) {
    let cluster = std::sync::Arc::new(LocalCluster::start(2).await.expect("cluster"));
    let pool = connect::<F>(&cluster, test, "").await;
    create_table(&cluster, &pool).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let moved = first_write_on(&pool, "instance-2", Instant::now(), Duration::from_secs(15)).await;
    assert!(
        moved.is_some(),
        "no failover to instance-2: {}",
        pool.topology()
    );
    let mut events = pool.events();
    // The old writer starts again as a second primary, its catalog still naming itself.
    cluster
        .start_instance("instance-1")
        .await
        .expect("start the old writer");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        let topology = pool.topology();
        assert_eq!(topology.writer().id(), "instance-2", "{topology}");
        let write = F::handle_text(&pool.handle(Role::Writer), WRITE)
            .await
            .expect("a write while two instances claim the writer role");
        assert_eq!(write, "instance-2");
        let read = F::handle_text(&pool.handle(Role::Reader), support::flavour::INSTANCE_ID)
            .await
            .expect("a read");
        assert_eq!(read, "instance-2", "a read reached the second primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let changes: Vec<_> = support::drain_events(&mut events)
        .into_iter()
        .filter(|e| matches!(e, aurora_pool::ClusterEvent::WriterChanged { .. }))
        .collect();
    assert!(changes.is_empty(), "the writer flapped: {changes:?}");
    // Routed nowhere: listed as unavailable, or not listed (a catalog read in the middle of
    // the failover drops the old writer's row).
    assert!(
        pool.topology()
            .instance("instance-1")
            .is_none_or(|i| !i.is_available()),
        "the second primary serves reads: {}",
        pool.topology()
    );
    pool.close().await;
}

/// A reader added after the pool's last topology read is promoted when the writer crashes:
/// panic mode reads the topology from the reader it knows (or through the URL's host),
/// learns the new instance, and its probe finds the writer.
async fn panic_mode_finds_a_writer_it_never_knew<F: Flavour>(test: &str) {
    writer_it_never_knew::<F>(test, false).await;
}

/// The same with the known reader silent too: the topology comes through the URL's host
/// (the cluster endpoint, which follows the new writer).
async fn panic_mode_reads_the_topology_through_the_url_host<F: Flavour>(test: &str) {
    writer_it_never_knew::<F>(test, true).await;
}

async fn writer_it_never_knew<F: Flavour>(test: &str, silence_the_reader: bool) {
    let cluster = std::sync::Arc::new(
        LocalCluster::builder()
            .instances(2)
            .spare_instances(1)
            .start()
            .await
            .expect("cluster"),
    );
    let pool = connect::<F>(&cluster, test, "").await;
    create_table(&cluster, &pool).await;
    cluster
        .add_instance("instance-3")
        .await
        .expect("add instance-3");
    // The next poll is 30 s away with the defaults: the pool has not seen it.
    assert!(
        pool.topology().instance("instance-3").is_none(),
        "{}",
        pool.topology()
    );
    if silence_the_reader {
        assert!(cluster.blackhole("instance-2", true));
    }
    let crashed = Instant::now();
    cluster
        .failover("instance-3", None)
        .await
        .expect("failover");
    let after = first_write_on(&pool, "instance-3", crashed, Duration::from_secs(15)).await;
    assert!(
        after.is_some(),
        "no write reached the instance the pool never knew within 15 s: {}",
        pool.topology()
    );
    eprintln!(
        "{test}: first write on the unknown new writer {:?} after the crash",
        after.unwrap_or_default()
    );
    pool.close().await;
}

/// A writer that goes silent while no other instance is promoted (a network fault between
/// this process and the writer alone): panic mode ends once the readers' topologies have
/// agreed for 15 s, writer checkouts then fail at once instead of waiting out
/// `failover_timeout`, it does not start again while the writer stays silent, reads go on,
/// and writes come back when the writer answers again.
async fn panic_mode_ends_when_the_readers_agree<F: Flavour>(test: &str) {
    support::trace();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    pool.execute("SELECT 1").await.expect("writer");
    assert!(cluster.blackhole("instance-1", true));
    let silenced = Instant::now();
    // A writer checkout begun during the failover, no timeout of its own: it ends with the
    // failover, not at `failover_timeout`.
    let failing_over =
        eventually(Duration::from_secs(10), || async { !pool.health().writes }).await;
    assert!(
        failing_over,
        "the silent writer was never seen down: {:?}",
        pool.health()
    );
    let during = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let held = pool.hold(Role::Writer).await;
            (held.is_err(), Instant::now())
        })
    };
    // Whether a writer checkout gives its answer at once (an error: the silent writer),
    // rather than waiting for a failover to end.
    let answers_at_once = || async {
        tokio::time::timeout(Duration::from_secs(2), pool.hold(Role::Writer))
            .await
            .is_ok_and(|held| held.is_err())
    };
    let settled = eventually(Duration::from_secs(35), answers_at_once).await;
    assert!(
        settled,
        "panic mode did not end within 35 s although the readers kept naming the same writer: {}",
        pool.topology()
    );
    let ended = Instant::now();
    eprintln!(
        "{test}: panic mode ended {:?} after the writer went silent",
        silenced.elapsed()
    );
    let (failed, answered) = tokio::time::timeout(Duration::from_secs(40), during)
        .await
        .expect("the checkout begun during the failover never answered")
        .expect("checkout task");
    assert!(
        failed,
        "the checkout begun during the failover got the silent writer"
    );
    assert!(
        answered < ended + Duration::from_secs(3),
        "the checkout begun during the failover answered {:?} after panic mode ended",
        answered.saturating_duration_since(ended)
    );
    // No flap back into panic mode while it stays silent, and reads go on.
    for _ in 0..5 {
        assert!(
            answers_at_once().await,
            "back in panic mode: {}",
            pool.topology()
        );
        F::handle_text(&pool.handle(Role::Reader), "SELECT 'read'")
            .await
            .expect("a read while the writer is silent");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cluster.blackhole("instance-1", false);
    let writes = eventually(Duration::from_secs(15), || async {
        pool.run_text(
            Role::Writer,
            "SELECT pg_catalog.aurora_db_instance_identifier()",
        )
        .await
        .is_ok_and(|id| id == "instance-1")
    })
    .await;
    assert!(
        writes,
        "no write once the writer answered again: {}",
        pool.topology()
    );
    pool.close().await;
}

/// With the default settings a process holds one background connection per instance: the
/// writer's probe also reads the topology for the monitor.
async fn one_background_connection_per_instance<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    pool.execute("SELECT 1").await.expect("writer");
    let cluster_id = pool.config().cluster_id.clone();
    // Past the first poll and a few probe rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in cluster.instance_ids() {
        let mut background = 0;
        for purpose in ["aurora-pool-monitor", "aurora-pool-probe"] {
            background +=
                support::connections_named(&cluster, &id, &format!("{purpose}:{cluster_id}")).await;
        }
        assert_eq!(background, 1, "background connections on {id}");
    }
    pool.close().await;
}

flavour_tests!(
    panic_mode_ends_when_the_readers_agree,
    one_background_connection_per_instance,
    panic_mode_finds_a_writer_it_never_knew,
    panic_mode_reads_the_topology_through_the_url_host,
    two_writers_get_one_verdict,
    no_write_reaches_a_demoted_writer,
    a_writer_failure_costs_reads_nothing,
    writes_follow_a_crashed_writer_with_defaults,
    a_silent_writer_is_declared_dead_with_defaults,
    writes_follow_a_black_holed_writer_with_defaults,
    a_saturated_writer_is_busy_not_dead,
    a_write_on_a_reader_is_the_callers_error,
    a_handed_out_pool_closed_by_its_user_is_replaced,
    the_retry_time_limit_bounds_the_whole_call,
);

/// CPU time of the calling thread, from `/proc/thread-self/stat` (Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the
    // 13th, in clock ticks (100 per second on Linux).
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

/// A strict-reader checkout with no reader waits for the routing without spinning: on a
/// current-thread runtime every task of the pool runs on this thread, so its CPU time is
/// the pool's.
async fn a_reader_wait_does_not_spin<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = connect::<F>(
        &cluster,
        test,
        "failover_mode=strict_reader&failover_timeout_ms=1500",
    )
    .await;
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let err = pool
        .instance_id(Role::Reader)
        .await
        .expect_err("no reader exists");
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    assert!(err.is_failover_failed() || err.is_no_reader(), "{err:?}");
    assert!(
        cpu < wall / 3,
        "waiting {wall:?} for a reader burned {cpu:?} of CPU"
    );
    pool.close().await;
}

#[tokio::test]
async fn sqlx_reader_wait_does_not_spin() {
    a_reader_wait_does_not_spin::<aurora_pool::AuroraPool>("sqlx-reader-wait-spin").await;
}

#[cfg(feature = "deadpool")]
#[tokio::test]
async fn deadpool_reader_wait_does_not_spin() {
    a_reader_wait_does_not_spin::<aurora_pool::deadpool::AuroraPool>("deadpool-reader-wait-spin")
        .await;
}
