//! Checkouts of a pool logging in with IAM tokens, against a raw `PgPool` with a password,
//! interleaved as in `checkout_ratio`; then what a token costs when it is cached and when it
//! is signed.
//!
//! `cargo bench --bench iam_checkout --features iam,testing`
//!
//! PostgreSQL cannot check IAM tokens, so the token the provider will sign (fixed clock,
//! `iam_host`) is made the password of a second role. The local cluster has no TLS here, so
//! that the comparison with the raw pool measures the tokens alone: the pool sets
//! `allow_unverified_server` and is given the provider directly, which skips the TLS
//! requirement of `auth=iam`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aurora_pool::auth::{ConnectTarget, CredentialProvider};
use aurora_pool::iam::{IamAuth, IamSettings, generate_auth_token};
use aurora_pool::{AuroraPool, Role};
use aws_credential_types::Credentials;
use aws_smithy_async::time::{SharedTimeSource, StaticTimeSource};
use support::{MAX_CONNECTIONS, Op, via_pool};

const IAM_HOST: &str = "orders.cluster-abc123.us-east-1.rds.amazonaws.com";

fn main() {
    let rt = support::runtime();
    rt.block_on(async {
        let bench = support::setup("bench-iam-raw").await;
        let cluster = &bench.cluster;
        let at = SystemTime::now();
        let aws = Credentials::new("AKIDEXAMPLE", "secret", None, None, "bench");
        let token =
            generate_auth_token(IAM_HOST, 5432, "app_iam", "us-east-1", &aws, at).expect("token");
        cluster
            .psql(
                "instance-1",
                "postgres",
                &format!(
                    "CREATE ROLE app_iam LOGIN PASSWORD '{token}'; \
                     GRANT ALL ON DATABASE {db} TO app_iam;",
                    db = cluster.database()
                ),
            )
            .await
            .expect("role");
        let mut settings = IamSettings::new().credentials(aws);
        settings.host = Some(IAM_HOST.into());
        settings.region = Some("us-east-1".into());
        settings.default_port = Some(5432);
        settings.time_source = SharedTimeSource::new(StaticTimeSource::new(at));
        let iam = Arc::new(IamAuth::new(settings, IAM_HOST).expect("provider"));
        let addr = cluster.direct_addr("instance-1").expect("instance");
        let endpoints: String =
            url::form_urlencoded::byte_serialize(cluster.direct_endpoints_param().as_bytes())
                .collect();
        let aurora = AuroraPool::builder()
            .url(format!(
                "postgres://app_iam@{addr}/{}?instance_endpoints={endpoints}&cluster_id=bench-iam\
                 &writer_max_connections={MAX_CONNECTIONS}&allow_unverified_server=true",
                cluster.database()
            ))
            .credential_provider(iam.clone())
            .connect()
            .await
            .expect("IAM pool");

        support::print_header();
        let raw_writer = bench.raw_writer.clone();
        let raw = via_pool(move || raw_writer.clone());
        let a = aurora.clone();
        let writer: Op = via_pool(move || a.writer());
        support::compare("writer(), IAM token", &raw, &writer, 11, 2_000).await;
        let a = aurora.clone();
        let acquire: Op = Arc::new(move || {
            let a = a.clone();
            Box::pin(async move {
                let mut conn = a.acquire(Role::Writer).await.expect("checkout");
                sqlx::query("SELECT 1")
                    .execute(&mut *conn)
                    .await
                    .expect("SELECT 1");
            })
        });
        support::compare(
            "acquire(Role::Writer), IAM token",
            &raw,
            &acquire,
            11,
            2_000,
        )
        .await;

        // What a connect asks of the provider.
        let target = ConnectTarget::new(
            "instance-1.abc123.us-east-1.rds.amazonaws.com",
            5432,
            "app_iam",
        );
        iam.credentials(&target).await.expect("warm");
        let n = 200_000u32;
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(iam.credentials(&target).await.expect("cached"));
        }
        let cached = started.elapsed() / n;
        let n = 20_000u32;
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                generate_auth_token(
                    &target.host,
                    5432,
                    "app_iam",
                    "us-east-1",
                    &Credentials::new("AKIDEXAMPLE", "secret", None, None, "bench"),
                    SystemTime::now(),
                )
                .expect("token"),
            );
        }
        let signed = started.elapsed() / n;
        println!();
        println!("| token | time per call |");
        println!("|---|---|");
        println!(
            "| cached (`IamAuth::credentials`, cache hit) | {} ns |",
            cached.as_nanos()
        );
        println!(
            "| signed (`generate_auth_token`) | {:.1} µs |",
            as_micros(signed)
        );
        aurora.close().await;
        bench.close().await;
    });
}

fn as_micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
