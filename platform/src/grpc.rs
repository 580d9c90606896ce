//! gRPC server bootstrap shared by every service: standard health service, server
//! reflection (v1 and v1alpha, for grpcurl 1.8), the echo service and (when switched on)
//! the fault admin, the caller check (service identity and allow-lists, see
//! [`crate::policy`]), a server-side request timeout, the observe layer (request context,
//! span, metrics), TLS when given a certificate ([`crate::tls`]), a plaintext health-only
//! listener when asked for one, and graceful shutdown.

use std::{
    collections::HashSet,
    future::Future,
    sync::OnceLock,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{FutureExt as _, future::BoxFuture};
use shop_proto::admin::v1::{echo_server::EchoServer, fault_admin_server::FaultAdminServer};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tracing::Instrument;

use crate::{
    context::{Deadline, TraceContext, Traceparent},
    faults::{EchoService, FaultAdminService, FaultInjector, FaultLayer},
    identity::Trust,
    policy::{AuthLayer, FaultAdminCallers, Guard, ServicePolicy},
    tls::ServerTls,
};

/// Settings every gRPC server shares.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Upper bound on any one request, whatever the caller's `grpc-timeout` says.
    pub request_timeout: Duration,
    pub faults: FaultInjector,
    /// The callers' public keys this server accepts (empty: every call but health and
    /// reflection is refused).
    pub trust: Trust,
    /// Serve `shop.admin.v1.FaultAdmin`, for the operator and the web shop's lab (the
    /// gateway acting for an admin user, [`FaultAdminCallers::LabToo`]). Off: it does not
    /// exist; the startup fault rules still apply.
    pub fault_admin: bool,
    /// Serve TLS only (None: plaintext HTTP/2, for loopback development).
    pub tls: Option<ServerTls>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            faults: FaultInjector::default(),
            trust: Trust::default(),
            fault_admin: false,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving gRPC")]
    Transport(#[from] tonic::transport::Error),
}

/// Adds the admin services every Shop server hosts beside its own: the echo floor and,
/// when `fault_admin`, fault injection control.
pub fn with_admin_services(routes: Routes, faults: &FaultInjector, fault_admin: bool) -> Routes {
    let routes = routes.add_service(EchoServer::new(EchoService));
    if fault_admin {
        routes.add_service(FaultAdminServer::new(FaultAdminService(faults.clone())))
    } else {
        routes
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains in-flight calls.
/// `served` lists the fully-qualified service names health reports as SERVING; `policies`
/// their allow-lists. `health`, when given, serves `grpc.health.v1.Health` alone, in
/// plaintext whatever `listener` speaks: for probes that cannot speak TLS (Kubernetes'
/// gRPC probes). It answers what `listener`'s own health service answers.
pub async fn serve(
    listener: TcpListener,
    health: Option<TcpListener>,
    routes: Routes,
    served: &[&str],
    policies: &[ServicePolicy],
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in served {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    let descriptor_sets = [
        shop_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for set in descriptor_sets {
        v1 = v1.register_encoded_file_descriptor_set(set);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
    }
    // The descriptor set holds every Shop service; advertise only what this server hosts,
    // so `grpcurl list` on user-service does not offer ItemService.
    let admin: &[&str] = if options.fault_admin {
        &["shop.admin.v1.FaultAdmin", "shop.admin.v1.Echo"]
    } else {
        &["shop.admin.v1.Echo"]
    };
    let advertised = served
        .iter()
        .copied()
        .chain(["grpc.health.v1.Health"])
        .chain(admin.iter().copied());
    for name in advertised {
        v1 = v1.with_service_name(name);
        v1alpha = v1alpha.with_service_name(name);
    }

    let shutdown = shutdown.boxed().shared();
    // Aborted when this returns (the JoinHandle's drop does not abort it).
    let health_only = health.map(|listener| {
        let server = tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(crate::net::incoming(listener), shutdown.clone());
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %crate::telemetry::chain(&e), "the health listener failed");
            }
        }))
    });

    let routes = with_admin_services(routes, &options.faults, options.fault_admin)
        .add_service(health_service)
        .add_service(v1.build_v1()?)
        .add_service(v1alpha.build_v1alpha()?);

    let fault_admin_callers = if options.fault_admin {
        FaultAdminCallers::LabToo
    } else {
        FaultAdminCallers::Operator
    };
    // Deadline inside observe (so a timeout is counted and logged as DEADLINE_EXCEEDED) and
    // outside faults (so injected latency runs into the deadline like real latency). The
    // caller check inside observe too, so refusals are counted and logged.
    let layers = tower::ServiceBuilder::new()
        .layer(ObserveLayer)
        .layer(AuthLayer(Guard::new(
            options.trust.clone(),
            policies,
            fault_admin_callers,
        )))
        .layer(DeadlineLayer(options.request_timeout))
        .layer(FaultLayer(options.faults.clone()));

    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        server = server.tls_config(tls.config())?;
    }
    server
        .layer(layers)
        .add_routes(routes)
        // TCP_NODELAY on every accepted socket (`net`'s test checks it is set): without it a
        // response of a few KB waits for the client's delayed ACK, ~40 ms a hop.
        .serve_with_incoming_shutdown(crate::net::incoming(listener), shutdown)
        .await?;
    drop(health_only);
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` ("127.0.0.1:0" picks a free port).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    crate::net::bind(addr).await
}

/// Ends a call at the earlier of the caller's `grpc-timeout` and the server's own cap, with
/// DEADLINE_EXCEEDED as the gRPC spec asks. (tonic's built-in server timeout answers
/// CANCELLED, which callers' circuit breakers would not count as a slow dependency.)
#[derive(Clone, Copy)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, cap: self.0 }
    }
}

#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    cap: Duration,
}

impl<S, B> tower::Service<http::Request<B>> for DeadlineService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = Deadline::from_headers(req.headers())
            .map(|d| d.0.saturating_duration_since(Instant::now()))
            .map_or(self.cap, |left| left.min(self.cap));
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(res) => res,
                Err(_) => Ok(tonic::Status::deadline_exceeded("deadline exceeded").into_http()),
            }
        })
    }
}

/// Tower layer that gives each gRPC call its context (trace, request id, deadline) in the
/// request extensions, a tracing span, and Prometheus request counts and latencies.
#[derive(Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// The `method` label of every call to a method no Shop service defines.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The metrics label of a call to `path`: the path itself when it names a method of the
/// Shop contracts, else [`UNKNOWN_METHOD`], so a client calling made-up methods cannot
/// grow /metrics without bound.
pub fn metric_method(path: &str) -> String {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(shop_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        set.file
            .iter()
            .flat_map(|file| {
                let package = file.package();
                file.service.iter().flat_map(move |service| {
                    service
                        .method
                        .iter()
                        .map(move |m| format!("/{package}.{}/{}", service.name(), m.name()))
                })
            })
            .collect()
    });
    if known.contains(path) {
        path.to_owned()
    } else {
        UNKNOWN_METHOD.to_owned()
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let mut trace = TraceContext::from_headers(req.headers());
        if let Some(deadline) = Deadline::from_headers(req.headers()) {
            req.extensions_mut().insert(deadline);
        }
        // Exported when traces are on (health and reflection calls never are): the span's
        // ids become the call's context, so the trace id logged and the span id sent on
        // are the exported ones.
        let exported = crate::telemetry::enabled() && !method.starts_with("/grpc.");
        let span = if exported {
            let span = crate::telemetry::grpc_span("server", &method);
            crate::telemetry::adopt(
                &span,
                Traceparent::from_headers(req.headers()).as_ref(),
                &mut trace,
            );
            span.record("trace_id", tracing::field::display(&trace.trace_id));
            span.record("request_id", tracing::field::display(&trace.request_id));
            span
        } else if crate::telemetry::enabled() {
            // A health or reflection call: below the level spans are exported at.
            tracing::debug_span!(
                "grpc",
                method = %method,
                trace_id = %trace.trace_id,
                request_id = %trace.request_id,
            )
        } else {
            tracing::info_span!(
                "grpc",
                method = %method,
                trace_id = %trace.trace_id,
                request_id = %trace.request_id,
            )
        };
        req.extensions_mut().insert(trace);
        let start = Instant::now();
        // The handler's own ledger (store round trips, further calls), returned to the
        // caller in a header: see `timing`.
        let timings = crate::timing::Timings::default();
        let fut = crate::timing::scope(timings.clone(), self.inner.call(req));
        Box::pin(
            async move {
                let mut res = fut.await;
                let elapsed = start.elapsed();
                if let Ok(r) = &mut res {
                    let mut ledger = timings.snapshot();
                    ledger.add(
                        &format!("handler.{}", crate::timing::method_label(&method)),
                        elapsed,
                        1,
                    );
                    crate::timing::write_header(r.headers_mut(), &ledger);
                }
                // Unary errors are trailers-only responses: the status is in the headers.
                let code = match &res {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                    Err(_) => tonic::Code::Internal,
                };
                if exported {
                    crate::telemetry::record_grpc_status(&tracing::Span::current(), code);
                }
                let code_name = format!("{code:?}");
                if code == tonic::Code::Ok {
                    tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "ok");
                } else {
                    tracing::info!(elapsed_ms = elapsed.as_secs_f64() * 1e3, code = %code_name, "failed");
                }
                if !method.starts_with("/grpc.") {
                    let method = metric_method(&method);
                    metrics::counter!(
                        "grpc_server_requests_total",
                        "method" => method.clone(),
                        "code" => code_name,
                    )
                    .increment(1);
                    metrics::histogram!(
                        "grpc_server_request_duration_seconds",
                        "method" => method,
                    )
                    .record(elapsed.as_secs_f64());
                }
                res
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shop_proto::admin::v1::{
        EchoRequest, GetFaultsRequest, echo_client::EchoClient,
        fault_admin_client::FaultAdminClient,
    };

    use super::*;
    use crate::identity::{GATEWAY, ITEM_SERVICE, OPERATOR, Signer, UserAssertion, UserRole};

    const PROBE: ServicePolicy = ServicePolicy {
        service: "shop.test.v1.Probe",
        audience: Some("probe"),
        rules: &[],
    };

    async fn serving(
        options: ServerOptions,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            None,
            Routes::default(),
            &[],
            &[PROBE],
            options,
            async {
                let _ = stopped.await;
            },
        ));
        (addr, stop)
    }

    #[tokio::test]
    async fn the_fault_admin_exists_only_when_switched_on_for_the_operator_and_the_lab() {
        let op = Signer::ephemeral(OPERATOR).expect("key");
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let item = Signer::ephemeral(ITEM_SERVICE).expect("key");
        let trust = Trust::of(&[&op, &gw, &item]);
        let admin = UserAssertion {
            user_id: uuid::Uuid::new_v4(),
            role: UserRole::Admin,
        };
        let customer = UserAssertion {
            role: UserRole::Customer,
            ..admin
        };
        // Calls FaultAdmin as `signer`, for `user` when given (the `act` claim).
        let get = |addr: std::net::SocketAddr, signer: Signer, user: Option<UserAssertion>| async move {
            let channel =
                crate::transport::channel(&format!("http://{addr}"), Duration::from_secs(2))
                    .expect("channel");
            let mut req = tonic::Request::new(GetFaultsRequest {});
            if let Some(u) = user {
                req.extensions_mut().insert(u);
            }
            FaultAdminClient::new(crate::policy::sign(channel, &signer, "probe"))
                .get_faults(req)
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        };

        let (closed, _stop_closed) = serving(ServerOptions {
            trust: trust.clone(),
            ..ServerOptions::default()
        })
        .await;
        assert_eq!(
            get(closed, op.clone(), None).await,
            Err(tonic::Code::Unimplemented)
        );
        // Off, the lab's admission is off too: refused before the router is asked.
        assert_eq!(
            get(closed, gw.clone(), Some(admin)).await,
            Err(tonic::Code::PermissionDenied)
        );

        let (open, _stop_open) = serving(ServerOptions {
            trust,
            fault_admin: true,
            ..ServerOptions::default()
        })
        .await;
        assert_eq!(get(open, op, None).await, Ok(()));
        // The web shop's lab: the gateway acting for an admin user.
        assert_eq!(get(open, gw.clone(), Some(admin)).await, Ok(()));
        // Not the gateway on its own account, nor for a customer.
        assert_eq!(
            get(open, gw.clone(), None).await,
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            get(open, gw, Some(customer)).await,
            Err(tonic::Code::PermissionDenied)
        );
        // Another service naming an admin user is not believed (only the gateway
        // authenticates end users).
        assert_eq!(
            get(open, item.clone(), Some(admin)).await,
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            get(open, item, None).await,
            Err(tonic::Code::PermissionDenied)
        );
    }

    #[tokio::test]
    async fn a_call_without_a_token_is_unauthenticated_and_health_stays_open() {
        let op = Signer::ephemeral(OPERATOR).expect("key");
        let (addr, _stop) = serving(ServerOptions {
            trust: Trust::of(&[&op]),
            ..ServerOptions::default()
        })
        .await;
        let channel = crate::transport::channel(&format!("http://{addr}"), Duration::from_secs(2))
            .expect("channel");
        let refused = EchoClient::new(channel.clone())
            .echo(EchoRequest { payload: vec![1] })
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let health = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert!(health.is_ok(), "{health:?}");
    }

    #[test]
    fn shop_methods_keep_their_label_and_others_collapse() {
        assert_eq!(
            metric_method("/shop.user.v1.UserService/Login"),
            "/shop.user.v1.UserService/Login"
        );
        assert_eq!(
            metric_method("/shop.admin.v1.Echo/Echo"),
            "/shop.admin.v1.Echo/Echo"
        );
        assert_eq!(
            metric_method("/shop.user.v1.UserService/Nope"),
            UNKNOWN_METHOD
        );
        assert_eq!(metric_method("/x/y"), UNKNOWN_METHOD);
    }

    #[tokio::test]
    async fn calls_to_made_up_methods_share_one_metrics_label() {
        use tower::ServiceExt as _;

        let metrics = crate::metrics::handle();
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Calls as the operator, so the made-up paths get past the caller check.
        let operator = crate::identity::Signer::ephemeral(crate::identity::OPERATOR).expect("key");
        let server = tokio::spawn(serve(
            listener,
            None,
            Routes::default(),
            &[],
            &[],
            ServerOptions {
                trust: crate::identity::Trust::of(&[&operator]),
                ..ServerOptions::default()
            },
            async {
                let _ = stopped.await;
            },
        ));
        let channel = crate::transport::channel(&format!("http://{addr}"), Duration::from_secs(2))
            .expect("channel");
        let channel = crate::policy::sign(channel, &operator, crate::policy::ANY_SERVER);
        let made_up: Vec<String> = (0..40)
            .map(|i| {
                let tag = uuid::Uuid::new_v4().simple().to_string();
                if i % 2 == 0 {
                    format!("/shop.user.v1.UserService/Made{tag}")
                } else {
                    format!("/made{tag}.Service/Call")
                }
            })
            .collect();
        for path in &made_up {
            let path: http::uri::PathAndQuery = path.parse().expect("a path");
            // The generated Echo client, sending to a made-up path instead of Echo/Echo.
            let rerouted = channel
                .clone()
                .map_request(move |mut req: http::Request<_>| {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(path.clone());
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                    req
                });
            let err = EchoClient::new(rerouted)
                .echo(EchoRequest { payload: vec![] })
                .await
                .expect_err("no such method");
            assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        }
        EchoClient::new(channel)
            .echo(EchoRequest { payload: vec![1] })
            .await
            .expect("a real method");
        let _ = stop.send(());
        let _ = server.await;

        let text = metrics.render();
        for path in &made_up {
            assert!(
                !text.contains(path.as_str()),
                "{path} became a label:\n{text}"
            );
        }
        let unknown = text
            .lines()
            .find(|l| {
                l.starts_with("grpc_server_requests_total")
                    && l.contains(r#"method="unknown""#)
                    && l.contains("Unimplemented")
            })
            .unwrap_or_else(|| panic!("no unknown-method series:\n{text}"));
        assert!(unknown.ends_with(" 40"), "{unknown}");
        assert!(
            text.contains(r#"method="/shop.admin.v1.Echo/Echo""#),
            "{text}"
        );
    }
}
