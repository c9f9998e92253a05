//! A refused login is a credentials problem, not a dead instance: health probes that cannot
//! log in declare nothing down and start no failover.

mod support;

use std::time::Duration;

use aurora_pool::ClusterEvent;
use aurora_pool::testing::LocalCluster;
use support::flavour::{Flavour, connect, flavour_tests};
use support::{AGGRESSIVE, drain_events, eventually};

async fn probes_that_cannot_log_in_declare_nothing_down<F: Flavour>(test: &str) {
    support::trace();
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: F = connect(&cluster, test, AGGRESSIVE).await;
    let mut events = pool.events();
    let probes = format!("aurora-pool-probe:{}", support::unique_cluster_id(test));
    // The password changes under the pool, and the probes have to log in again.
    alter_role_under_the_probes(&cluster, &probes, "PASSWORD 'rotated-elsewhere'").await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let topology = pool.topology();
    assert!(
        topology.instances().iter().all(|i| i.is_available()),
        "{topology}"
    );
    assert_eq!(topology.writer().id(), "instance-1");
    let seen = drain_events(&mut events);
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ClusterEvent::InstanceDown { .. } | ClusterEvent::WriterChanged { .. }
        )),
        "{seen:?}"
    );
    // The probes are still trying (and failing) to log in.
    assert_eq!(
        support::connections_named(&cluster, "instance-1", &probes).await,
        0
    );
    pool.close().await;
}

/// Once the probes (application name `probes`) are connected, alters the login role with
/// `change` and ends the probes' sessions: they have to log in again.
async fn alter_role_under_the_probes(cluster: &LocalCluster, probes: &str, change: &str) {
    let connected = eventually(Duration::from_secs(10), || async {
        support::connections_named(cluster, "instance-1", probes).await == 1
    })
    .await;
    assert!(connected, "the probes never connected");
    let user = cluster.user().to_owned();
    cluster
        .psql(
            "instance-1",
            "postgres",
            &format!("ALTER ROLE \"{user}\" {change}"),
        )
        .await
        .expect("alter role");
    cluster
        .psql(
            "instance-1",
            "postgres",
            &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{probes}'"),
        )
        .await
        .expect("terminate probes");
}

/// Connects, then `ALTER ROLE .. NOLOGIN` under the probes: every new login is answered
/// `28000`.
async fn refuse_access<F: Flavour>(cluster: &LocalCluster, test: &str) -> F {
    let pool: F = connect(cluster, test, "").await;
    let probes = format!("aurora-pool-probe:{}", support::unique_cluster_id(test));
    alter_role_under_the_probes(cluster, &probes, "NOLOGIN").await;
    pool
}

/// On an RDS Multi-AZ DB cluster `28000` means an instance rebooting (the AWS drivers'
/// rule): the probes declare the writer unreachable, and it comes back once logins work.
/// With the default settings.
async fn access_refused_on_multi_az_is_a_reboot<F: Flavour>(test: &str) {
    let cluster = LocalCluster::builder()
        .instances(2)
        .flavour(aurora_pool::testing::Flavour::RdsMultiAz)
        .start()
        .await
        .expect("multi-az cluster");
    let pool: F = refuse_access(&cluster, test).await;
    let writer = pool.topology().writer().id().to_owned();
    let down = eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance(&writer)
            .is_some_and(|i| !i.is_available())
    })
    .await;
    assert!(
        down,
        "28000 on Multi-AZ did not count as unreachable: {}",
        pool.topology()
    );
    let user = cluster.user().to_owned();
    cluster
        .psql(
            "instance-1",
            "postgres",
            &format!("ALTER ROLE \"{user}\" LOGIN"),
        )
        .await
        .expect("alter role");
    let back = eventually(Duration::from_secs(15), || async {
        pool.topology().instances().iter().all(|i| i.is_available())
    })
    .await;
    assert!(back, "the writer did not come back: {}", pool.topology());
    pool.close().await;
}

/// On Aurora the same `28000` is a refused login: nothing is declared down.
async fn access_refused_on_aurora_is_a_login_error<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool: F = refuse_access(&cluster, test).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let topology = pool.topology();
    assert!(
        topology.instances().iter().all(|i| i.is_available()),
        "{topology}"
    );
    pool.close().await;
}

flavour_tests!(
    probes_that_cannot_log_in_declare_nothing_down,
    access_refused_on_multi_az_is_a_reboot,
    access_refused_on_aurora_is_a_login_error,
);
