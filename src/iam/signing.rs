//! The AWS credentials that sign IAM tokens.
//!
//! `aws-config`'s provider chain caches nothing by itself (the SDK's service clients put an
//! identity cache in front of it), and each call may go to STS, IMDS or a credential
//! process. Here one process asks the chain once per credential lifetime: the credentials
//! are kept until [`REFRESH_AHEAD`] before they expire, one caller refreshes while the
//! others wait for its answer, and when a refresh fails the credentials in hand stay in use
//! for as long as they are valid (with a warning), while the chain is asked again at most
//! every [`RETRY_AFTER_FAILURE`]. An STS outage or throttling then costs nothing until the
//! credentials in hand expire, and a failover's burst of new connections makes one call.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// Credentials are refreshed this long before they expire, so that a token signed with them
/// outlives the login it is for.
pub(super) const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// After a failed refresh, the chain is not asked again for this long.
pub(super) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The signing credentials in hand, and the provider chain behind them.
#[derive(Default)]
pub(super) struct SigningCredentials {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Credentials>,
    fetches: u64,
    last_failure: Option<(SystemTime, String)>,
}

impl SigningCredentials {
    /// Credentials to sign with at `now`, from `provider` only when those in hand are due.
    pub(super) async fn get(
        &self,
        provider: &SharedCredentialsProvider,
        now: SystemTime,
    ) -> Result<Credentials> {
        // Held across the provider call: concurrent callers wait for the one refresh and
        // take its answer (callers are bounded by `connect_timeout`, and a caller dropped
        // mid-refresh releases the lock).
        let mut state = self.state.lock().await;
        let usable = state.current.clone().filter(|c| is_valid(c, now));
        if let Some(current) = &usable
            && !is_due(current, now)
        {
            return Ok(current.clone());
        }
        if let Some((failed_at, why)) = &state.last_failure
            && now < *failed_at + RETRY_AFTER_FAILURE
        {
            return match usable {
                Some(current) => Ok(current),
                None => Err(Error::credentials(format!(
                    "loading AWS credentials for IAM authentication failed less than {RETRY_AFTER_FAILURE:?} ago: {why}"
                ))),
            };
        }
        state.fetches += 1;
        match provider.provide_credentials().await {
            Ok(fresh) => {
                state.current = Some(fresh.clone());
                state.last_failure = None;
                Ok(fresh)
            }
            Err(err) => {
                let why = err.to_string();
                state.last_failure = Some((now, why.clone()));
                match usable {
                    Some(current) => {
                        tracing::warn!(
                            target: "aurora_pool",
                            error = %why,
                            valid_for_s = current
                                .expiry()
                                .and_then(|e| e.duration_since(now).ok())
                                .map(|d| d.as_secs()),
                            "refreshing the AWS credentials for IAM authentication failed: signing with the ones in hand while they are valid"
                        );
                        Ok(current)
                    }
                    None => Err(Error::credentials(
                        "loading AWS credentials for IAM authentication failed",
                    )
                    .with_source(err)),
                }
            }
        }
    }

    /// How many times the provider chain was asked.
    pub(super) async fn fetches(&self) -> u64 {
        self.state.lock().await.fetches
    }
}

/// Whether `credentials` can still sign at `now`.
fn is_valid(credentials: &Credentials, now: SystemTime) -> bool {
    credentials.expiry().is_none_or(|expiry| expiry > now)
}

/// Whether `credentials` should be refreshed at `now`.
fn is_due(credentials: &Credentials, now: SystemTime) -> bool {
    credentials
        .expiry()
        .is_some_and(|expiry| expiry <= now + REFRESH_AHEAD)
}
