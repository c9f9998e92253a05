//! Watch a failover through `AuroraPool`, and measure it.
//!
//! Against your own cluster, during a planned failover (`aws rds failover-db-cluster`):
//!
//! ```text
//! cargo run --release --example failover_probe --features testing -- postgres://user:pw@my-cluster.cluster-xyz.us-east-1.rds.amazonaws.com/db 60
//! ```
//!
//! (or set `DATABASE_URL`; the second argument is how many seconds to run, default 60). It
//! runs a write loop (`SELECT txid_current()`, which needs the writer but touches no table)
//! and a read loop through `AuroraPool`, prints one line per state change (instance served
//! or error kind), and at the end the downtime per role.
//!
//! Without a URL it measures on a local cluster (`testing::LocalCluster`) and prints a table:
//! time from a writer crash to the first successful write with the default settings, and
//! from a black-holed writer to the first successful write with the default settings and
//! with tuned detection, each next to a plain
//! `sqlx::PgPool` on a DNS-style endpoint that keeps pointing at the old writer (watched
//! for 15 s, the usual DNS delay on AWS), and the time from the promotion finishing to the
//! first successful write.
//!
//! The same runs measure the AWS Advanced Python Wrapper (its defaults: `failover_v2` and
//! `host_monitoring_v2`; in the tuned run its failure detection tuned the same way) through
//! `scripts/python_wrapper_writes.py`, when it can: it needs
//! `pip install aws-advanced-python-wrapper "psycopg[binary]"`, and host names for the
//! local endpoints, since its host pattern carries one port for every instance. The cluster
//! then listens on one port per loopback address
//! ([`LocalClusterBuilder::shared_port`](aurora_pool::testing::LocalClusterBuilder::shared_port));
//! add to `/etc/hosts`:
//!
//! ```text
//! 127.0.0.10 cluster.aurora-pool.test
//! 127.0.0.11 instance-1.aurora-pool.test
//! 127.0.0.12 instance-2.aurora-pool.test
//! 127.0.0.13 instance-3.aurora-pool.test
//! ```
//!
//! Without them the table says why the column is empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use aurora_pool::{AuroraPool, RetryPolicy, Role};
use sqlx::postgres::PgConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tokio::task::JoinHandle;

/// Needs the writer (a transaction id cannot be assigned on a standby) but touches no table.
const WRITE_SQL: &str = "SELECT pg_catalog.txid_current()::text";
/// The same on Aurora, naming the instance that served it.
const AURORA_WRITE_SQL: &str = "SELECT pg_catalog.aurora_db_instance_identifier() FROM (SELECT pg_catalog.txid_current()) AS t";
const PAUSE: Duration = Duration::from_millis(10);
/// How long each scenario is watched after the fault: the usual DNS delay on AWS.
const DNS_DELAY: Duration = Duration::from_secs(15);

/// One loop's observations: when each attempt finished and how.
#[derive(Default)]
struct Trace {
    outcomes: Vec<(Duration, Result<String, String>)>,
}

impl Trace {
    /// The first success at or after `after` (served by `on`, when given).
    fn first_success_after(&self, after: Duration, on: Option<&str>) -> Option<Duration> {
        self.outcomes
            .iter()
            .find(|(at, outcome)| {
                *at >= after
                    && outcome
                        .as_ref()
                        .is_ok_and(|served| on.is_none_or(|on| served == on))
            })
            .map(|(at, _)| *at)
    }

    /// The longest stretch without a success.
    fn longest_gap(&self) -> Duration {
        let mut last_ok = Duration::ZERO;
        let mut longest = Duration::ZERO;
        for (at, outcome) in &self.outcomes {
            if outcome.is_ok() {
                longest = longest.max(at.saturating_sub(last_ok));
                last_ok = *at;
            }
        }
        if let Some((end, _)) = self.outcomes.last() {
            longest = longest.max(end.saturating_sub(last_ok));
        }
        longest
    }
}

/// Runs `attempt` every 10 ms until `stop`, printing each change of outcome when `verbose`.
fn spawn_loop<F, Fut>(
    label: &'static str,
    origin: Instant,
    stop: Arc<AtomicBool>,
    verbose: bool,
    attempt: F,
) -> JoinHandle<Trace>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send,
{
    tokio::spawn(async move {
        let mut trace = Trace::default();
        let mut last: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            let outcome = attempt().await;
            let at = origin.elapsed();
            let state = match &outcome {
                Ok(served) => format!("ok on {served}"),
                Err(kind) => format!("error: {kind}"),
            };
            if verbose && last.as_deref() != Some(state.as_str()) {
                println!("{:>9.3}s  {label:<7} {state}", at.as_secs_f64());
                last = Some(state);
            }
            trace.outcomes.push((at, outcome));
            tokio::time::sleep(PAUSE).await;
        }
        trace
    })
}

fn error_kind(err: &aurora_pool::Error) -> String {
    let kind = if err.is_failover() {
        "failover"
    } else if err.is_transaction_state_unknown() {
        "transaction state unknown"
    } else if err.is_failover_failed() {
        "failover failed"
    } else if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "other"
    };
    format!("{kind} ({})", err.sqlstate().unwrap_or("-"))
}

async fn aurora_attempt(pool: AuroraPool, role: Role) -> Result<String, String> {
    let aurora = pool.topology().dialect() == aurora_pool::Dialect::AuroraPg;
    let sql = match (role, aurora) {
        (Role::Writer, true) => AURORA_WRITE_SQL,
        (Role::Writer, false) => WRITE_SQL,
        (Role::Reader, true) => "SELECT pg_catalog.aurora_db_instance_identifier()",
        (Role::Reader, false) => "SELECT pg_catalog.pg_is_in_recovery()::text",
    };
    let served = pool
        .run_with(RetryPolicy::no_retry(), role, move |conn| {
            Box::pin(async move {
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                    .fetch_one(conn)
                    .await
            })
        })
        .await
        .map_err(|err| error_kind(&err))?;
    Ok(match (role, aurora) {
        (_, true) => served,
        (Role::Writer, false) => pool.topology().writer().id().to_owned(),
        (Role::Reader, false) => "a reader".to_owned(),
    })
}

/// A write through a `writer()` handle (kept from before the fault, or taken for this
/// write), bounded as a service would bound it.
async fn kept_attempt(handle: PgPool) -> Result<String, String> {
    let write = sqlx::query_scalar::<_, String>(AURORA_WRITE_SQL).fetch_one(&handle);
    match tokio::time::timeout(Duration::from_secs(2), write).await {
        Err(_) => Err("no answer within 2 s".to_owned()),
        Ok(result) => result.map_err(|err| match err.as_database_error().and_then(|e| e.code()) {
            Some(code) => format!("database error {code}"),
            None => err.to_string(),
        }),
    }
}

async fn plain_attempt(pool: PgPool) -> Result<String, String> {
    // A query in flight when the host is black-holed never returns: bound it, as a service
    // would, so that the loop goes on.
    let write = sqlx::query_scalar::<_, String>(WRITE_SQL).fetch_one(&pool);
    match tokio::time::timeout(Duration::from_secs(2), write).await {
        Err(_) => Err("no answer within 2 s".to_owned()),
        Ok(result) => result
            .map(|_| "the cluster endpoint".to_owned())
            .map_err(|err| match err.as_database_error().and_then(|e| e.code()) {
                Some(code) => format!("database error {code}"),
                None => "connection error".to_owned(),
            }),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let url = args.next().or_else(|| std::env::var("DATABASE_URL").ok());
    match url {
        Some(url) => {
            let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60u64);
            probe_cluster(&url, Duration::from_secs(seconds)).await
        }
        None => measure_locally().await,
    }
}

/// Runs the loops against a real cluster and reports the downtime per role.
async fn probe_cluster(url: &str, length: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let pool = AuroraPool::connect(url).await?;
    println!("topology: {}", pool.topology());
    let mut events = pool.events();
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (p, q) = (pool.clone(), pool.clone());
    let writes = spawn_loop("write", origin, stop.clone(), true, move || {
        aurora_attempt(p.clone(), Role::Writer)
    });
    let reads = spawn_loop("read", origin, stop.clone(), true, move || {
        aurora_attempt(q.clone(), Role::Reader)
    });
    let deadline = tokio::time::sleep(length);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            event = events.recv() => match event {
                Ok(event) => println!("{:>9.3}s  event   {event}", origin.elapsed().as_secs_f64()),
                Err(_) => break,
            },
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (writes, reads) = (writes.await?, reads.await?);
    println!(
        "\nlongest time without a successful write: {:?}",
        writes.longest_gap()
    );
    println!(
        "longest time without a successful read:  {:?}",
        reads.longest_gap()
    );
    pool.close().await;
    Ok(())
}

/// The port every endpoint shares when the Python wrapper is measured.
const SHARED_PORT: u16 = 15432;
/// The domain of the host names the Python wrapper connects to (see the module docs).
const TEST_DOMAIN: &str = "aurora-pool.test";
/// The write loop through the AWS Python wrapper.
const PYTHON_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/scripts/python_wrapper_writes.py"
);

/// Why the AWS Python wrapper cannot be measured here, if it cannot.
async fn python_unavailable() -> Option<String> {
    let import = tokio::process::Command::new("python3")
        .args(["-c", "import aws_advanced_python_wrapper, psycopg"])
        .output()
        .await;
    match import {
        Ok(out) if out.status.success() => {}
        Ok(_) => {
            return Some(
                "not installed (pip install aws-advanced-python-wrapper \"psycopg[binary]\")"
                    .into(),
            );
        }
        Err(err) => return Some(format!("python3 not found: {err}")),
    }
    for (name, last) in [
        ("cluster", 10u8),
        ("instance-1", 11),
        ("instance-2", 12),
        ("instance-3", 13),
    ] {
        let host = format!("{name}.{TEST_DOMAIN}:{SHARED_PORT}");
        let expected = std::net::SocketAddr::from(([127, 0, 0, last], SHARED_PORT));
        let resolved = tokio::net::lookup_host(host.as_str()).await;
        if !resolved.is_ok_and(|mut addrs| addrs.any(|a| a == expected)) {
            return Some(format!(
                "{name}.{TEST_DOMAIN} does not resolve to 127.0.0.{last} (see the example's docs)"
            ));
        }
    }
    None
}

/// How long after the fault the Python wrapper is watched: its failure detection waits 30 s
/// (`failure_detection_time_ms`) before its first probe, longer than the other loops run.
const PYTHON_WATCH: Duration = Duration::from_secs(45);

/// The Python wrapper's write loop, started against `cluster`: its successful writes as
/// (unix time, instance), once it printed `ready`.
struct PythonWrites {
    child: tokio::process::Child,
    writes: tokio::sync::mpsc::UnboundedReceiver<(f64, String)>,
}

impl PythonWrites {
    async fn start(
        cluster: &LocalCluster,
        tuned: &str,
    ) -> Result<PythonWrites, Box<dyn std::error::Error>> {
        use tokio::io::AsyncBufReadExt;
        let conninfo = format!(
            "host=cluster.{TEST_DOMAIN} port={SHARED_PORT} dbname={} user={} password={} connect_timeout=10",
            cluster.database(),
            cluster.user(),
            cluster.password()
        );
        let mut command = tokio::process::Command::new("python3");
        command
            .arg(PYTHON_SCRIPT)
            .arg(conninfo)
            .arg(format!("?.{TEST_DOMAIN}:{SHARED_PORT}"))
            .arg(
                (PYTHON_WATCH + Duration::from_secs(10))
                    .as_secs()
                    .to_string(),
            )
            .args(tuned.split('&').filter(|p| !p.is_empty()))
            // FAILOVER_PROBE_PYTHON_ARGS adds `key=value` wrapper parameters (space separated).
            .args(
                std::env::var("FAILOVER_PROBE_PYTHON_ARGS")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned),
            )
            .stdout(std::process::Stdio::piped())
            // FAILOVER_PROBE_PYTHON_LOG=1 shows what the wrapper says.
            .stderr(match std::env::var_os("FAILOVER_PROBE_PYTHON_LOG") {
                Some(_) => std::process::Stdio::inherit(),
                None => std::process::Stdio::null(),
            })
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        if !matches!(ready, Ok(Ok(Some(ref line))) if line == "ready") {
            return Err("the Python wrapper did not connect within 30 s".into());
        }
        let (sender, writes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut parts = line.split(' ');
                if let (Some(at), Some(served)) = (parts.next(), parts.next())
                    && let Ok(at) = at.parse::<f64>()
                    && sender.send((at, served.to_owned())).is_err()
                {
                    break;
                }
            }
        });
        Ok(PythonWrites { child, writes })
    }

    /// The time from `fault` (unix time) to its first write on `on`, watched until
    /// [`PYTHON_WATCH`] after the fault.
    async fn first_write_on(mut self, fault: f64, on: &str) -> Option<Duration> {
        let limit = PYTHON_WATCH.as_secs_f64();
        let found = loop {
            let left = (fault + limit - unix_now()).max(0.0);
            match tokio::time::timeout(Duration::from_secs_f64(left), self.writes.recv()).await {
                Ok(Some((at, served))) if at >= fault && served == on => {
                    break Some(Duration::from_secs_f64(at - fault));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break None,
            }
        };
        let _ = self.child.kill().await;
        found
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One measured failover on a fresh local cluster.
struct Measurement {
    aurora: Duration,
    plain: Option<Duration>,
    after_promotion: Duration,
    /// Through a `writer()` handle taken before the fault.
    kept: Option<Duration>,
    /// Through a `writer()` handle taken for each write.
    fresh: Option<Duration>,
    /// Through the AWS Python wrapper, when it was measured.
    python: Option<Duration>,
}

/// The faults measured locally, each with the pool's settings: defaults first (what a new
/// user gets), then tuned detection beside them.
const SCENARIOS: [(&str, bool, &str); 3] = [
    ("writer crash, default settings", false, ""),
    ("writer black-holed, default settings", true, ""),
    (
        "writer black-holed, tuned (interval 250 ms, count 2)",
        true,
        "&failure_detection_interval_ms=250&failure_detection_count=2",
    ),
];

async fn measure_locally() -> Result<(), Box<dyn std::error::Error>> {
    // FAILOVER_PROBE_RUNS=n and FAILOVER_PROBE_ONLY=i (a scenario's index) narrow a run.
    let runs_wanted = std::env::var("FAILOVER_PROBE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let only: Option<usize> = std::env::var("FAILOVER_PROBE_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let python_missing = python_unavailable().await;
    if let Some(why) = &python_missing {
        println!("the AWS Python wrapper is not measured: {why}");
    }
    let mut measured: Vec<Vec<Measurement>> = SCENARIOS.iter().map(|_| Vec::new()).collect();
    for run in 0..runs_wanted {
        for (index, ((name, blackhole, params), runs)) in
            SCENARIOS.iter().zip(&mut measured).enumerate()
        {
            if only.is_some_and(|only| only != index) {
                continue;
            }
            println!("run {}: {name} ...", run + 1);
            runs.push(scenario(*blackhole, params, python_missing.is_none()).await?);
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let show = |d: Option<Duration>| {
        d.map_or(format!("none within {} s", DNS_DELAY.as_secs()), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1000.0)
        })
    };
    println!(
        "\nmedian of {runs_wanted} runs, time from the fault to the first successful write on the new writer:"
    );
    println!(
        "| scenario | AuroraPool (`run`) | of which after the promotion finished | `writer()` kept from startup | `writer()` per write | plain PgPool, stale DNS | AWS Python wrapper |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((name, _, _), runs) in SCENARIOS.iter().zip(measured) {
        if runs.is_empty() {
            continue;
        }
        let plain: Vec<_> = runs.iter().filter_map(|m| m.plain).collect();
        let kept: Vec<_> = runs.iter().filter_map(|m| m.kept).collect();
        let fresh: Vec<_> = runs.iter().filter_map(|m| m.fresh).collect();
        let python: Vec<_> = runs.iter().filter_map(|m| m.python).collect();
        let python = match &python_missing {
            Some(_) => "not measured".to_owned(),
            None if python.len() == runs.len() => show(Some(median(python))),
            None => format!("none within {} s", PYTHON_WATCH.as_secs()),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {python} |",
            show(Some(median(runs.iter().map(|m| m.aurora).collect()))),
            show(Some(median(
                runs.iter().map(|m| m.after_promotion).collect()
            ))),
            show((kept.len() == runs.len()).then(|| median(kept))),
            show((fresh.len() == runs.len()).then(|| median(fresh))),
            show((plain.len() == runs.len()).then(|| median(plain))),
        );
    }
    Ok(())
}

async fn scenario(
    blackhole: bool,
    detection: &str,
    with_python: bool,
) -> Result<Measurement, Box<dyn std::error::Error>> {
    let cluster = match with_python {
        true => {
            LocalCluster::builder()
                .instances(3)
                .shared_port(SHARED_PORT)
                .start()
                .await?
        }
        false => LocalCluster::start(3).await?,
    };
    let pool = AuroraPool::connect(&format!(
        "{}&cluster_id=probe-{}{detection}",
        cluster.url(),
        fastrand::u32(..)
    ))
    .await?;
    // Stale DNS: the plain pool's endpoint keeps resolving to the old writer.
    let plain = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect(&cluster.instance_url("instance-1").ok_or("no instance-1")?)
        .await?;
    // Watches the replica being promoted, to time the promotion itself.
    let mut promotion_watch =
        PgConnection::connect(&cluster.instance_url("instance-2").ok_or("no instance-2")?).await?;
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let p = pool.clone();
    let writes = spawn_loop("aurora", origin, stop.clone(), false, move || {
        aurora_attempt(p.clone(), Role::Writer)
    });
    let kept = pool.writer();
    let kept_writes = spawn_loop("kept", origin, stop.clone(), false, move || {
        kept_attempt(kept.clone())
    });
    let p = pool.clone();
    let fresh_writes = spawn_loop("fresh", origin, stop.clone(), false, move || {
        kept_attempt(p.writer())
    });
    let q = plain.clone();
    let plain_writes = spawn_loop("plain", origin, stop.clone(), false, move || {
        plain_attempt(q.clone())
    });
    let python = match with_python {
        true => Some(PythonWrites::start(&cluster, detection).await?),
        false => None,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let promoted_at = tokio::spawn(async move {
        loop {
            let in_recovery: Result<bool, _> =
                sqlx::query_scalar("SELECT pg_catalog.pg_is_in_recovery()")
                    .fetch_one(&mut promotion_watch)
                    .await;
            if matches!(in_recovery, Ok(false)) {
                tracing::info!("promotion finished");
                return origin.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // The fault's moment: the black hole's start, or the crash's end (`crash` first lets
    // the replicas replay what the writer flushed, as Aurora's shared storage keeps it, and
    // only then kills it).
    let (fault, fault_unix) = if blackhole {
        let at = (origin.elapsed(), unix_now());
        cluster.blackhole("instance-1", true);
        at
    } else {
        cluster.crash("instance-1").await?;
        (origin.elapsed(), unix_now())
    };
    // Aurora promotes a replica; the DNS-style endpoint keeps pointing at the old writer for
    // a while.
    cluster.failover("instance-2", None).await?;
    let promoted = promoted_at.await?;
    tokio::time::sleep(DNS_DELAY.saturating_sub(origin.elapsed() - fault)).await;
    stop.store(true, Ordering::Relaxed);
    let (writes, plain_writes, kept_writes, fresh_writes) = (
        writes.await?,
        plain_writes.await?,
        kept_writes.await?,
        fresh_writes.await?,
    );
    let recovered = writes
        .first_success_after(fault, Some("instance-2"))
        .ok_or("AuroraPool never wrote to the new writer")?;
    pool.close().await;
    plain.close().await;
    let python = match python {
        Some(python) => python.first_write_on(fault_unix, "instance-2").await,
        None => None,
    };
    Ok(Measurement {
        python,
        aurora: recovered - fault,
        plain: plain_writes
            .first_success_after(fault + Duration::from_millis(50), None)
            .map(|t| t - fault),
        after_promotion: recovered.saturating_sub(promoted),
        kept: kept_writes
            .first_success_after(fault, Some("instance-2"))
            .map(|t| t - fault),
        fresh: fresh_writes
            .first_success_after(fault, Some("instance-2"))
            .map(|t| t - fault),
    })
}
