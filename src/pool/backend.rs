//! The seam between the pool machinery and a driver: what a backend provides (pools that
//! follow their targets, checkouts, transactions), and what one attempt of retried work is.

use std::sync::Arc;

use super::targets::Targets;
use super::transaction::TransactionOptions;
use crate::config::PoolSizing;
use crate::connector::BoxFuture;
use crate::endpoint::HostPort;
use crate::error::{Error, Result};
use crate::topology::Role;

/// Whether a pool follows its role or serves one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follows {
    /// One instance; the pool is closed when the instance leaves its role.
    Instance,
    /// A role: the pool is pointed at the role's instances as they change, and its
    /// connections to an instance it left are closed at checkout and on return.
    Role,
}

/// What a driver backend provides: pools that connect where their targets say.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The driver's pool handle (cheap to clone).
    type Pool: Clone + Send + Sync + 'static;

    /// Whether the backend asks the credential provider on every connect itself; then the
    /// core neither fetches credentials for new pools nor renews them.
    const CREDENTIALS_PER_CONNECT: bool = false;

    /// Creates a pool serving `role` that opens connections lazily to the instances of
    /// `targets`, in turn, logging in with each route's credentials.
    fn open(
        &self,
        role: Role,
        follows: Follows,
        sizing: PoolSizing,
        targets: Arc<Targets>,
    ) -> Result<Self::Pool>;

    /// `targets` changed (another instance, renewed credentials): the pool's future
    /// connections follow them, and its idle stale connections go where the driver allows.
    fn retarget(&self, pool: &Self::Pool, targets: &Targets);

    /// A login to `address` failed with `err` on a pool's new connection: whether the
    /// backend connects there differently from now on (`sslmode=allow` in the sqlx flavour:
    /// TLS after a refused plain login), so that the checkout retries at once.
    fn plain_login_refused(&self, address: &HostPort, err: &Error) -> bool {
        let _ = (address, err);
        false
    }

    /// Ends the pool's stale connections at once, checked-out ones included: their instance
    /// is gone. Backends that cannot reach the socket leave them to checkout and return.
    fn abort(pool: &Self::Pool) {
        let _ = pool;
    }

    /// Closes a pool: idle connections at once, checked-out ones when they are returned.
    fn close(pool: Self::Pool) -> BoxFuture<'static, ()>;

    /// Whether the pool was closed (by the core, or by a user holding a handed-out pool).
    fn is_closed(pool: &Self::Pool) -> bool;

    /// Connections currently open, and how many of them are idle.
    fn size_and_idle(pool: &Self::Pool) -> (u32, u32);

    /// A checked-out connection.
    type Connection: Send + 'static;

    /// Checks out a connection; a pool closed meanwhile yields [`Error::is_closed`].
    ///
    /// Not boxed: sqlx's checkout future is about 13 KB, and boxing it copies it on every
    /// checkout (the caller's future holds it in place instead).
    fn acquire(
        pool: &Self::Pool,
    ) -> impl Future<Output = Result<Self::Connection>> + Send + 'static;

    /// Closes a checked-out connection instead of returning it to its pool (its state is
    /// unknown).
    fn discard(connection: Self::Connection);

    /// Whether a checked-out connection is known closed already (its server went away while
    /// it sat idle): work sent on it would fail before it left the process, so the checkout
    /// takes another instead. Backends that cannot tell say `false`.
    fn is_broken(connection: &Self::Connection) -> bool {
        let _ = connection;
        false
    }

    /// Opens a transaction with `statement` (`BEGIN` and its options) the way the driver
    /// tracks it: a nested begin inside the work then becomes a savepoint.
    fn begin(connection: &mut Self::Connection, statement: String) -> BoxFuture<'_, Result<()>>;

    /// Commits the transaction `begin` opened.
    fn commit(connection: &mut Self::Connection) -> BoxFuture<'_, Result<()>>;

    /// Rolls back the transaction `begin` opened.
    fn rollback(connection: &mut Self::Connection) -> BoxFuture<'_, Result<()>>;

    /// Runs one query of the simple protocol and returns the first column of its first row
    /// as text (`None` for NULL or no row).
    fn query_value(
        connection: &mut Self::Connection,
        sql: String,
    ) -> BoxFuture<'_, Result<Option<String>>>;
}

/// What one attempt of retried work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The work as it is.
    Plain,
    /// The work between `BEGIN` and `COMMIT`.
    Transaction(TransactionOptions),
}

impl Attempt {
    /// The role the work's errors are classified for: a `READ ONLY` transaction refuses
    /// writes like a reader (25006 is then the caller's mistake, not a demoted writer).
    pub(crate) fn classified_as(self, role: Role) -> Role {
        match self {
            Attempt::Transaction(options) if options.is_read_only() => Role::Reader,
            _ => role,
        }
    }
}

/// A checked-out connection that is closed, not returned to its pool, unless the attempt
/// that used it ended cleanly: dropping a retried call at any await (a client gone, a
/// timeout) never hands the next borrower a connection inside a transaction or mid-query.
pub(crate) struct Held<B: Backend> {
    connection: Option<B::Connection>,
}

impl<B: Backend> Held<B> {
    pub(crate) fn new(connection: B::Connection) -> Held<B> {
        Held {
            connection: Some(connection),
        }
    }

    pub(crate) fn get(&mut self) -> Option<&mut B::Connection> {
        self.connection.as_mut()
    }

    /// Returns the connection to its pool.
    pub(crate) fn release(mut self) {
        drop(self.connection.take());
    }
}

impl<B: Backend> Drop for Held<B> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            B::discard(connection);
        }
    }
}

/// How one attempt ended, and whether its connection may go back to the pool.
pub(crate) struct Ended<T> {
    pub(crate) result: Result<T>,
    pub(crate) reusable: bool,
}

/// One attempt of a caller's work on a checked-out connection, its errors classified.
pub(crate) trait Retried<C, T>: Send {
    fn attempt<'a>(&'a mut self, connection: &'a mut C) -> BoxFuture<'a, Result<T>>
    where
        T: 'a;
}
