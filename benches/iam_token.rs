//! Local IAM token signing: `cargo bench --bench iam_token --features iam`.
//! (The AWS wrappers report 50-100 ms per token; signing locally should take microseconds.)

use std::hint::black_box;
use std::time::SystemTime;

use aurora_pool::iam::generate_auth_token;
use aws_credential_types::Credentials;
use criterion::{Criterion, criterion_group, criterion_main};

fn token(c: &mut Criterion) {
    let credentials = Credentials::new(
        "AKIDEXAMPLE",
        "secret",
        Some("session-token".into()),
        None,
        "bench",
    );
    c.bench_function("generate_auth_token", |b| {
        b.iter(|| {
            generate_auth_token(
                black_box("instance-2.abc123.us-east-1.rds.amazonaws.com"),
                5432,
                black_box("app_iam"),
                "us-east-1",
                &credentials,
                SystemTime::now(),
            )
            .expect("token")
        })
    });
}

criterion_group!(benches, token);
criterion_main!(benches);
