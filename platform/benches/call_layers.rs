//! What one internal gRPC call costs, layer by layer (`cargo bench -p platform --bench
//! call_layers`). Each line is the median over batches of the time per operation:
//!
//! - the Echo floor: a bare tonic server and channel over loopback, then the same Echo through
//!   Shop's whole server stack (observe, caller check, deadline, faults) and client stack
//!   (client span, timing, signing), then balanced over two replicas;
//! - each layer alone, without the network: minting a service token (newly signed, and
//!   reused from the cache), verifying one (in full, and from the cache), the caller check,
//!   the timing ledger of one call, the server's observe layer, and its metrics.
//!
//! Figures, not assertions: they vary with the machine. docs/architecture.md quotes a run.

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use platform::{
    balance::BalanceSettings,
    endpoints::ServiceUrls,
    faults::FaultInjector,
    grpc::{ObserveLayer, ServerOptions},
    identity::{GATEWAY, ITEM_SERVICE, Signer, Trust, UserAssertion, UserRole},
    policy::{self, FaultAdminCallers, Guard},
    timing::{self, TimingLayer, Timings},
};
use shop_proto::admin::v1::{EchoRequest, echo_client::EchoClient};
use tonic::{body::Body, service::Routes};
use tower::{Layer as _, ServiceExt as _};

const BATCHES: usize = 7;

/// Median time per call of `f` over [`BATCHES`] batches of `n` (after a warm-up batch).
fn per_op(n: u32, mut f: impl FnMut()) -> Duration {
    let mut batches = Vec::with_capacity(BATCHES);
    for b in 0..=BATCHES {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        if b > 0 {
            batches.push(start.elapsed() / n);
        }
    }
    batches.sort();
    batches[BATCHES / 2]
}

async fn per_call<F, Fut>(n: u32, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut batches = Vec::with_capacity(BATCHES);
    for b in 0..=BATCHES {
        let start = Instant::now();
        for _ in 0..n {
            f().await;
        }
        if b > 0 {
            batches.push(start.elapsed() / n);
        }
    }
    batches.sort();
    batches[BATCHES / 2]
}

struct Report {
    floor: Option<Duration>,
}

impl Report {
    fn line(&mut self, what: &str, took: Duration) {
        let us = took.as_secs_f64() * 1e6;
        match self.floor {
            Some(floor) => println!(
                "{what:<58} {us:>9.2} µs  {:>5.2}x floor",
                took.as_secs_f64() / floor.as_secs_f64()
            ),
            None => {
                println!("{what:<58} {us:>9.2} µs  (the floor)");
                self.floor = Some(took);
            }
        }
    }
}

/// An Echo server with nothing but tonic.
async fn bare_echo() -> SocketAddr {
    let listener = platform::grpc::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let routes =
        platform::grpc::with_admin_services(Routes::default(), &FaultInjector::default(), false);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(platform::net::incoming(listener)),
    );
    addr
}

/// An Echo server with every layer a Shop server has.
async fn shop_echo(trust: &Trust) -> SocketAddr {
    let listener = platform::grpc::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let options = ServerOptions {
        trust: trust.clone(),
        ..ServerOptions::default()
    };
    tokio::spawn(platform::grpc::serve(
        listener,
        None,
        Routes::default(),
        &[],
        &[],
        options,
        std::future::pending(),
    ));
    addr
}

fn echo_request() -> EchoRequest {
    EchoRequest {
        payload: vec![7; 64],
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The recorder every service installs: metrics cost what they cost in production.
    let _metrics = platform::metrics::handle();
    let gateway = Signer::ephemeral(GATEWAY).expect("key");
    let trust = Trust::of(&[&gateway]);
    let user = Some(UserAssertion {
        user_id: uuid::Uuid::new_v4(),
        role: UserRole::Customer,
    });
    let mut report = Report { floor: None };
    let connect = Duration::from_secs(2);

    // The floor and the whole call, over loopback.
    let bare = bare_echo().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{bare}"))
        .expect("url")
        .tcp_nodelay(true)
        .connect_lazy();
    let mut client = EchoClient::new(channel);
    report.line(
        "echo: bare tonic server and channel",
        per_call(2_000, || {
            let mut c = client.clone();
            async move {
                c.echo(echo_request()).await.expect("echo");
            }
        })
        .await,
    );
    let _ = client.echo(echo_request()).await;

    let shop = shop_echo(&trust).await;
    let signed = policy::sign(
        platform::transport::channel(&format!("http://{shop}"), connect).expect("channel"),
        &gateway,
        policy::ANY_SERVER,
    );
    let client = EchoClient::new(signed);
    report.line(
        "echo: Shop server and client stacks (token cached)",
        per_call(2_000, || {
            let mut c = client.clone();
            async move {
                c.echo(echo_request()).await.expect("echo");
            }
        })
        .await,
    );
    let second = shop_echo(&trust).await;
    let balanced = platform::transport::balanced(
        "echo",
        &ServiceUrls::of_addrs(&[shop, second]),
        connect,
        &BalanceSettings::default(),
        None,
    )
    .expect("balanced");
    let client = EchoClient::new(policy::sign(balanced, &gateway, policy::ANY_SERVER));
    report.line(
        "echo: the same, balanced over two replicas",
        per_call(2_000, || {
            let mut c = client.clone();
            async move {
                c.echo(echo_request()).await.expect("echo");
            }
        })
        .await,
    );

    // Each layer alone.
    const GET_ITEM: &str = "/shop.item.v1.ItemService/GetItem";
    report.line(
        "token mint: newly signed (every call, before the cache)",
        per_op(2_000, || {
            gateway
                .mint_for(
                    ITEM_SERVICE,
                    Some(GET_ITEM),
                    user,
                    platform::identity::TOKEN_TTL,
                )
                .expect("mint");
        }),
    );
    report.line(
        "token mint: reused from the cache",
        per_op(20_000, || {
            gateway.mint(ITEM_SERVICE, GET_ITEM, user).expect("mint");
        }),
    );
    let token = gateway.mint(ITEM_SERVICE, GET_ITEM, user).expect("mint");
    report.line(
        "token verify: in full (every call, before the cache)",
        per_op(2_000, || {
            trust
                .verify_uncached(&token, &[ITEM_SERVICE], GET_ITEM)
                .expect("valid");
        }),
    );
    report.line(
        "token verify: checked before (cache)",
        per_op(20_000, || {
            trust
                .verify(&token, &[ITEM_SERVICE], GET_ITEM)
                .expect("valid");
        }),
    );
    let guard = Guard::new(trust.clone(), &[], FaultAdminCallers::Operator);
    let echo_path = "/shop.admin.v1.Echo/Echo";
    let any = gateway
        .mint(policy::ANY_SERVER, echo_path, None)
        .expect("mint");
    report.line(
        "caller check (allow-list + cached verify)",
        per_op(20_000, || {
            guard.check(echo_path, Some(&any)).expect("allowed");
        }),
    );

    // The timing ledger of one call: the client layer timing it and folding in the callee's
    // header, around a service answering at once.
    let answer = tower::service_fn(|_req: http::Request<Body>| async {
        let mut res = http::Response::new(Body::empty());
        let mut ledger = timing::Ledger::default();
        ledger.add("handler.admin.Echo", Duration::from_micros(50), 1);
        ledger.add("store.redis", Duration::from_micros(30), 1);
        timing::write_header(res.headers_mut(), &ledger);
        Ok::<_, std::convert::Infallible>(res)
    });
    let timed = TimingLayer.layer(answer);
    let request = || {
        http::Request::builder()
            .uri(format!("http://x{echo_path}"))
            .body(Body::empty())
            .expect("request")
    };
    let ledger = Timings::default();
    let bare_answer = per_call(20_000, || {
        let svc = answer;
        async move {
            svc.oneshot(request()).await.expect("answer");
        }
    })
    .await;
    let with_ledger = per_call(20_000, || {
        let svc = timed.clone();
        let ledger = ledger.clone();
        async move {
            timing::scope(ledger, svc.oneshot(request()))
                .await
                .expect("answer");
        }
    })
    .await;
    report.line(
        "timing ledger: one call timed and folded in",
        with_ledger.saturating_sub(bare_answer),
    );
    let observed = ObserveLayer.layer(answer);
    let with_observe = per_call(20_000, || {
        let svc = observed.clone();
        async move {
            svc.oneshot(request()).await.expect("answer");
        }
    })
    .await;
    report.line(
        "server observe layer (context, span, ledger, metrics)",
        with_observe.saturating_sub(bare_answer),
    );
    report.line(
        "metrics: a request counter and a latency histogram",
        per_op(20_000, || {
            let method = platform::grpc::metric_method(echo_path);
            metrics::counter!(
                "grpc_server_requests_total",
                "method" => method.clone(),
                "code" => "Ok",
            )
            .increment(1);
            metrics::histogram!("grpc_server_request_duration_seconds", "method" => method)
                .record(0.000_1);
        }),
    );
}
