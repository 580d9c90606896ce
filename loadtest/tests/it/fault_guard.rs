//! `with_faults_cleared` against the real fault endpoints: platform's `FaultAdmin` served
//! over tonic and the card gateway's `/admin/faults` and `/admin/hangs`. A section that
//! injects faults and then fails, panics or is dropped halfway leaves none behind.

use std::time::Duration;

use loadtest::{
    admin::{self, Rule},
    experiment::sections::{FaultTargets, with_faults_cleared},
    generator::http::Target,
};
use platform::faults::{FaultAdminService, FaultInjector};
use shop_proto::admin::v1::fault_admin_server::FaultAdminServer;
use test_support::payment::{CardGatewayServer, card_gateway};

/// Two gRPC servers (like item- and user-service) and a card gateway, with handles on
/// their fault rules.
struct Rig {
    targets: FaultTargets,
    injectors: Vec<FaultInjector>,
    card: CardGatewayServer,
}

async fn fault_admin_server() -> (String, FaultInjector) {
    let faults = FaultInjector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = FaultAdminServer::new(FaultAdminService(faults.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    (format!("http://{addr}"), faults)
}

async fn rig() -> Rig {
    // The card gateway's admin API takes the operator's token; the load test sends it.
    loadtest::identity::use_operator(test_support::identity::signer(platform::identity::OPERATOR));
    let (a, fa) = fault_admin_server().await;
    let (b, fb) = fault_admin_server().await;
    let card = card_gateway().await;
    Rig {
        targets: FaultTargets {
            grpc: vec![a, b],
            card: Some(Target::parse(&card.url).expect("target")),
        },
        injectors: vec![fa, fb],
        card,
    }
}

impl Rig {
    /// What a section does: a slow tail on one service, failures on the other, a slow and
    /// hanging card gateway.
    async fn inject(&self) -> anyhow::Result<()> {
        admin::set_grpc_faults(&self.targets.grpc[0], &[Rule::tail("*", 0.01, 200)]).await?;
        admin::set_grpc_faults(&self.targets.grpc[1], &[Rule::error_rate("*", 0.1)]).await?;
        let card = self.targets.card.as_ref().expect("card");
        admin::set_http_faults(
            card,
            "/admin/faults",
            None,
            &[Rule::fixed("POST /v1/charges", 2000)],
        )
        .await?;
        admin::set_http_faults(card, "/admin/hangs", None, &[Rule::error_rate("*", 0.5)]).await?;
        assert_eq!(self.rule_count(), 4, "every fault took");
        Ok(())
    }

    fn rule_count(&self) -> usize {
        self.injectors
            .iter()
            .map(|f| f.rules().len())
            .sum::<usize>()
            + self.card.handle.faults().rules().len()
            + self.card.handle.hangs().rules().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_section_leaves_no_faults_behind() {
    let rig = rig().await;
    let r: anyhow::Result<()> = with_faults_cleared(&rig.targets, async {
        rig.inject().await?;
        anyhow::bail!("the section broke halfway")
    })
    .await;
    let e = r.expect_err("the section's error comes back");
    assert_eq!(e.to_string(), "the section broke halfway");
    assert_eq!(rig.rule_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_section_returns_its_result_and_leaves_no_faults_behind() {
    let rig = rig().await;
    let r = with_faults_cleared(&rig.targets, async {
        rig.inject().await?;
        Ok(42)
    })
    .await;
    assert_eq!(r.expect("ok"), 42);
    assert_eq!(rig.rule_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_section_leaves_no_faults_behind() {
    let rig = std::sync::Arc::new(rig().await);
    let r2 = rig.clone();
    let task = tokio::spawn(async move {
        with_faults_cleared(&r2.targets.clone(), async {
            r2.inject().await?;
            panic!("a bug in the section");
            #[allow(unreachable_code)]
            Ok(())
        })
        .await
    });
    let err = task.await.expect_err("the panic propagates");
    assert!(err.is_panic());
    assert_eq!(rig.rule_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_section_dropped_halfway_leaves_no_faults_behind() {
    let rig = rig().await;
    let (injected, on_injected) = tokio::sync::oneshot::channel();
    let section = with_faults_cleared(&rig.targets, async {
        rig.inject().await?;
        let _ = injected.send(());
        std::future::pending::<anyhow::Result<()>>().await
    });
    tokio::select! {
        _ = section => panic!("the section never ends on its own"),
        _ = on_injected => {}
    }
    // Dropped: the reset was spawned rather than awaited, so give it a moment.
    let mut waited = Duration::ZERO;
    while rig.rule_count() > 0 && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert_eq!(rig.rule_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_reported_after_the_others_are_cleared() {
    let rig = rig().await;
    let mut targets = rig.targets.clone();
    // A port nothing listens on (bound, then released).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    targets.grpc.insert(0, format!("http://{dead}"));
    let r = with_faults_cleared(&targets, async {
        rig.inject().await?;
        Ok(())
    })
    .await;
    let e = r.expect_err("the failed reset is an error");
    assert!(format!("{e:#}").contains(&dead.to_string()), "{e:#}");
    assert_eq!(rig.rule_count(), 0, "the reachable targets were cleared");
}
