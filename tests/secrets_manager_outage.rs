//! Secrets Manager unreachable (black-holed: connections accepted, never answered) for
//! longer than the secret's cache lifetime, with a healthy database: checkouts, the
//! probes' reconnects and a new instance's pool go on with the secret fetched before.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aurora_pool::Role;
use aurora_pool::secrets_manager::SecretsManagerSettings;
use aurora_pool::testing::{LocalCluster, MotoServer};
use support::eventually;
use support::flavour::{Flavour, flavour_tests};
use support::secrets::{create_secret, pool_on_secret};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

/// A TCP forwarder to `upstream` that can black-hole: connections accepted while it is on
/// get no answer, and those open when it is switched on stop forwarding.
struct BlackHole {
    address: String,
    on: Arc<AtomicBool>,
}

impl BlackHole {
    async fn start(upstream: String) -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let on = Arc::new(AtomicBool::new(false));
        let hole = on.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (hole, upstream) = (hole.clone(), upstream.clone());
                tokio::spawn(async move {
                    if hole.load(Ordering::SeqCst) {
                        // Held open, never answered.
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = async {
                            while !hole.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        } => {}
                    }
                });
            }
        });
        BlackHole { address, on }
    }
}

async fn secrets_manager_down_longer_than_the_cache<F: Flavour>(test: &str) {
    let cluster = LocalCluster::builder()
        .instances(2)
        .spare_instances(1)
        .tls(true)
        .start()
        .await
        .expect("cluster");
    let moto = MotoServer::start().await.expect("moto");
    let aws = moto.secrets_manager_client().await;
    create_secret(&aws, "orders/outage", &cluster).await;
    let upstream = moto.endpoint().trim_start_matches("http://").to_owned();
    let hole = BlackHole::start(upstream).await;
    // The SDK client of the moto server, sent through the black hole.
    let client = aws_sdk_secretsmanager::Client::from_conf(
        aws.config()
            .to_builder()
            .endpoint_url(&hole.address)
            .build(),
    );
    let mut settings = SecretsManagerSettings::new("orders/outage");
    settings.expiration = Duration::from_secs(1);
    let cluster_id = support::unique_cluster_id(test);
    // The default settings, but for a topology poll every 500 ms (to see the new instance).
    let (pool, _): (F, _) = pool_on_secret(
        &cluster,
        test,
        settings,
        client,
        "&cluster_topology_refresh_rate_ms=500",
    )
    .await;
    pool.fresh_login(Role::Writer).await.expect("writer");
    pool.fresh_login(Role::Reader).await.expect("reader");

    hole.on.store(true, Ordering::SeqCst);
    // Past the secret's cache lifetime.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Checkouts that log in anew go on, none held up for long.
    for role in [Role::Writer, Role::Reader, Role::Writer, Role::Reader] {
        let started = Instant::now();
        let login = tokio::time::timeout(Duration::from_secs(20), pool.fresh_login(role)).await;
        assert!(
            matches!(login, Ok(Ok(_))),
            "a {role:?} login with Secrets Manager black-holed: {login:?}"
        );
        eprintln!("{test}: {role:?} login took {:?}", started.elapsed());
    }

    // The probes log in again: nothing is declared down.
    let probes = format!("aurora-pool-probe:{cluster_id}");
    for id in cluster.instance_ids() {
        let _ = cluster
            .psql(
                &id,
                "postgres",
                &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{probes}'"),
            )
            .await;
    }
    let reconnected = eventually(Duration::from_secs(15), || async {
        support::connections_named(&cluster, "instance-1", &probes).await == 1
    })
    .await;
    assert!(reconnected, "the writer's probe did not log in again");
    let topology = pool.topology();
    assert!(
        topology.instances().iter().all(|i| i.is_available()),
        "{topology}"
    );

    // A new instance gets a pool, which logs in with the secret fetched before.
    cluster
        .add_instance("instance-3")
        .await
        .expect("add instance-3");
    let reached = eventually(Duration::from_secs(20), || async {
        pool.fresh_login(Role::Reader).await.ok().as_deref() == Some("instance-3")
    })
    .await;
    assert!(
        reached,
        "no read reached the new instance with Secrets Manager black-holed: {}",
        pool.topology()
    );
    pool.close().await;
}

flavour_tests!(secrets_manager_down_longer_than_the_cache);
