//! Trust boundaries: payment-service answers only callers that prove who they are, each RPC
//! only to the services on its list, and user-scoped RPCs only for the user who owns the
//! data (issue: a customer refunded their own purchase with grpcurl and no credentials).

use platform::identity::{GATEWAY, ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE, UserAssertion};
use shop_proto::payment::v1::{self as pb, payment_service_client::PaymentServiceClient};
use test_support::identity::{admin, client_as, customer};
use tonic::Code;
use uuid::Uuid;

use crate::harness::*;

fn as_caller(
    app: &TestApp,
    caller: &str,
    user: Option<UserAssertion>,
) -> PaymentServiceClient<platform::transport::GrpcTransport> {
    PaymentServiceClient::new(client_as(app.addr, caller, PAYMENT_SERVICE, user))
}

fn refund_of(payment_id: &str) -> pb::RefundRequest {
    pb::RefundRequest {
        payment_id: payment_id.into(),
        amount: None,
        idempotency_key: format!("refund-{}", Uuid::new_v4()),
        reason: "test".into(),
    }
}

#[tokio::test]
async fn a_refund_without_credentials_is_unauthenticated_and_the_payment_stays() {
    let app = spawn_app().await;
    let paid = app
        .charge(charge_request("trust-1", 1500, VISA_OK))
        .await
        .expect("charge");
    // What grpcurl does with no -H: a plain channel, no token.
    let mut anonymous = PaymentServiceClient::new(test_support::connect(app.addr).await);
    let err = anonymous
        .refund(refund_of(&paid.payment_id))
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Every other RPC too.
    let codes = [
        anonymous
            .charge(charge_request("trust-anon", 100, VISA_OK))
            .await
            .map(|_| ()),
        anonymous
            .get_payment(pb::GetPaymentRequest {
                payment_id: paid.payment_id.clone(),
                order_id: String::new(),
            })
            .await
            .map(|_| ()),
        anonymous
            .list_payments(pb::ListPaymentsRequest {
                user_id: paid.user_id.clone(),
                page: None,
            })
            .await
            .map(|_| ()),
        anonymous
            .reconcile(pb::ReconcileRequest {
                payment_id: String::new(),
            })
            .await
            .map(|_| ()),
        anonymous
            .chained_charge(pb::ChainedChargeRequest::default())
            .await
            .map(|_| ()),
    ];
    for c in codes {
        assert_eq!(c.map_err(|s| s.code()), Err(Code::Unauthenticated));
    }
    assert_eq!(
        app.get(&paid.payment_id).await.status(),
        pb::PaymentStatus::Succeeded
    );
}

#[tokio::test]
async fn callers_off_the_list_and_bad_tokens_are_refused() {
    let app = spawn_app().await;
    let paid = app
        .charge(charge_request("trust-2", 1500, VISA_OK))
        .await
        .expect("charge");
    // item-service never refunds; the gateway never makes a chained charge.
    let err = as_caller(&app, ITEM_SERVICE, None)
        .refund(refund_of(&paid.payment_id))
        .await
        .expect_err("item-service may not refund");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = as_caller(&app, GATEWAY, None)
        .chained_charge(pb::ChainedChargeRequest::default())
        .await
        .expect_err("the gateway may not chain");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A gateway token for item-service does not open payment-service.
    let err = PaymentServiceClient::new(client_as(app.addr, GATEWAY, ITEM_SERVICE, None))
        .refund(refund_of(&paid.payment_id))
        .await
        .expect_err("wrong audience");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A token signed by a key nobody trusts, under the gateway's name.
    let forged = platform::identity::Signer::ephemeral(GATEWAY)
        .expect("key")
        .mint(
            PAYMENT_SERVICE,
            "/shop.payment.v1.PaymentService/Refund",
            None,
        )
        .expect("mint");
    let mut req = tonic::Request::new(refund_of(&paid.payment_id));
    req.metadata_mut()
        .insert("x-shop-caller", forged.parse().expect("header"));
    let err = PaymentServiceClient::new(test_support::connect(app.addr).await)
        .refund(req)
        .await
        .expect_err("forged");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(
        app.get(&paid.payment_id).await.status(),
        pb::PaymentStatus::Succeeded
    );
}

#[tokio::test]
async fn user_scoped_payment_rpcs_need_the_owner_and_refunds_an_admin() {
    let app = spawn_app().await;
    let owner = Uuid::new_v4();
    let stranger = Uuid::new_v4();
    let mut req = charge_request("trust-3", 1500, VISA_OK);
    req.user_id = owner.to_string();

    // Charge: only for the asserted user.
    let code = |r: Result<(), tonic::Status>| r.map_err(|s| s.code());
    let charge = |user: Option<UserAssertion>, req: pb::ChargeRequest| {
        let mut c = as_caller(&app, GATEWAY, user);
        async move { c.charge(req).await.map(|r| r.into_inner()) }
    };
    assert_eq!(
        code(
            charge(Some(customer(stranger)), req.clone())
                .await
                .map(|_| ())
        ),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        code(charge(None, req.clone()).await.map(|_| ())),
        Err(Code::Unauthenticated)
    );
    let paid = charge(Some(customer(owner)), req)
        .await
        .expect("the owner's charge")
        .payment
        .expect("payment");

    // GetPayment / ListPayments: the owner (or an admin, or user-service's recovery).
    let get = |caller: &str, user: Option<UserAssertion>| {
        let mut c = as_caller(&app, caller, user);
        let id = paid.payment_id.clone();
        async move {
            c.get_payment(pb::GetPaymentRequest {
                payment_id: id,
                order_id: String::new(),
            })
            .await
            .map(|_| ())
        }
    };
    assert_eq!(
        code(get(GATEWAY, Some(customer(stranger))).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(code(get(GATEWAY, None).await), Err(Code::Unauthenticated));
    assert_eq!(code(get(GATEWAY, Some(customer(owner))).await), Ok(()));
    assert_eq!(code(get(GATEWAY, Some(admin(stranger))).await), Ok(()));
    assert_eq!(code(get(USER_SERVICE, None).await), Ok(()));
    let list = |user: Option<UserAssertion>| {
        let mut c = as_caller(&app, GATEWAY, user);
        async move {
            c.list_payments(pb::ListPaymentsRequest {
                user_id: owner.to_string(),
                page: None,
            })
            .await
            .map(|_| ())
        }
    };
    assert_eq!(
        code(list(Some(customer(stranger))).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(code(list(None).await), Err(Code::Unauthenticated));
    assert_eq!(code(list(Some(customer(owner))).await), Ok(()));

    // Refund: a customer may not refund, even their own payment; an admin may; a service's
    // compensation (no user) may.
    let refund = |caller: &str, user: Option<UserAssertion>| {
        let mut c = as_caller(&app, caller, user);
        let r = refund_of(&paid.payment_id);
        async move { c.refund(r).await.map(|_| ()) }
    };
    assert_eq!(
        code(refund(GATEWAY, Some(customer(owner))).await),
        Err(Code::PermissionDenied)
    );
    // An admin role is believed only from the gateway: user-service's key claiming an
    // invented admin refunds nothing.
    assert_eq!(
        code(refund(USER_SERVICE, Some(admin(stranger))).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        code(get(USER_SERVICE, Some(admin(stranger))).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        app.get(&paid.payment_id).await.status(),
        pb::PaymentStatus::Succeeded
    );
    // With no end user a refund is a checkout's own compensation: only the whole payment,
    // under the key derived from its charge's ("trust-3"), whoever holds a service key.
    let compensate = |key: String| {
        let mut c = as_caller(&app, USER_SERVICE, None);
        let mut r = refund_of(&paid.payment_id);
        r.idempotency_key = key;
        async move { c.refund(r).await.map(|_| ()) }
    };
    assert_eq!(
        code(compensate(format!("refund-{}", Uuid::new_v4())).await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        app.get(&paid.payment_id).await.status(),
        pb::PaymentStatus::Succeeded
    );
    // (The checkout's own key refunds: the saga's and the recovery's compensations in the
    // full-stack tests.) An admin, asserted by the gateway, may refund.
    assert_eq!(code(refund(GATEWAY, Some(admin(stranger))).await), Ok(()));
    assert_eq!(
        app.get(&paid.payment_id).await.status(),
        pb::PaymentStatus::Refunded
    );
}
