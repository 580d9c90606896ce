//! How a process hosts Shop services. Each service describes itself once, as a [`Hosted`]:
//! its tonic server (which gives its health/reflection name, its routes and its in-process
//! transport) and its named background tasks. A [`Host`] runs any number of those: a
//! service's own process hosts one ([`Standalone`]), the `shop` monolith hosts all three on
//! one gRPC listener. Both start every task the services declare, so a loop added to a
//! service cannot be missing from the monolith.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use tokio::net::TcpListener;
use tonic::{body::Body, server::NamedService, service::Routes};
use tower::{Layer as _, util::BoxCloneSyncService};

use crate::{
    faults::{FaultInjector, FaultLayer},
    grpc::ServerOptions,
    identity::Trust,
    policy::{AuthLayer, FaultAdminCallers, Guard, ServicePolicy},
    transport::GrpcTransport,
};

/// The process's shutdown signal, cloneable so every task and listener can wait on it.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// How long tasks get to finish after shutdown before they are aborted.
const TASK_GRACE: Duration = Duration::from_secs(10);

/// A named background loop of a service (a sweeper, a reconciler, ...): runs until the
/// shutdown future it is given resolves.
pub struct Task {
    name: &'static str,
    run: Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, ()> + Send>,
}

impl Task {
    pub fn new<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name,
            run: Box::new(move |stop| run(stop).boxed()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A tonic server as a type-erased tower service, to be called in-process.
type LocalServer = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// One service, described once for whatever process hosts it.
pub struct Hosted {
    name: &'static str,
    policy: ServicePolicy,
    add_route: Box<dyn FnOnce(Routes) -> Routes + Send>,
    local: LocalServer,
    tasks: Vec<Task>,
}

impl Hosted {
    /// A service served by `server` (e.g. `UserServiceServer::new(..)`); its fully
    /// qualified name is what health reports as SERVING and reflection advertises.
    /// `policy` says who may call which of its RPCs (for `S::NAME`).
    pub fn new<S>(server: S, policy: ServicePolicy) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let routed = server.clone();
        debug_assert_eq!(policy.service, S::NAME, "a policy for another service");
        Self {
            name: S::NAME,
            policy,
            add_route: Box::new(move |routes| routes.add_service(routed)),
            local: BoxCloneSyncService::new(server),
            tasks: Vec::new(),
        }
    }

    /// Adds a background task, started by every host of this service.
    pub fn with_task<F, Fut>(mut self, name: &'static str, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Task::new(name, run));
        self
    }

    /// The fully-qualified gRPC service name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn task_names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(Task::name).collect()
    }

    pub fn policy(&self) -> ServicePolicy {
        self.policy
    }

    /// The service's server as an in-process transport, with the caller check (trusting
    /// `trust`) and `faults` applied as a server would apply them. Callers sign their calls
    /// on it like on a channel ([`crate::policy::sign`]).
    pub fn in_process(&self, faults: &FaultInjector, trust: &Trust) -> GrpcTransport {
        let guard = Guard::new(trust.clone(), &[self.policy], FaultAdminCallers::Operator);
        crate::transport::in_process(
            AuthLayer(guard).layer(FaultLayer(faults.clone()).layer(self.local.clone())),
        )
    }
}

/// A process hosting services: an optional gRPC listener serving all of them, an optional
/// `/metrics` listener, and every service's tasks. Creating one installs the process's
/// metrics recorder, so do that before connecting services (their metric descriptions
/// would otherwise go nowhere).
pub struct Host {
    options: ServerOptions,
    grpc: Option<TcpListener>,
    health: Option<TcpListener>,
    metrics: Option<TcpListener>,
    services: Vec<Hosted>,
    tasks: Vec<Task>,
}

impl Host {
    pub fn new(options: ServerOptions) -> Self {
        crate::metrics::handle();
        Self {
            options,
            grpc: None,
            health: None,
            metrics: None,
            services: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Binds the gRPC listener ("127.0.0.1:0" picks a free port).
    pub async fn grpc_on(mut self, addr: &str) -> anyhow::Result<Self> {
        self.grpc = Some(
            crate::grpc::bind(addr)
                .await
                .with_context(|| format!("binding gRPC on {addr}"))?,
        );
        Ok(self)
    }

    /// Binds a plaintext listener serving only the gRPC health service (for probes that
    /// cannot speak TLS); it runs with the gRPC listener.
    pub async fn health_on(mut self, addr: &str) -> anyhow::Result<Self> {
        self.health = Some(
            crate::grpc::bind(addr)
                .await
                .with_context(|| format!("binding the health listener on {addr}"))?,
        );
        Ok(self)
    }

    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Binds the `/metrics` listener.
    pub async fn metrics_on(mut self, addr: &str) -> anyhow::Result<Self> {
        self.metrics = Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?,
        );
        Ok(self)
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Hosts `service`: its routes on the gRPC listener, its tasks in this process.
    pub fn host(&mut self, service: Hosted) {
        self.services.push(service);
    }

    /// A task of the process itself rather than of one service.
    pub fn task(&mut self, task: Task) {
        self.tasks.push(task);
    }

    /// Starts every task and serves until `shutdown` resolves; then waits for the tasks
    /// to finish (aborting stragglers after a grace period).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown: Shutdown = shutdown.boxed().shared();
        let mut names = Vec::new();
        let mut policies = Vec::new();
        let mut routes = Routes::default();
        let mut tasks = self.tasks;
        for service in self.services {
            tracing::debug!(service = service.name, tasks = ?service.task_names(), "hosting");
            names.push(service.name);
            policies.push(service.policy);
            routes = (service.add_route)(routes);
            tasks.extend(service.tasks);
        }
        let running: Vec<_> = tasks
            .into_iter()
            .map(|task| {
                let name = task.name;
                (name, tokio::spawn((task.run)(shutdown.clone())))
            })
            .collect();
        let metrics = self
            .metrics
            .map(|l| tokio::spawn(crate::metrics::serve(l, shutdown.clone())));

        let served = match self.grpc {
            Some(listener) => crate::grpc::serve(
                listener,
                self.health,
                routes,
                &names,
                &policies,
                self.options,
                shutdown.clone(),
            )
            .await
            .context("serving gRPC"),
            None => {
                shutdown.clone().await;
                Ok(())
            }
        };

        for (name, mut handle) in running {
            if served.is_err() {
                // The listener failed before shutdown: the task would run on unwatched.
                handle.abort();
            } else if tokio::time::timeout(TASK_GRACE, &mut handle).await.is_err() {
                tracing::warn!(task = name, "task ignored shutdown; aborting it");
                handle.abort();
            }
        }
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        served
    }
}

/// A service as its own process: its gRPC and metrics listeners, bound at once so a taken
/// port fails the start.
pub struct Standalone {
    host: Host,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl Standalone {
    pub async fn bind(
        grpc_addr: &str,
        metrics_addr: &str,
        options: ServerOptions,
    ) -> anyhow::Result<Self> {
        let host = Host::new(options)
            .grpc_on(grpc_addr)
            .await?
            .metrics_on(metrics_addr)
            .await?;
        let grpc_addr = host.grpc_addr().context("gRPC listener has no address")?;
        let metrics_addr = host
            .metrics_addr()
            .context("metrics listener has no address")?;
        Ok(Self {
            host,
            grpc_addr,
            metrics_addr,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Adds the plaintext health-only listener ([`Host::health_on`]).
    pub async fn health_on(mut self, addr: &str) -> anyhow::Result<Self> {
        self.host = self.host.health_on(addr).await?;
        Ok(self)
    }

    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.host.health_addr()
    }

    /// Serves `service` (routes, tasks) until `shutdown` resolves.
    pub async fn run_until_stopped(
        mut self,
        service: Hosted,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.host.host(service);
        self.host.run_until_stopped(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};

    use tokio::sync::oneshot;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    /// A gRPC service of its own name that answers every call UNIMPLEMENTED.
    #[derive(Clone)]
    struct Probe;

    impl NamedService for Probe {
        const NAME: &'static str = "shop.test.v1.Probe";
    }

    impl tower::Service<http::Request<Body>> for Probe {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(tonic::Status::unimplemented("probe").into_http()))
        }
    }

    /// A service whose one task reports when it starts and when it has seen shutdown.
    fn probed() -> (Hosted, oneshot::Receiver<()>, oneshot::Receiver<()>) {
        let (started_tx, started) = oneshot::channel();
        let (stopped_tx, stopped) = oneshot::channel();
        let policy = ServicePolicy {
            service: Probe::NAME,
            audience: Some("probe"),
            rules: &[],
        };
        let service = Hosted::new(Probe, policy).with_task("probe", |stop| async {
            let _ = started_tx.send(());
            stop.await;
            let _ = stopped_tx.send(());
        });
        (service, started, stopped)
    }

    #[tokio::test]
    async fn hosted_tasks_start_with_the_host_and_end_at_shutdown() {
        let (service, started, mut stopped) = probed();
        assert_eq!(service.task_names(), ["probe"]);
        let mut host = Host::new(ServerOptions::default())
            .grpc_on("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = host.grpc_addr().expect("gRPC address");
        host.host(service);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(host.run_until_stopped(async {
            let _ = stop_rx.await;
        }));

        started.await.expect("the task was started");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("URL")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest {
                service: Probe::NAME.into(),
            })
            .await
            .expect("the hosted service is known to health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        assert!(
            stopped.try_recv().is_err(),
            "the task ended before shutdown"
        );

        stop.send(()).expect("host still running");
        run.await.expect("join").expect("host stopped cleanly");
        stopped.await.expect("the task saw shutdown and finished");
    }

    #[tokio::test]
    async fn a_host_without_listeners_still_runs_the_tasks() {
        let (service, started, stopped) = probed();
        let mut host = Host::new(ServerOptions::default());
        host.host(service);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(host.run_until_stopped(async {
            let _ = stop_rx.await;
        }));
        started.await.expect("the task was started");
        stop.send(()).expect("host still running");
        run.await.expect("join").expect("host stopped cleanly");
        stopped.await.expect("the task saw shutdown and finished");
    }
}
