//! The AWS credentials that sign IAM tokens.
//!
//! `aws-config`'s provider chain caches nothing by itself (the SDK's service clients put an
//! identity cache in front of it), and each call may go to STS, IMDS or a credential
//! process. Here one process asks the chain once per credential lifetime: the credentials
//! are kept until [`REFRESH_AHEAD`] before they expire, then refreshed by one background
//! task while every caller goes on signing with the credentials in hand (they are valid for
//! minutes still): a hanging STS, IMDS or credential process never holds up a token, the new
//! writer's included. Only a caller with nothing valid in hand waits, for the one refresh
//! in flight, which gives up after [`REFRESH_LIMIT`]. A failed refresh is retried at most
//! every [`RETRY_AFTER_FAILURE`]. The refresh runs on its own task, so a caller that gives
//! up (or is cancelled) neither stops it nor leaves its failure unrecorded.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Credentials are refreshed this long before they expire, so that a token signed with them
/// outlives the login it is for.
pub(super) const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// After a failed refresh, the chain is not asked again for this long.
pub(super) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The longest one refresh of the credentials may take before it counts as failed.
pub(super) const REFRESH_LIMIT: Duration = Duration::from_secs(10);

/// The signing credentials in hand, and the provider chain behind them.
pub(super) struct SigningCredentials {
    state: Arc<Mutex<State>>,
    /// Bumped when a refresh ends, for the callers that wait for one.
    refreshed: Arc<watch::Sender<u64>>,
}

impl Default for SigningCredentials {
    fn default() -> SigningCredentials {
        SigningCredentials {
            state: Arc::default(),
            refreshed: Arc::new(watch::channel(0).0),
        }
    }
}

#[derive(Default)]
struct State {
    current: Option<Credentials>,
    fetches: u64,
    last_failure: Option<(SystemTime, String)>,
    refreshing: bool,
}

impl SigningCredentials {
    /// Credentials to sign with at `now`: those in hand while they are valid (a refresh
    /// started in the background when they are due), else the answer of the refresh in
    /// flight.
    pub(super) async fn get(
        &self,
        provider: &SharedCredentialsProvider,
        now: SystemTime,
    ) -> Result<Credentials> {
        let mut waited = false;
        loop {
            let mut refreshed = self.refreshed.subscribe();
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                // The answer of the refresh waited for, whatever the clock says of it.
                if waited && !state.refreshing {
                    match (&state.current, &state.last_failure) {
                        (_, Some((_, why))) => return Err(refresh_failed(why)),
                        (Some(fresh), None) => return Ok(fresh.clone()),
                        (None, None) => {}
                    }
                }
                let usable = state.current.clone().filter(|c| is_valid(c, now));
                if let Some(current) = &usable
                    && !is_due(current, now)
                {
                    return Ok(current.clone());
                }
                let failed_recently = state
                    .last_failure
                    .as_ref()
                    .is_some_and(|(failed_at, _)| now < *failed_at + RETRY_AFTER_FAILURE);
                if !state.refreshing && !failed_recently {
                    state.refreshing = true;
                    state.fetches += 1;
                    self.refresh(provider.clone(), now);
                }
                if let Some(current) = usable {
                    return Ok(current);
                }
                if !state.refreshing
                    && let Some((_, why)) = &state.last_failure
                {
                    return Err(refresh_failed(why));
                }
            }
            // Nothing valid in hand: wait for the refresh in flight (bounded by its limit).
            if refreshed.changed().await.is_err() {
                return Err(Error::credentials(
                    "the AWS credentials refresh was abandoned",
                ));
            }
            waited = true;
        }
    }

    /// Asks `provider` on a task of its own, bounded by [`REFRESH_LIMIT`], and records the
    /// answer. Whatever ends the task (an answer, the limit, a panic in the provider), the
    /// refresh is over and its waiters are woken: [`Refreshing`]'s drop sees to it.
    fn refresh(&self, provider: SharedCredentialsProvider, now: SystemTime) {
        let refreshing = Refreshing {
            state: self.state.clone(),
            refreshed: self.refreshed.clone(),
            now,
            answer: None,
        };
        tokio::spawn(async move {
            let mut refreshing = refreshing;
            let answer = tokio::time::timeout(REFRESH_LIMIT, provider.provide_credentials()).await;
            refreshing.answer = Some(match answer {
                Ok(Ok(fresh)) => Ok(fresh),
                Ok(Err(err)) => Err(format!("{err:#}")),
                Err(_) => Err(format!(
                    "the credential provider did not answer within {REFRESH_LIMIT:?}"
                )),
            });
        });
    }

    /// How many times the provider chain was asked.
    pub(super) async fn fetches(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fetches
    }
}

/// One refresh in flight; records its answer when dropped (no answer: the task ended
/// without one, by a panic in the provider or a runtime shutting down).
struct Refreshing {
    state: Arc<Mutex<State>>,
    refreshed: Arc<watch::Sender<u64>>,
    now: SystemTime,
    answer: Option<std::result::Result<Credentials, String>>,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        let answer = self.answer.take().unwrap_or_else(|| {
            Err("the credential refresh ended without an answer (its provider panicked?)".into())
        });
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.refreshing = false;
        match answer {
            Ok(fresh) => {
                state.current = Some(fresh);
                state.last_failure = None;
            }
            Err(why) => {
                let now = self.now;
                let valid_for_s = state
                    .current
                    .as_ref()
                    .filter(|c| is_valid(c, now))
                    .and_then(|c| c.expiry())
                    .and_then(|e| e.duration_since(now).ok())
                    .map(|d| d.as_secs());
                tracing::warn!(
                    target: "aurora_pool",
                    error = %format_args!("{why:#}"),
                    valid_for_s,
                    "refreshing the AWS credentials for IAM authentication failed: signing with the ones in hand while they are valid"
                );
                state.last_failure = Some((now, why));
            }
        }
        drop(state);
        self.refreshed.send_modify(|n| *n += 1);
    }
}

/// The error of a caller left with nothing to sign with after the refresh failed (`why`).
fn refresh_failed(why: &str) -> Error {
    Error::credentials(format!(
        "loading AWS credentials for IAM authentication failed: {why}"
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::future;

    #[derive(Debug)]
    struct Panics;

    impl ProvideCredentials for Panics {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::new(async { panic!("a provider bug") })
        }
    }

    /// A provider that panics ends its refresh with a failure: the waiter gets an error,
    /// never a hang, and the next caller may refresh again.
    #[tokio::test]
    async fn a_panicking_provider_fails_the_refresh_instead_of_hanging_it() {
        let signing = SigningCredentials::default();
        let provider = SharedCredentialsProvider::new(Panics);
        let now = SystemTime::now();
        let err = tokio::time::timeout(Duration::from_secs(5), signing.get(&provider, now))
            .await
            .expect("the waiter hung on a refresh that had panicked")
            .expect_err("no credentials");
        assert!(format!("{err:#}").contains("without an answer"), "{err}");
        let later = now + RETRY_AFTER_FAILURE;
        let again = tokio::time::timeout(Duration::from_secs(5), signing.get(&provider, later))
            .await
            .expect("the next caller hung");
        assert!(again.is_err());
        assert_eq!(
            signing.fetches().await,
            2,
            "the next caller refreshed again"
        );
    }
}
