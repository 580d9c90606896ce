//! How one service reaches another: over a socket (a tonic `Channel`) or in-process (the
//! callee's tonic server called as a tower service: same protobuf encoding, no sockets, no
//! HTTP/2). Generated clients are generic over the transport, so callers hold
//! `XServiceClient<GrpcTransport>` and do not care which it is; that is what lets the
//! `shop` monolith run the very same code as the distributed deployment.

use std::{convert::Infallible, time::Duration};

use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tower::{BoxError, ServiceExt, util::BoxCloneSyncService};

use tower::Layer as _;

use crate::{
    balance::{BalanceSettings, Balancer},
    endpoints::ServiceUrls,
    grpc::ObserveLayer,
    telemetry::ClientSpanLayer,
    timing::TimingLayer,
};

pub type GrpcTransport =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// A transport failure. A concrete type rather than a bare `BoxError`: generated clients
/// called inside `async_trait` methods trip over higher-ranked lifetimes with the latter.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(pub BoxError);

/// A lazily connecting channel to `url` ("http://127.0.0.1:50053"): the caller starts even
/// when the callee is down, and a dead callee fails fast (connect timeout) instead of hanging.
pub fn channel(
    url: &str,
    connect_timeout: Duration,
) -> Result<GrpcTransport, tonic::transport::Error> {
    let timed = ClientSpanLayer.layer(TimingLayer.layer(lazy_channel(url, connect_timeout)?));
    Ok(BoxCloneSyncService::new(
        timed.map_err(|e| TransportError(BoxError::from(e))),
    ))
}

/// The channel to every replica a `*_SERVICE_URL` names, balanced per call
/// ([`crate::balance`]). A setting naming one IP address gets the plain channel.
pub fn balanced(
    service: &'static str,
    urls: &ServiceUrls,
    connect_timeout: Duration,
    settings: &BalanceSettings,
) -> Result<GrpcTransport, tonic::transport::Error> {
    if let Some(url) = urls.single_addr() {
        return channel(&url, connect_timeout);
    }
    let balancer = Balancer::new(service, urls, connect_timeout, settings);
    // One client span per call, outside the balancer: a call moved to another replica is
    // still one call to the service.
    Ok(BoxCloneSyncService::new(
        ClientSpanLayer.layer(TimingLayer.layer(balancer)),
    ))
}

/// The tonic channel itself, connected on first use.
pub(crate) fn lazy_channel(
    url: &str,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

/// Calls `server` (e.g. `UserServiceServer::new(impl)`) in the same process. The observe
/// layer still runs, so metrics and trace context behave as over the network.
pub fn in_process<S>(server: S) -> GrpcTransport
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let observed = tower::ServiceBuilder::new()
        .layer(ClientSpanLayer)
        .layer(TimingLayer)
        .layer(ObserveLayer)
        .service(server);
    BoxCloneSyncService::new(observed.map_err(|e: Infallible| -> TransportError { match e {} }))
}

/// Where a [`late`] transport's calls go, once known.
#[derive(Clone, Default)]
pub struct LateTarget(std::sync::Arc<std::sync::OnceLock<GrpcTransport>>);

impl LateTarget {
    /// Points the transport at `target`; only the first call counts.
    pub fn set(&self, target: GrpcTransport) {
        let _ = self.0.set(target);
    }
}

/// A transport whose target is set after it is made: for two services that call each
/// other in one process (the monolith's payment-service asks user-service about a
/// checkout, and user-service is built on payment-service's transport). A call made
/// before [`LateTarget::set`] fails as a transport error.
pub fn late() -> (GrpcTransport, LateTarget) {
    let target = LateTarget::default();
    let cell = target.0.clone();
    let svc = tower::service_fn(move |req: http::Request<Body>| {
        let inner = cell.get().cloned();
        async move {
            match inner {
                Some(t) => t.oneshot(req).await,
                None => Err(TransportError(BoxError::from(
                    "the in-process callee is not built yet",
                ))),
            }
        }
    });
    (BoxCloneSyncService::new(svc), target)
}
