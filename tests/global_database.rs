//! Aurora Global Database (#25): one cluster across two emulated regions. The dialect is
//! detected, reads stay in the home region, writes follow a cross-region switchover, a
//! lagging reader is skipped, and every URL of the global database shares one monitor.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_pool::auth::{ConnectTarget, CredentialProvider, Credentials};
use aurora_pool::testing::LocalCluster;
use aurora_pool::{BoxFuture, Dialect, Role};
use support::flavour::{Flavour, INSTANCE_ID, connect, flavour_tests, with_provider};
use support::load::{Load, WRITE_PATHS};
use support::{eventually, unique_cluster_id};

/// #25: the new primary region's writer takes the writes within this long of its promotion
/// becoming visible, through every path, with default settings; and only it from then on.
/// The tests that assert it run alone in this binary ([`support::timed`]), in a test build
/// of the crate optimised as a release build is (`scripts/test.sh`; Cargo.toml says why).
const MOVE_BOUND: Duration = Duration::from_millis(500);

/// Said when a path misses [`MOVE_BOUND`] in a build with debug assertions: there, sqlx's
/// SCRAM rounds run unoptimised in this package and take most of the client's CPU.
fn build_note() -> &'static str {
    match cfg!(debug_assertions) {
        true => {
            " (this is an unoptimised test build: scripts/test.sh runs this binary optimised, as Cargo.toml says)"
        }
        false => "",
    }
}

/// A write that takes a moment (so that writes are in flight when the switchover starts)
/// and names the instance that took it.
const WRITE: &str = "INSERT INTO global_t SELECT 1 FROM pg_catalog.pg_sleep(0.05) \
                     RETURNING pg_catalog.aurora_db_instance_identifier()";

const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";

/// instance-1 (the writer) and instance-2 in us-east-1; instance-3 and instance-4 in
/// us-west-2.
async fn global_cluster() -> LocalCluster {
    LocalCluster::builder()
        .global_regions(&[(EAST, 2), (WEST, 2)])
        .start()
        .await
        .expect("global cluster")
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// The instances reads reach: through the shared readers' pool (`reader()`) and through
/// checkouts by instance (`acquire(Reader)`). (The sqlx readers' pool may hold all its
/// connections on one reader: its connects start before the rotation moves it on.)
async fn reads_of<F: Flavour>(pool: &F) -> BTreeSet<String> {
    let mut seen = F::spread_of(&pool.handle(Role::Reader), 24).await;
    for _ in 0..16 {
        seen.insert(pool.instance_id(Role::Reader).await.expect("read"));
    }
    seen
}

/// When the promotion of `instance` becomes visible: the global status on it (what every
/// topology read asks) names it the writer. Polled on a connection of its own, every 5 ms.
/// The emulation ends recovery first and updates its catalog right after: returns both
/// moments.
async fn promotion_visible(cluster: &LocalCluster, instance: &str) -> (Instant, Instant) {
    let mut watcher = support::direct_connection(cluster, instance).await;
    let mut out_of_recovery = None;
    loop {
        let (in_recovery, writer): (bool, Option<String>) = sqlx::query_as(
            "SELECT pg_catalog.pg_is_in_recovery(), (SELECT server_id FROM \
             aurora_global_db_instance_status() WHERE session_id = 'MASTER_SESSION_ID')",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("watching the promoted instance");
        if !in_recovery && out_of_recovery.is_none() {
            out_of_recovery = Some(Instant::now());
        }
        if writer.as_deref() == Some(instance) {
            tracing::info!("test: promotion visible");
            return (out_of_recovery.unwrap_or_else(Instant::now), Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prints, for every write path, when its first write reached `instance` after `visible`
/// against #25's bound; returns the paths that did not reach it within the bound.
fn report_paths(
    test: &str,
    load: &Load,
    instance: &str,
    visible: Instant,
) -> Vec<support::load::Path> {
    let mut late = Vec::new();
    for path in WRITE_PATHS {
        let first = load.first_on(path, instance, visible);
        let verdict = match first {
            Some(after) if after <= MOVE_BOUND => "within the bound",
            Some(_) => "OVER THE BOUND",
            None => "never",
        };
        println!(
            "{test}: {path:?}: first write on {instance} {first:?} after its promotion became visible ({verdict} of {MOVE_BOUND:?})"
        );
        if first.is_none_or(|after| after > MOVE_BOUND) {
            late.push(path);
        }
    }
    late
}

/// What both writer moves assert once [`MOVE_BOUND`] has passed after the promotion became
/// `visible`: every path reached `new` within it (`late`, from [`report_paths`], is empty); then, with
/// the load stopped, every write landed on `old` or `new`, and every write begun after the
/// window on `new`.
async fn writes_moved<F: Flavour>(
    pool: &F,
    load: Load,
    late: Vec<support::load::Path>,
    old: &str,
    new: &str,
    visible: Instant,
) {
    assert!(
        late.is_empty(),
        "no write through {late:?} reached {new} within {MOVE_BOUND:?} of its promotion becoming visible{}: {}",
        build_note(),
        pool.topology()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = load.stop(Duration::from_secs(5)).await;
    let answered = load.answered_by();
    assert!(
        answered.iter().all(|id| id == old || id == new),
        "writes answered by {answered:?}"
    );
    let strays = load.strays_after(visible + MOVE_BOUND, new);
    assert!(
        strays.is_empty(),
        "writes after the move that did not land on the new writer: {strays:?}"
    );
}

async fn reads_stay_home_and_writes_follow_a_cross_region_switchover<F: Flavour>(test: &str) {
    support::trace();
    let _alone = support::timed().await;
    let cluster = global_cluster().await;
    let pool: F = connect(&cluster, test, &format!("failover_home_region={WEST}")).await;
    let topology = pool.topology();
    assert_eq!(topology.dialect(), Dialect::GlobalAuroraPg, "{topology}");
    assert_eq!(
        topology.instance("instance-3").and_then(|i| i.region()),
        Some(WEST)
    );
    assert_eq!(topology.writer().region(), Some(EAST));
    // Reads: the home region's readers only, never the other region's reader.
    assert_eq!(reads_of(&pool).await, set(&["instance-3", "instance-4"]));
    let writer = pool.handle(Role::Writer);
    assert_eq!(
        F::handle_text(&writer, INSTANCE_ID).await.expect("write"),
        "instance-1"
    );
    pool.execute("CREATE TABLE global_t (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "global_t").await;

    // Writes keep coming through every path while the primary region moves to us-west-2,
    // more of them in flight than the writer's pool has connections, none with a timeout.
    let load = Load::start(&pool, Role::Writer, WRITE, &WRITE_PATHS);
    tokio::time::sleep(Duration::from_millis(700)).await;
    load.assert_in_flight_beyond(
        pool.config().writer.max_connections,
        "when the switchover began",
    );
    let promotion_visible = promotion_visible(&cluster, "instance-3");
    let switch = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster
            .switchover_region("instance-3")
            .await
            .expect("cross-region switchover");
    };
    let ((out_of_recovery, visible), ()) = tokio::join!(promotion_visible, switch);
    tokio::time::sleep_until((visible + MOVE_BOUND).into()).await;
    let late = report_paths(test, &load, "instance-3", visible);
    if let Some(first) = WRITE_PATHS
        .iter()
        .filter_map(|&path| load.first_on(path, "instance-3", out_of_recovery))
        .min()
    {
        println!(
            "{test}: first write on the new primary region {first:?} after instance-3 left recovery"
        );
    }
    writes_moved(&pool, load, late, "instance-1", "instance-3", visible).await;
    let new_writer = pool.topology();
    assert_eq!(new_writer.writer().id(), "instance-3", "{new_writer}");
    assert_eq!(new_writer.writer().region(), Some(WEST));
    // The home region keeps its remaining reader; the old primary region serves no reads.
    let moved = eventually(Duration::from_secs(10), || async {
        reads_of(&pool).await == set(&["instance-4"])
    })
    .await;
    assert!(moved, "reads left the home region: {}", pool.topology());
    pool.close().await;
}

/// #25 item 5: a crash of the primary region's writer, followed by a promotion in the same
/// region. See [`a_writer_crash_is_followed`].
async fn an_in_region_crash_is_followed_and_reads_stay_home<F: Flavour>(test: &str) {
    a_writer_crash_is_followed::<F>(test, &["instance-1"], "instance-2").await;
}

/// #25 item 5: the primary region lost (its writer and its reader crash), and an unplanned
/// cross-region failover to the home region's instance-3. See [`a_writer_crash_is_followed`].
async fn a_cross_region_failover_is_followed_and_reads_stay_home<F: Flavour>(test: &str) {
    a_writer_crash_is_followed::<F>(test, &["instance-1", "instance-2"], "instance-3").await;
}

/// With default settings (and the home region us-west-2): 30 writers in flight through
/// every path, no caller timeout, when the instances `lost` crash (instance-1, the writer,
/// first); `to` is promoted half a second later. Every path writes on `to` within
/// [`MOVE_BOUND`] of its promotion becoming visible (each path's figure is printed); no
/// write lands anywhere else from then on; reads through the kept `reader()` handle and
/// `acquire` stay on the home region's readers throughout (the promoted instance serves
/// reads as the writer only as the documented fallback, once promoted, while no other home
/// reader is up).
async fn a_writer_crash_is_followed<F: Flavour>(test: &str, lost: &[&str], to: &str) {
    support::trace();
    let _alone = support::timed().await;
    let cluster = global_cluster().await;
    let pool: F = connect(&cluster, test, &format!("failover_home_region={WEST}")).await;
    assert_eq!(reads_of(&pool).await, set(&["instance-3", "instance-4"]));
    pool.execute("CREATE TABLE global_t (n int)")
        .await
        .expect("create");
    support::replicated(&cluster, "global_t").await;

    let reads = Load::start(
        &pool,
        Role::Reader,
        support::flavour::HELD_INSTANCE_ID,
        &[
            support::load::Path::KeptHandle,
            support::load::Path::Acquire,
        ],
    );
    let load = Load::start(&pool, Role::Writer, WRITE, &WRITE_PATHS);
    tokio::time::sleep(Duration::from_millis(700)).await;
    load.assert_in_flight_beyond(
        pool.config().writer.max_connections,
        "when the writer crashed",
    );
    let cross_region = cluster.region_of(to) != cluster.region_of("instance-1");
    let crash_and_promote = async {
        for id in lost {
            cluster.crash(id).await.expect("crash");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let promoted = if cross_region {
            cluster.fail_over_region(to).await
        } else {
            cluster.failover(to, None).await
        };
        promoted.expect("failover");
    };
    let ((_, visible), ()) = tokio::join!(promotion_visible(&cluster, to), crash_and_promote);
    tokio::time::sleep_until((visible + MOVE_BOUND).into()).await;
    let late = report_paths(test, &load, to, visible);
    writes_moved(&pool, load, late, "instance-1", to, visible).await;
    let reads = reads.stop(Duration::from_secs(5)).await;
    // Reads: the home region's readers; the writer only as the documented fallback while
    // no home reader is up (a replica the failover had to rebuild), never the other
    // region's instances.
    let answers = reads.answers();
    assert!(!answers.is_empty(), "no read was answered");
    let home = |id: &str| cluster.region_of(id).as_deref() == Some(WEST);
    let away: Vec<_> = answers
        .iter()
        .filter(|(started, id)| !(home(id) || (id == to && *started >= visible)))
        .collect();
    assert!(away.is_empty(), "reads left the home region: {away:?}");
    let on_writer = answers
        .iter()
        .filter(|(started, id)| id == to && *started >= visible)
        .count();
    println!(
        "{test}: {} reads, {on_writer} on the new writer after its promotion",
        answers.len()
    );
    assert_eq!(pool.topology().writer().id(), to);
    pool.close().await;
}

async fn a_lagging_reader_serves_no_reads<F: Flavour>(test: &str) {
    let _beside = support::untimed().await;
    let cluster = global_cluster().await;
    let pool: F = connect(
        &cluster,
        test,
        &format!("failover_home_region={WEST}&max_replica_lag_ms=1000&cluster_topology_refresh_rate_ms=300"),
    )
    .await;
    assert!(
        reads_of(&pool)
            .await
            .is_subset(&set(&["instance-3", "instance-4"]))
    );
    cluster
        .set_replica_lag("instance-4", 5000.0)
        .await
        .expect("lag");
    let skipped = eventually(Duration::from_secs(10), || async {
        reads_of(&pool).await == set(&["instance-3"])
    })
    .await;
    assert!(
        skipped,
        "the lagging reader kept serving: {}",
        pool.topology()
    );
    assert_eq!(
        pool.topology()
            .instance("instance-4")
            .and_then(|i| i.replica_lag_ms()),
        Some(5000.0)
    );
    // Back under the bound: it serves again (checkouts by instance: the shared readers'
    // pool keeps the connections it has on instance-3).
    cluster
        .set_replica_lag("instance-4", 10.0)
        .await
        .expect("lag");
    let back = eventually(Duration::from_secs(10), || async {
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            seen.insert(pool.instance_id(Role::Reader).await.expect("read"));
        }
        seen.contains("instance-4")
    })
    .await;
    assert!(back, "the reader never came back: {}", pool.topology());
    pool.close().await;
}

async fn with_no_home_reader_reads_use_the_writer_or_wait<F: Flavour>(test: &str) {
    let _beside = support::untimed().await;
    let cluster = LocalCluster::builder()
        .global_regions(&[(EAST, 2), (WEST, 1)])
        .start()
        .await
        .expect("global cluster");
    // The home region's only instance is a reader; with it down, home-reader-or-writer
    // reads go to the writer (in the other region), never to the other region's reader.
    let pool: F = connect(
        &cluster,
        test,
        &format!("failover_home_region={WEST}&failure_detection_interval_ms=300"),
    )
    .await;
    assert_eq!(reads_of(&pool).await, set(&["instance-3"]));
    cluster.crash("instance-3").await.expect("crash");
    let down = eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance("instance-3")
            .is_some_and(|i| !i.is_available())
    })
    .await;
    assert!(
        down,
        "instance-3 was never declared down: {}",
        pool.topology()
    );
    let to_writer = eventually(Duration::from_secs(10), || async {
        reads_of(&pool).await == set(&["instance-1"])
    })
    .await;
    assert!(
        to_writer,
        "reads did not fall back to the writer: {}",
        pool.topology()
    );
    pool.close().await;
}

/// Records every target the pool asks credentials for, and gives the cluster's password.
#[derive(Debug, Clone)]
struct RecordingProvider {
    password: String,
    asked: Arc<Mutex<Vec<ConnectTarget>>>,
}

impl CredentialProvider for RecordingProvider {
    fn credentials<'a>(
        &'a self,
        target: &'a ConnectTarget,
    ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
        self.asked.lock().expect("asked").push(target.clone());
        let password = self.password.clone();
        Box::pin(async move { Ok(Credentials::new(password)) })
    }
}

/// Every connection to an instance, the pools' and the monitor's (its probes of every
/// instance, its topology reads, the confirmation of a new writer) alike, asks the
/// credential provider for that instance's own region: an IAM token signed for another
/// region is refused. Followed across a cross-region switchover.
async fn credentials_are_asked_for_each_instances_region<F: Flavour>(test: &str) {
    let _beside = support::untimed().await;
    let cluster = global_cluster().await;
    let asked = Arc::new(Mutex::new(Vec::new()));
    let provider = RecordingProvider {
        password: cluster.password().to_owned(),
        asked: asked.clone(),
    };
    let pool: F = with_provider(
        &cluster,
        test,
        &format!("&failover_home_region={WEST}"),
        provider,
    )
    .await;
    let regions: Vec<(String, std::net::SocketAddr, &str)> = [
        ("instance-1", EAST),
        ("instance-2", EAST),
        ("instance-3", WEST),
        ("instance-4", WEST),
    ]
    .into_iter()
    .map(|(id, region)| {
        let addr = cluster.instance_addr(id).expect("instance");
        (id.to_owned(), addr, region)
    })
    .collect();
    let asked_of = |id: &str| {
        let (_, addr, _) = regions.iter().find(|(i, ..)| i == id).expect("instance");
        asked
            .lock()
            .expect("asked")
            .iter()
            .filter(|t| t.port == addr.port())
            .count()
    };
    pool.instance_id(Role::Writer).await.expect("write");
    reads_of(&pool).await;
    // The probes reach every instance, the other region's readers included.
    let probed = eventually(Duration::from_secs(10), || async {
        ["instance-1", "instance-2", "instance-3", "instance-4"]
            .iter()
            .all(|id| asked_of(id) > 0)
    })
    .await;
    assert!(
        probed,
        "not every instance was connected to: {:?}",
        asked.lock()
    );
    cluster
        .switchover_region("instance-3")
        .await
        .expect("cross-region switchover");
    let moved = eventually(Duration::from_secs(10), || async {
        pool.instance_id(Role::Writer).await.ok().as_deref() == Some("instance-3")
    })
    .await;
    assert!(
        moved,
        "writes never reached instance-3: {}",
        pool.topology()
    );
    let asked = asked.lock().expect("asked").clone();
    // The URL's host (the cluster endpoint: discovery, panic-mode reads through it) is no
    // instance: its credentials follow the URL's region (`iam_region` or the host name).
    let url_host = cluster.cluster_endpoint();
    for target in asked.iter().filter(|t| t.port != url_host.port()) {
        let (id, _, region) = regions
            .iter()
            .find(|(_, addr, _)| addr.port() == target.port)
            .unwrap_or_else(|| panic!("a connection to an address of no instance: {target:?}"));
        assert_eq!(
            target.region.as_deref(),
            Some(*region),
            "credentials for {id} asked in the wrong region: {target:?}"
        );
    }
    pool.close().await;
}

flavour_tests!(
    reads_stay_home_and_writes_follow_a_cross_region_switchover,
    an_in_region_crash_is_followed_and_reads_stay_home,
    a_cross_region_failover_is_followed_and_reads_stay_home,
    credentials_are_asked_for_each_instances_region,
    a_lagging_reader_serves_no_reads,
    with_no_home_reader_reads_use_the_writer_or_wait,
);

/// A global database reached through an address names no region: the home region must be
/// given, and the error says which parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_database_without_a_home_region_is_a_config_error() {
    let _beside = support::untimed().await;
    let cluster = global_cluster().await;
    let config = support::flavour::config(&cluster, "global-no-home", "");
    let err = aurora_pool::AuroraPool::connect_with(config)
        .await
        .expect_err("no home region");
    assert!(err.is_config(), "{err:?}");
    assert_eq!(err.parameter(), Some("failover_home_region"), "{err}");
    assert!(format!("{err:#}").contains(WEST), "{err}");
}

/// One monitor for the whole global database, whichever URL a pool was opened with: the
/// cluster endpoint (the primary region) and a secondary region's instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_url_of_the_global_database_shares_one_monitor() {
    let _beside = support::untimed().await;
    let cluster = global_cluster().await;
    let id = unique_cluster_id("global-shared");
    let primary = aurora_pool::AuroraPool::connect(&format!(
        "{}&cluster_id={id}&failover_home_region={EAST}",
        cluster.url()
    ))
    .await
    .expect("through the cluster endpoint");
    let secondary = aurora_pool::AuroraPool::connect(&format!(
        "{}?instance_endpoints={}&cluster_id={id}&failover_home_region={WEST}",
        cluster.instance_url("instance-4").expect("instance"),
        cluster.instance_endpoints_param()
    ))
    .await
    .expect("through a secondary region's instance");
    let one = eventually(Duration::from_secs(5), || async {
        support::monitor_connections(&cluster, &id).await == 1
    })
    .await;
    assert!(
        one,
        "one monitor for both URLs: {} connections",
        support::monitor_connections(&cluster, &id).await
    );
    assert_eq!(primary.topology().version(), secondary.topology().version());
    // A pool opened through a secondary region's instance writes to the primary region's
    // writer, never to where its URL points.
    let written: String = sqlx::query_scalar(INSTANCE_ID)
        .fetch_one(&secondary.writer())
        .await
        .expect("write through the secondary region's pool");
    assert_eq!(written, "instance-1");
    // Each pool reads in its own home region.
    assert_eq!(reads_of(&primary).await, set(&["instance-2"]));
    assert_eq!(
        reads_of(&secondary).await,
        set(&["instance-3", "instance-4"])
    );
    primary.close().await;
    secondary.close().await;
}
