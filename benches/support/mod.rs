//! What the checkout benchmarks share: a local cluster with an `AuroraPool` and raw
//! `PgPool`s on the same instances, and a runner that spreads checkouts over tasks.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_pool::AuroraPool;
use aurora_pool::testing::LocalCluster;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Pool size on both sides.
pub const MAX_CONNECTIONS: u32 = 64;

/// One checkout + `SELECT 1` + release.
pub type Op = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The runtime every benchmark runs on: as many workers as the machine's 2 cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The pools under comparison.
pub struct Bench {
    /// Keeps the servers up as long as the pools.
    pub cluster: LocalCluster,
    pub aurora: AuroraPool,
    pub raw_writer: PgPool,
    pub raw_reader: PgPool,
}

/// A 2-instance cluster; every pool connects straight to the servers (no proxy hop), the
/// same addresses for both sides.
pub async fn setup(cluster_id: &str) -> Bench {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let direct_url = |id: &str| {
        let addr = cluster.direct_addr(id).expect("instance");
        format!(
            "postgres://{}:{}@{addr}/{}",
            cluster.user(),
            cluster.password(),
            cluster.database()
        )
    };
    let endpoints: String =
        url::form_urlencoded::byte_serialize(cluster.direct_endpoints_param().as_bytes()).collect();
    let aurora = AuroraPool::connect(&format!(
        "{}?instance_endpoints={endpoints}&cluster_id={cluster_id}\
         &writer_max_connections={MAX_CONNECTIONS}&reader_max_connections={MAX_CONNECTIONS}",
        direct_url("instance-1")
    ))
    .await
    .expect("aurora pool");
    let raw = |id: &str| {
        let url = direct_url(id);
        async move {
            PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .connect(&url)
                .await
                .expect("raw pool")
        }
    };
    let (raw_writer, raw_reader) = (raw("instance-1").await, raw("instance-2").await);
    Bench {
        cluster,
        aurora,
        raw_writer,
        raw_reader,
    }
}

impl Bench {
    pub async fn close(self) {
        drop(self.close_pools().await);
    }

    /// Closes the pools and keeps the cluster running.
    pub async fn close_pools(self) -> LocalCluster {
        self.aurora.close().await;
        self.raw_writer.close().await;
        self.raw_reader.close().await;
        self.cluster
    }
}

/// Through a `PgPool` handle taken per checkout, as an application calls `.writer()` /
/// `.reader()` per unit of work.
pub fn via_pool(pool: impl Fn() -> PgPool + Send + Sync + 'static) -> Op {
    Arc::new(move || {
        let pool = pool();
        Box::pin(async move {
            let mut conn = pool.acquire().await.expect("checkout");
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .expect("SELECT 1");
        })
    })
}

/// CPU time this process has used so far (all threads: the caller's tasks, the pool's
/// machinery and its background tasks alike).
pub fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `ops` operations spread over `tasks` tasks: the time they took and the CPU time this
/// process used meanwhile.
pub async fn run_timed(op: &Op, tasks: usize, ops: u64) -> (Duration, Duration) {
    let cpu = process_cpu();
    let elapsed = run(op, tasks, ops).await;
    (elapsed, process_cpu() - cpu)
}

/// `ops` operations spread over `tasks` tasks.
pub async fn run(op: &Op, tasks: usize, ops: u64) -> Duration {
    let per_task = ops.div_ceil(tasks as u64);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    op().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    start.elapsed()
}

/// Opens every connection up front so that no measurement pays for a connect.
pub async fn warm(op: &Op) {
    run(op, MAX_CONNECTIONS as usize, u64::from(MAX_CONNECTIONS) * 4).await;
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The header of the table [`compare`] prints rows of.
pub fn print_header() {
    println!(
        "| AuroraPool path | tasks | raw PgPool µs/op | AuroraPool µs/op | ratio (median) | ratio p25-p75 | client CPU µs/op raw / AuroraPool |"
    );
    println!("|---|---|---|---|---|---|---|");
}

/// Measures `aurora` against `raw` at 1 and 64 tasks, in `rounds` interleaved rounds of
/// `ops` operations (alternating which side goes first, so that drift hits both alike), and
/// prints a table row per task count.
pub async fn compare(name: &str, raw: &Op, aurora: &Op, rounds: usize, ops: u64) {
    for tasks in [1usize, 64] {
        warm(raw).await;
        warm(aurora).await;
        let (mut ratios, mut raw_us, mut aurora_us) = (Vec::new(), Vec::new(), Vec::new());
        let (mut raw_cpu, mut aurora_cpu) = (Vec::new(), Vec::new());
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
        // `CHECKOUT_RATIO_SIDE=raw` (or `aurora`) runs one side alone, for a profiler or
        // `perf stat` to count that side's instructions without the other's.
        let side = std::env::var("CHECKOUT_RATIO_SIDE").unwrap_or_default();
        let (raw, aurora) = match side.as_str() {
            "raw" => (raw, raw),
            "aurora" => (aurora, aurora),
            _ => (raw, aurora),
        };
        for round in 0..rounds {
            let ((r, r_cpu), (a, a_cpu)) = if round % 2 == 0 {
                let r = run_timed(raw, tasks, ops).await;
                (r, run_timed(aurora, tasks, ops).await)
            } else {
                let a = run_timed(aurora, tasks, ops).await;
                (run_timed(raw, tasks, ops).await, a)
            };
            ratios.push(a.as_secs_f64() / r.as_secs_f64());
            raw_us.push(per_op(r));
            aurora_us.push(per_op(a));
            raw_cpu.push(per_op(r_cpu));
            aurora_cpu.push(per_op(a_cpu));
        }
        for v in [
            &mut ratios,
            &mut raw_us,
            &mut aurora_us,
            &mut raw_cpu,
            &mut aurora_cpu,
        ] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "| {name} | {tasks} | {:.1} | {:.1} | {:.3} | {:.3}-{:.3} | {:.1} / {:.1} |",
            quantile(&raw_us, 0.5),
            quantile(&aurora_us, 0.5),
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
            quantile(&raw_cpu, 0.5),
            quantile(&aurora_cpu, 0.5),
        );
    }
}

/// The deadpool flavour and a raw `deadpool_postgres::Pool` (default fast recycling) on the
/// same instance, both straight to the server.
#[cfg(feature = "deadpool")]
pub async fn deadpool_pools(
    cluster: &LocalCluster,
    cluster_id: &str,
) -> (aurora_pool::deadpool::AuroraPool, deadpool_postgres::Pool) {
    let addr = cluster.direct_addr("instance-1").expect("instance");
    let endpoints: String =
        url::form_urlencoded::byte_serialize(cluster.direct_endpoints_param().as_bytes()).collect();
    let aurora = aurora_pool::deadpool::AuroraPool::connect(&format!(
        "postgres://{}:{}@{addr}/{}?instance_endpoints={endpoints}&cluster_id={cluster_id}\
         &sslmode=disable&writer_max_connections={MAX_CONNECTIONS}&reader_max_connections={MAX_CONNECTIONS}",
        cluster.user(),
        cluster.password(),
        cluster.database()
    ))
    .await
    .expect("deadpool flavour");
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(cluster.user())
        .password(cluster.password())
        .dbname(cluster.database());
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    let raw = deadpool_postgres::Pool::builder(manager)
        .max_size(MAX_CONNECTIONS as usize)
        .build()
        .expect("raw deadpool");
    (aurora, raw)
}

/// Checkout + `SELECT 1` + release on the deadpool pool `pool()` returns.
#[cfg(feature = "deadpool")]
pub fn via_deadpool<M>(pool: impl Fn() -> deadpool::managed::Pool<M> + Send + Sync + 'static) -> Op
where
    M: deadpool::managed::Manager<Type = deadpool_postgres::ClientWrapper> + 'static,
    M::Error: std::fmt::Debug,
{
    Arc::new(move || {
        let pool = pool();
        Box::pin(async move {
            let client = pool.get().await.expect("checkout");
            client.simple_query("SELECT 1").await.expect("SELECT 1");
        })
    })
}
