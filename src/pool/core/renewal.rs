//! Credentials per instance pool: renewal ahead of expiry in a task of its own (a checkout
//! never waits on the provider), and renewal after a refused login.

use std::sync::Arc;
use std::time::Duration;

use super::PoolCore;
use crate::auth::LoginFailure;
use crate::endpoint::HostPort;
use crate::metrics::CredentialEvent;
use crate::pool::backend::Backend;
use crate::pool::login;
use crate::pool::routing::Slot;

/// At most one forced renewal of every pool's credentials in this long.
const FORCED_RENEWAL_GAP: Duration = Duration::from_secs(1);

/// A renewal claimed with [`SlotLogin::start_renewal`], released on drop.
struct RenewalClaim(Arc<super::login::SlotLogin>);

impl Drop for RenewalClaim {
    fn drop(&mut self) {
        self.0.renewal_done();
    }
}

impl<B: Backend> PoolCore<B> {
    /// Renews `slot`'s due credentials in a task of their own, one at a time: a checkout
    /// never waits on the provider (an idle pooled connection needs no login, and a new one
    /// logs in with the current credentials meanwhile; a refusal renews them on its own).
    pub(super) fn renew_behind(&self, slot: &Slot<B::Pool>) {
        let Some(core) = self.itself.upgrade() else {
            return;
        };
        if !slot.login.start_renewal() {
            return;
        }
        let slot = slot.clone();
        tokio::spawn(async move {
            // Released however the task ends (a panic, the runtime shutting down).
            let _claim = RenewalClaim(slot.login.clone());
            core.renew(&slot).await;
        });
    }

    /// Fetches new credentials for `slot`'s pool (its current ones are due).
    pub(crate) async fn renew(&self, slot: &Slot<B::Pool>) {
        let target = login::target(&slot.instance, self.config.user());
        let seen = slot.login.current();
        match login::fetch(self.provider.as_ref(), &target, self.config.connect_timeout).await {
            Ok(credentials) => {
                crate::metrics::credentials(
                    &self.config.cluster_id,
                    slot.instance.id(),
                    CredentialEvent::Renewed,
                );
                slot.login
                    .replace(&seen, credentials, || self.credentials_renewed(slot));
            }
            Err(err) => {
                slot.login.retry_soon();
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    instance = slot.instance.id(),
                    error = %format_args!("{err:#}"),
                    "renewing credentials failed; new connections keep the current ones"
                );
            }
        }
    }

    /// `slot`'s credentials (or how to reach its instance) changed: the pools that connect
    /// to its instance use them from their next connection.
    pub(super) fn credentials_renewed(&self, slot: &Slot<B::Pool>) {
        self.backend.retarget(&slot.pool, &slot.targets);
        let table = self.routing.load();
        self.backend
            .retarget(&table.reads.pool, &table.reads.targets);
    }

    /// How to reach `address` changed (`sslmode=allow` learned that it wants TLS): the
    /// pools that connect there follow from their next connection.
    pub(crate) fn reach_changed(&self, address: &HostPort) {
        let table = self.routing.load();
        for slot in table.slots().filter(|s| s.instance.address() == address) {
            self.credentials_renewed(slot);
        }
    }

    /// A login with `slot`'s credentials was refused, for the `attempt`-th time in `elapsed`:
    /// asks the provider for new ones, waiting at most `limit` (a provider bridging a
    /// rotation pauses before it fetches again). Returns whether it gave some.
    pub(super) async fn renew_rejected(
        &self,
        slot: &Slot<B::Pool>,
        attempt: u32,
        elapsed: Duration,
        limit: Duration,
    ) -> bool {
        let target = login::target(&slot.instance, self.config.user());
        let rejected = slot.login.current();
        crate::metrics::credentials(
            &self.config.cluster_id,
            slot.instance.id(),
            CredentialEvent::Refused,
        );
        let failure = LoginFailure::new(&target, &rejected, attempt, elapsed);
        let renewed = tokio::time::timeout(
            limit,
            login::unwind_safe(self.provider.login_rejected(failure)),
        )
        .await;
        match renewed {
            Ok(Ok(Some(credentials))) => {
                crate::metrics::credentials(
                    &self.config.cluster_id,
                    slot.instance.id(),
                    CredentialEvent::Renewed,
                );
                // Replaced meanwhile by a concurrent renewal: retry with those.
                slot.login
                    .replace(&rejected, credentials, || self.credentials_renewed(slot));
                true
            }
            Ok(Ok(None)) => {
                tracing::debug!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    instance = slot.instance.id(),
                    attempt,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "the provider has no other credentials for a refused login"
                );
                false
            }
            Ok(Err(err)) => {
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %self.config.cluster_id,
                    instance = slot.instance.id(),
                    error = %format_args!("{err:#}"),
                    "renewing refused credentials failed"
                );
                false
            }
            Err(_) => false,
        }
    }

    /// A login was refused on a connection the caller took from one of the pools: every
    /// pool asks for new credentials (at most once a second).
    pub(crate) fn login_rejected_somewhere(self: &Arc<Self>) {
        if !self.forced_renewal.pass(FORCED_RENEWAL_GAP) {
            return;
        }
        let core = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(core) = core.upgrade() else { return };
            let table = core.routing.load_full();
            for slot in table.slots() {
                core.renew_rejected(slot, 1, Duration::ZERO, core.config.connect_timeout)
                    .await;
            }
        });
    }
}
