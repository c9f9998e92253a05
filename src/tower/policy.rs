//! Which role a request gets.

use std::fmt;

use http::{HeaderMap, Method, Uri};

use crate::topology::Role;

/// Chooses the role of a request before its handler runs.
///
/// Implemented for [`SafeMethodsRead`] (the default), for [`Role`] (a fixed role, e.g. for
/// one route) and for closures `Fn(&Method, &Uri, &HeaderMap) -> Role`.
pub trait RolePolicy: Send + Sync + 'static {
    /// The role for a request.
    fn role(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Role;
}

/// `GET`, `HEAD` and `OPTIONS` read from a reader; every other method uses the writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeMethodsRead;

impl RolePolicy for SafeMethodsRead {
    fn role(&self, method: &Method, _: &Uri, _: &HeaderMap) -> Role {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            Role::Reader
        } else {
            Role::Writer
        }
    }
}

impl RolePolicy for Role {
    fn role(&self, _: &Method, _: &Uri, _: &HeaderMap) -> Role {
        *self
    }
}

impl<F> RolePolicy for F
where
    F: Fn(&Method, &Uri, &HeaderMap) -> Role + Send + Sync + 'static,
{
    fn role(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Role {
        self(method, uri, headers)
    }
}

/// A shared, type-erased policy.
#[derive(Clone)]
pub(crate) struct SharedPolicy(pub(crate) std::sync::Arc<dyn RolePolicy>);

impl fmt::Debug for SharedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RolePolicy")
    }
}
