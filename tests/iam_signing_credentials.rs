//! The AWS credentials that sign IAM tokens, from a real `aws-config` credential process
//! that counts its calls and fails on command: asked once per credential lifetime however
//! many tokens are signed at once, and kept (while valid) when a refresh fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aurora_pool::auth::{ConnectTarget, CredentialProvider};
use aurora_pool::iam::{IamAuth, IamSettings};
use aws_config::credential_process::CredentialProcessProvider;
use aws_smithy_async::time::{SharedTimeSource, TimeSource};

const HOST: &str = "orders.cluster-abc123.us-east-1.rds.amazonaws.com";

/// A clock that starts at the real time and moves only when told.
#[derive(Debug, Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new() -> ManualClock {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        ManualClock(Arc::new(AtomicU64::new(now)))
    }
    fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl TimeSource for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

/// A credential process in its own directory: each call appends a byte to `calls`; it
/// hangs (30 s) while `hang` exists and fails while `fail` exists; its credentials expire one hour after the real time.
struct Process {
    dir: PathBuf,
}

impl Process {
    fn new(name: &str) -> Process {
        let dir = std::env::temp_dir().join(format!(
            "aurora-pool-credential-process-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let script = format!(
            "#!/bin/sh\nprintf x >> '{dir}/calls'\nif [ -e '{dir}/hang' ]; then sleep 30; fi\nif [ -e '{dir}/fail' ]; then echo 'STS is down' >&2; exit 1; fi\nexp=$(date -u -d '+3600 seconds' +%Y-%m-%dT%H:%M:%SZ)\nprintf '{{\"Version\": 1, \"AccessKeyId\": \"AKIDEXAMPLE\", \"SecretAccessKey\": \"wJalrXUtnFEMI/K7MDENG\", \"SessionToken\": \"session\", \"Expiration\": \"%s\"}}' \"$exp\"\n",
            dir = dir.display()
        );
        let path = dir.join("process.sh");
        std::fs::write(&path, script).expect("script");
        Process { dir }
    }
    fn provider(&self) -> CredentialProcessProvider {
        CredentialProcessProvider::new(format!("sh {}", self.dir.join("process.sh").display()))
    }
    fn calls(&self) -> usize {
        std::fs::read(self.dir.join("calls")).map_or(0, |c| c.len())
    }
    fn fail(&self, fail: bool) {
        self.mark("fail", fail);
    }
    fn hang(&self, hang: bool) {
        self.mark("hang", hang);
    }
    fn mark(&self, name: &str, on: bool) {
        let marker = self.dir.join(name);
        if on {
            std::fs::write(marker, b"").expect("marker");
        } else {
            let _ = std::fs::remove_file(marker);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn iam(process: &Process, clock: &ManualClock) -> Arc<IamAuth> {
    let mut settings = IamSettings::new().credentials(process.provider());
    settings.time_source = SharedTimeSource::new(clock.clone());
    Arc::new(IamAuth::new(settings, HOST).expect("provider"))
}

fn instance(n: u32) -> ConnectTarget {
    ConnectTarget::new(
        format!("instance-{n}.abc123.us-east-1.rds.amazonaws.com"),
        5432,
        "app_iam",
    )
}

/// Signs `count` tokens at once, each for another instance (each a token cache miss).
async fn sign_at_once(iam: &Arc<IamAuth>, from: u32, count: u32) -> Vec<aurora_pool::Result<()>> {
    let mut signing = tokio::task::JoinSet::new();
    for n in from..from + count {
        let iam = iam.clone();
        signing.spawn(async move { iam.credentials(&instance(n)).await.map(|_| ()) });
    }
    let mut results = Vec::new();
    while let Some(joined) = signing.join_next().await {
        results.push(joined.expect("task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_call_signs_every_token_of_a_burst() {
    let process = Process::new("burst");
    let clock = ManualClock::new();
    let iam = iam(&process, &clock);
    let results = sign_at_once(&iam, 1, 20).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(iam.tokens_generated(), 20);
    assert_eq!(process.calls(), 1, "credential process calls for 20 tokens");
    // Tokens are renewed after iam_expiration_s (870 s); the credentials, valid for an hour,
    // are not fetched again.
    clock.advance(900);
    let results = sign_at_once(&iam, 1, 20).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(iam.tokens_generated(), 40);
    assert_eq!(process.calls(), 1, "credential process calls for 40 tokens");
    assert_eq!(iam.aws_credentials_fetched().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_credential_refresh_keeps_the_credentials_in_hand() {
    let process = Process::new("outage");
    let clock = ManualClock::new();
    let iam = iam(&process, &clock);
    iam.credentials(&instance(1)).await.expect("first token");
    assert_eq!(process.calls(), 1);
    // 57 minutes later the credentials are due for refresh, and STS is down: tokens are
    // still signed with the credentials in hand, and the process is asked once, not once
    // per token.
    clock.advance(57 * 60);
    process.fail(true);
    let results = sign_at_once(&iam, 100, 20).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The refresh runs in the background.
    let refreshed = eventually(|| process.calls() == 2).await;
    assert!(
        refreshed,
        "one failed refresh for 20 tokens: {}",
        process.calls()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(process.calls(), 2, "one failed refresh for 20 tokens");
    // Once they expired there is nothing to sign with: a credentials error, not a hang.
    clock.advance(4 * 60);
    let err = iam
        .credentials(&instance(200))
        .await
        .expect_err("expired credentials");
    assert!(err.is_credentials(), "{err:?}");
    // STS back: the next attempt (at most one a second) gets fresh credentials.
    process.fail(false);
    clock.advance(2);
    iam.credentials(&instance(201))
        .await
        .expect("fresh credentials");
    assert_eq!(process.calls(), 4);
}

/// A credential chain that hangs (an STS or IMDS that never answers) holds up no token while
/// the credentials in hand are valid; once they expired, signing waits only for the refresh
/// in flight, which gives up after its own limit, and the next one gets fresh credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_credential_chain_holds_up_no_token() {
    let process = Process::new("hang");
    let clock = ManualClock::new();
    let iam = iam(&process, &clock);
    iam.credentials(&instance(1)).await.expect("first token");
    clock.advance(57 * 60);
    process.hang(true);
    let results = tokio::time::timeout(Duration::from_secs(5), sign_at_once(&iam, 100, 20))
        .await
        .expect("tokens were held up by the hanging refresh");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let asked = eventually(|| process.calls() == 2).await;
    assert!(asked, "the refresh was not started: {}", process.calls());
    // Expired: nothing to sign with but what the refresh in flight brings. The hanging one
    // is given up after its limit (10 s): a credentials error, not a hang; the next
    // refresh answers.
    clock.advance(4 * 60);
    process.hang(false);
    let waited = tokio::time::timeout(Duration::from_secs(15), iam.credentials(&instance(200)))
        .await
        .expect("signing waited past the refresh's limit");
    let err = waited.expect_err("the hanging refresh was given up");
    assert!(
        err.is_credentials() && format!("{err:#}").contains("did not answer"),
        "{err:?}"
    );
    iam.credentials(&instance(201))
        .await
        .expect("fresh credentials from the next refresh");
    assert_eq!(process.calls(), 3);
}

/// Polls `done` every 20 ms for up to 5 s.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..250 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
