//! A silent (black-holed) instance under load, the way a new user meets it: calls in flight on
//! every path when the silence starts, more of them than the pool has connections, and no
//! timeout on the caller's side. Each scenario asserts its issue's bound (#22): measured from
//! the promotion for a writer, from the silence for a reader.

mod support;

use std::time::{Duration, Instant};

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::flavour::{Flavour, connect, flavour_tests};
use support::load::{Load, Path, WRITE_PATHS};

/// A write that takes a moment (so that calls are in flight when the silence starts) and
/// names the instance that took it.
const WRITE: &str = "INSERT INTO silent_t SELECT 1 FROM pg_catalog.pg_sleep(0.05) \
                     RETURNING pg_catalog.aurora_db_instance_identifier()";

/// A read that takes a moment and names its instance.
const READ: &str =
    "SELECT pg_catalog.aurora_db_instance_identifier() FROM pg_catalog.pg_sleep(0.05)";

/// A cluster of `instances` (its slot held), a pool on it, and writes running through
/// every path for 700 ms already: calls are in flight when the test's fault starts.
async fn writes_under_load<F: Flavour>(
    test: &str,
    instances: usize,
    params: &str,
) -> (tokio::sync::SemaphorePermit<'static>, LocalCluster, F, Load) {
    let slot = support::cluster_slot().await;
    let cluster = LocalCluster::start(instances).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, params).await;
    pool.execute("CREATE TABLE silent_t (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "silent_t").await;
    let load = Load::start(&pool, Role::Writer, WRITE, &WRITE_PATHS);
    tokio::time::sleep(Duration::from_millis(700)).await;
    (slot, cluster, pool, load)
}

/// Waits (up to 10 s) until the pool declares `instance` dead; returns when it saw it.
async fn declared_dead<F: Flavour>(pool: &F, instance: &str) -> Instant {
    let declared = support::eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance(instance)
            .is_some_and(|i| !i.is_available())
    })
    .await;
    assert!(declared, "{instance} was not declared dead");
    Instant::now()
}

/// The writer black-holed under load and instance-2 promoted right behind it: every path
/// writes on instance-2 within `bound` of the promotion, and every call in flight on the
/// silent writer has ended by then.
async fn writer_black_hole<F: Flavour>(test: &str, params: &str, bound: Duration) {
    let (_slot, cluster, pool, load) = writes_under_load::<F>(test, 2, params).await;
    assert!(cluster.blackhole("instance-1", true));
    let silenced = Instant::now();
    let in_flight = load.assert_in_flight_beyond(
        pool.config().writer.max_connections,
        "when the writer went silent",
    );
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let promoted = Instant::now();
    eprintln!(
        "{test}: {in_flight} calls in flight at the silence; promotion done {:?} after it",
        promoted - silenced
    );
    tokio::time::sleep_until((promoted + bound).into()).await;
    let deadline = promoted + bound;
    let late = load.late_paths(test, &WRITE_PATHS, "instance-2", promoted, bound);
    let unfinished = load.unfinished(promoted, deadline);
    assert!(
        late.is_empty(),
        "no write through {late:?} reached the new writer within {bound:?} of the promotion; {} calls from before it unfinished: {unfinished:?}; {}",
        unfinished.len(),
        pool.topology()
    );
    assert!(
        unfinished.is_empty(),
        "calls begun before the promotion were still running {bound:?} after it: {unfinished:?}"
    );
    // Once moved, every write lands on the new writer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = load.stop(bound).await;
    let strays = load.strays_after(deadline, "instance-2");
    assert!(
        strays.is_empty(),
        "writes after the move that did not land on the new writer: {strays:?}"
    );
    pool.close().await;
}

async fn a_black_holed_writer_under_load_with_defaults<F: Flavour>(test: &str) {
    writer_black_hole::<F>(test, "", Duration::from_millis(2500)).await;
}

async fn a_black_holed_writer_under_load_tuned<F: Flavour>(test: &str) {
    writer_black_hole::<F>(
        test,
        "failure_detection_interval_ms=250&failure_detection_count=2",
        Duration::from_secs(1),
    )
    .await;
}

/// A slow failover: the writer crashes (refusing connections), the readers stay up and
/// still name it, and Aurora promotes a reader only 20 s later. Writer checkouts through
/// every path wait (none fails: the outage is shorter than `acquire_timeout` and
/// `failover_timeout`), and land on the promoted instance within 2.5 s of the promotion.
async fn a_slow_failover_is_waited_out_with_defaults<F: Flavour>(test: &str) {
    let bound = Duration::from_millis(2500);
    let (_slot, cluster, pool, load) = writes_under_load::<F>(test, 3, "").await;
    load.assert_in_flight_beyond(
        pool.config().writer.max_connections,
        "when the writer crashed",
    );
    cluster.crash("instance-1").await.expect("crash");
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let promoted = Instant::now();
    eprintln!(
        "{test}: promotion done {:?} after the crash",
        promoted - crashed
    );
    tokio::time::sleep_until((promoted + bound).into()).await;
    let late = load.late_paths(test, &WRITE_PATHS, "instance-2", promoted, bound);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = load.stop(Duration::from_secs(5)).await;
    // Calls begun once the crash was known (in flight at the crash they may fail) waited
    // for the new writer instead of failing.
    let failed = load.strays_after(crashed + Duration::from_secs(1), "instance-2");
    assert!(
        late.is_empty(),
        "no write through {late:?} reached the new writer within {bound:?} of the promotion; {}",
        pool.topology()
    );
    assert!(
        failed.is_empty(),
        "writes begun during the outage failed instead of waiting: {failed:?}"
    );
    pool.close().await;
}

/// A slow failover during which the reader that writer checkouts wait on is silent: the
/// first reader, instance-2 (where the writer's pool waits for the promotion), is
/// black-holed and the writer crashes right after; Aurora promotes instance-3 a few seconds
/// later. The logins to instance-2 in flight when it is declared dead end then, and the
/// writer's pool waits on instance-3 instead: writes begun from then on wait, none hangs
/// on the silent reader, and they land on instance-3 within 2.5 s of its promotion,
/// through every path.
async fn a_slow_failover_outlives_the_reader_it_waits_on<F: Flavour>(test: &str) {
    let bound = Duration::from_millis(2500);
    let (_slot, cluster, pool, load) = writes_under_load::<F>(test, 3, "").await;
    load.assert_in_flight_beyond(
        pool.config().writer.max_connections,
        "when the reader went silent",
    );
    assert!(cluster.blackhole("instance-2", true));
    let silenced = Instant::now();
    cluster.crash("instance-1").await.expect("crash");
    let declared = declared_dead(&pool, "instance-2").await;
    tokio::time::sleep_until((silenced + Duration::from_secs(6)).into()).await;
    let waiting = load.in_flight();
    cluster
        .failover("instance-3", None)
        .await
        .expect("failover");
    let promoted = Instant::now();
    eprintln!(
        "{test}: instance-2 declared dead {:?} after its silence; {waiting} writes waiting; promotion done {:?} after the silence",
        declared - silenced,
        promoted - silenced
    );
    tokio::time::sleep_until((promoted + bound).into()).await;
    let late = load.late_paths(test, &WRITE_PATHS, "instance-3", promoted, bound);
    let unfinished = load.unfinished(promoted, promoted + bound);
    assert!(
        late.is_empty(),
        "no write through {late:?} reached the new writer within {bound:?} of the promotion; {} calls from before it unfinished: {unfinished:?}; {}",
        unfinished.len(),
        pool.topology()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = load.stop(Duration::from_secs(5)).await;
    let failed = load.strays_after(declared, "instance-3");
    assert!(
        failed.is_empty(),
        "writes begun after the silent reader was declared dead failed instead of waiting: {failed:?}"
    );
    pool.close().await;
}

/// A reader black-holed under load: every call in flight on it ends within 2.5 s of its
/// being declared dead, and reads go on on the other reader through every path.
async fn a_black_holed_reader_under_load_with_defaults<F: Flavour>(test: &str) {
    let bound = Duration::from_millis(2500);
    let _slot = support::cluster_slot().await;
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let paths = [
        Path::KeptHandle,
        Path::FreshHandle,
        Path::Acquire,
        Path::Run,
    ];
    let load = Load::start(&pool, Role::Reader, READ, &paths);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(cluster.blackhole("instance-2", true));
    let silenced = Instant::now();
    let in_flight = load.in_flight();
    // No promotion follows a reader's silence: the bound runs from the moment the pool
    // declares it dead (the detection itself is bounded in failover_defaults.rs).
    let declared = declared_dead(&pool, "instance-2").await;
    eprintln!(
        "{test}: {in_flight} reads in flight at the silence; declared dead {:?} after it",
        declared - silenced
    );
    tokio::time::sleep_until((declared + bound).into()).await;
    let unfinished = load.unfinished(silenced, declared + bound);
    assert!(
        unfinished.is_empty(),
        "reads begun before the reader went silent were still running {bound:?} after it was declared dead: {unfinished:?}; {}",
        pool.topology()
    );
    let moved = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for path in paths {
        assert!(
            load.first_on(path, "instance-3", moved).is_some(),
            "no read through {path:?} on the other reader"
        );
    }
    let load = load.stop(bound).await;
    let strays = load.strays_after(moved, "instance-3");
    assert!(
        strays.is_empty(),
        "reads after the silent reader was left that failed or went elsewhere: {strays:?}"
    );
    pool.close().await;
}

#[cfg(target_os = "linux")]
mod keepalives {
    use super::*;

    /// The timers of this process's established TCP connections to `peer`, as the kernel lists
    /// them (`/proc/self/net/tcp`): `02` is the keepalive timer.
    fn timers_of_connections_to(peer: std::net::SocketAddr) -> Vec<String> {
        let std::net::SocketAddr::V4(peer) = peer else {
            panic!("LocalCluster listens on IPv4 loopback");
        };
        let wanted = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(peer.ip().octets()),
            peer.port()
        );
        let table = std::fs::read_to_string("/proc/self/net/tcp").expect("the kernel's TCP table");
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let established = fields.get(3) == Some(&"01");
                (fields.get(2) == Some(&wanted.as_str()) && established)
                    .then(|| fields.get(5).unwrap_or(&"").chars().take(2).collect())
            })
            .collect()
    }

    /// Every connection the pool opens (its pools' and its own probes') has TCP keepalives with
    /// the default settings: the kernel runs a keepalive timer on each idle one. With
    /// `keepalives=0` none has.
    async fn every_connection_has_keepalives_by_default<F: Flavour>(test: &str) {
        // Its clusters and pools would load the machine under the timed tests' bounds.
        let _slot = support::cluster_slot().await;
        let cluster = LocalCluster::start(2).await.expect("cluster");
        let writer = cluster.instance_addr("instance-1").expect("writer address");
        let reader = cluster.instance_addr("instance-2").expect("reader address");
        for (params, expected) in [("", "02"), ("keepalives=0", "00")] {
            let pool = connect::<F>(&cluster, &format!("{test}{params}"), params).await;
            pool.execute("SELECT 1").await.expect("writer");
            pool.query_text(Role::Reader, READ).await.expect("reader");
            F::handle_text(&pool.handle(Role::Reader), READ)
                .await
                .expect("reader()");
            // The settings are applied in the background right after each connect (and a
            // socket sending or closing shows another timer for a moment).
            for peer in [writer, reader] {
                let all_set = support::eventually(Duration::from_secs(3), || async {
                    let timers = timers_of_connections_to(peer);
                    !timers.is_empty() && timers.iter().all(|t| t == expected)
                })
                .await;
                assert!(
                    all_set,
                    "with `{params}` the connections to {peer} have timers {:?}, not all {expected}",
                    timers_of_connections_to(peer)
                );
            }
            pool.close().await;
            // The next pool's sockets are told apart from this one's by their absence: a
            // keepalive request of this pool's still in its batch would set the next one's.
            let gone = support::eventually(Duration::from_secs(10), || async {
                timers_of_connections_to(writer).is_empty()
                    && timers_of_connections_to(reader).is_empty()
            })
            .await;
            assert!(gone, "the closed pool's connections stayed open");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    flavour_tests!(every_connection_has_keepalives_by_default);
}

flavour_tests!(
    a_slow_failover_is_waited_out_with_defaults,
    a_slow_failover_outlives_the_reader_it_waits_on,
    a_black_holed_writer_under_load_with_defaults,
    a_black_holed_writer_under_load_tuned,
    a_black_holed_reader_under_load_with_defaults,
);
