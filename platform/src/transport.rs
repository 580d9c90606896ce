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
    tls::{ClientTls, TlsError},
};

pub type GrpcTransport =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// A transport failure. A concrete type rather than a bare `BoxError`: generated clients
/// called inside `async_trait` methods trip over higher-ranked lifetimes with the latter.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(pub BoxError);

/// Why a caller cannot be set up to reach a service.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid URL: {0}")]
    Url(#[from] tonic::transport::Error),
}

/// A lazily connecting plaintext channel to `url` ("http://127.0.0.1:50053"): the caller
/// starts even when the callee is down, and a dead callee fails fast (connect timeout)
/// instead of hanging.
pub fn channel(
    url: &str,
    connect_timeout: Duration,
) -> Result<GrpcTransport, tonic::transport::Error> {
    Ok(timed(lazy_channel(url, connect_timeout, None)?))
}

/// Like [`channel`], over TLS to `url` ("https://127.0.0.1:50053"), whose certificate
/// must be signed by `tls`'s CA for `name` (the DNS name or IP address the caller means).
pub fn tls_channel(
    url: &str,
    name: &str,
    connect_timeout: Duration,
    tls: &ClientTls,
) -> Result<GrpcTransport, tonic::transport::Error> {
    Ok(timed(lazy_channel(
        url,
        connect_timeout,
        Some((tls, name)),
    )?))
}

fn timed(channel: Channel) -> GrpcTransport {
    let timed = ClientSpanLayer.layer(TimingLayer.layer(channel));
    BoxCloneSyncService::new(timed.map_err(|e| TransportError(BoxError::from(e))))
}

/// The channel to every replica a `*_SERVICE_URL` names, balanced per call
/// ([`crate::balance`]), over TLS when the URLs are `https://` (then `tls` is required;
/// and it is refused with `http://`: see [`crate::tls::check_scheme`]). A setting naming
/// one IP address gets the plain channel.
pub fn balanced(
    service: &'static str,
    urls: &ServiceUrls,
    connect_timeout: Duration,
    settings: &BalanceSettings,
    tls: Option<&ClientTls>,
) -> Result<GrpcTransport, DialError> {
    crate::tls::check_scheme(service, urls, tls)?;
    if let Some(url) = urls.single_addr() {
        return Ok(match (tls, urls.targets()) {
            (Some(tls), [target]) => tls_channel(&url, &target.tls_name(), connect_timeout, tls)?,
            _ => channel(&url, connect_timeout)?,
        });
    }
    let balancer = Balancer::new(service, urls, connect_timeout, settings, tls.cloned());
    // One client span per call, outside the balancer: a call moved to another replica is
    // still one call to the service.
    Ok(BoxCloneSyncService::new(
        ClientSpanLayer.layer(TimingLayer.layer(balancer)),
    ))
}

/// The tonic channel itself, connected on first use; over TLS to a server that must
/// prove it is `name` when `tls` is given.
pub(crate) fn lazy_channel(
    url: &str,
    connect_timeout: Duration,
    tls: Option<(&ClientTls, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if let Some((tls, name)) = tls {
        // The handshake is a round trip more than the connect: the same bound, at least 1 s.
        let handshake = connect_timeout.max(Duration::from_secs(1));
        endpoint = endpoint.tls_config(tls.config(name, handshake))?;
    }
    Ok(endpoint.connect_lazy())
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
