//! The service the layer wraps around a handler.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::db::Db;
use super::future::ResponseFuture;
use super::layer::{AuroraLayer, now_ms};
use super::pool::{DefaultPool, LayerPool};
use super::scope;
use crate::topology::Role;

/// The middleware built by [`AuroraLayer`].
#[derive(Debug, Clone)]
pub struct AuroraService<S, P = DefaultPool> {
    inner: S,
    layer: AuroraLayer<P>,
}

impl<S, P: LayerPool> AuroraService<S, P> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: AuroraLayer<P>) -> AuroraService<S, P> {
        AuroraService { inner, layer }
    }

    /// A layer with default settings, as [`AuroraLayer::new`].
    pub fn layer(pool: P) -> AuroraLayer<P> {
        AuroraLayer::new(pool)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for AuroraService<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    P: LayerPool,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let sticky = layer
            .read_your_writes
            .as_ref()
            .is_some_and(|ryw| ryw.is_sticky(request.headers(), now_ms()));
        let role = if sticky {
            Role::Writer
        } else {
            layer
                .policy
                .0
                .role(request.method(), request.uri(), request.headers())
        };
        let wrote = Arc::new(AtomicBool::new(false));
        request
            .extensions_mut()
            .insert(Db::new(layer.pool.clone(), role, sticky, wrote.clone()));
        ResponseFuture::new(
            scope::serve(layer.classifier.clone(), self.inner.call(request)),
            wrote,
            layer.read_your_writes.clone(),
            layer.retry_after,
        )
    }
}
