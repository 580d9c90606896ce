//! Every endpoint's success and error cases against a real stack.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_endpoints() {
    let s = stack().await;
    let email = format!("alice-{}@shop.test", uuid::Uuid::new_v4().simple());
    let r = s
        .post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "display_name": "Alice"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["role"], "customer");
    assert_eq!(r.body["display_name"], "Alice");

    let dup = s
        .post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "display_name": "Alice"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{:?}", dup.body);

    let bad = s
        .post(
            "/api/auth/register",
            None,
            json!({"email": "not-an-email", "password": PASSWORD, "display_name": "X"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(bad.field(), "email");

    let wrong = s
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": "wrong password!"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.code(), "unauthenticated");

    let ok = s
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(ok.body["token_type"], "Bearer");
    let token = ok.body["access_token"].as_str().expect("token").to_owned();

    let me = s.get("/api/me", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], email.as_str());

    assert_eq!(
        s.get("/api/me", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let forged = s.get("/api/me", Some("eyJhbGciOiJub25lIn0.e30.")).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(forged.code(), "unauthenticated");

    // An admin is made by the operator (`user-service admin grant`), not by registering.
    let admin = s.admin().await;
    let me = s.get("/api/me", Some(&admin)).await;
    assert_eq!(me.body["role"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_grants_and_revokes_admin_and_the_next_login_carries_it() {
    let s = stack().await;
    let new_item = || {
        json!({
            "sku": format!("OP-{}", unique_suffix()).to_uppercase(),
            "name": "Operator's widget",
            "description": "made by a granted admin",
            "category": "testing",
            "price": {"amount_minor": 100, "currency": "USD"},
            "stock": 1,
        })
    };
    // The address that used to become admin on registration is a customer like any.
    let (customer, _) = s.user(ADMIN_EMAIL).await;
    let me = s.get("/api/me", Some(&customer)).await;
    assert_eq!(me.body["role"], "customer");
    let r = s.post("/api/items", Some(&customer), new_item()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);

    test_support::user::grant_admin(&s.user_database_url, ADMIN_EMAIL).await;
    // The token from before the grant still says customer; the next login says admin.
    let r = s.post("/api/items", Some(&customer), new_item()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let admin = s.login(ADMIN_EMAIL).await;
    let r = s.post("/api/items", Some(&admin), new_item()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    test_support::user::revoke_admin(&s.user_database_url, ADMIN_EMAIL).await;
    let again = s.login(ADMIN_EMAIL).await;
    let r = s.post("/api/items", Some(&again), new_item()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_admin_endpoints() {
    let s = stack().await;
    let admin = s.admin().await;
    let (customer, _) = s.customer().await;

    let a = s.create_item(&admin, "Alpha widget", 1250, 10).await;
    let b = s.create_item(&admin, "Beta widget", 999, 3).await;
    let _c = s.create_item(&admin, "Gamma gadget", 5000, 1).await;
    let a_id = a["id"].as_str().expect("id").to_owned();

    // Non-admins cannot write.
    let body = json!({"sku": "NOPE-1", "name": "x", "category": "c", "price": {"amount_minor": 1, "currency": "USD"}, "stock": 1});
    assert_eq!(
        s.post("/api/items", Some(&customer), body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.post("/api/items", None, body).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Validation errors name the field.
    let bad = s
        .post(
            "/api/items",
            Some(&admin),
            json!({"sku": "BAD-CUR", "name": "x", "category": "c", "price": {"amount_minor": 1, "currency": "XYZ"}, "stock": 1}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(bad.field(), "price.currency");
    // Duplicate SKU.
    let dup = s
        .post(
            "/api/items",
            Some(&admin),
            json!({"sku": a["sku"], "name": "x", "category": "c", "price": {"amount_minor": 1, "currency": "USD"}, "stock": 1}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{:?}", dup.body);

    // List, search, paging.
    let all = s.get("/api/items", None).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body["items"].as_array().expect("items").len(), 3);
    assert!(all.body["next_page_token"].is_null());
    let found = s.get("/api/items?q=widget&sort=price_asc", None).await;
    let names: Vec<_> = found.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["Beta widget", "Alpha widget"]);
    let p1 = s.get("/api/items?page_size=2", None).await;
    assert_eq!(p1.body["items"].as_array().expect("items").len(), 2);
    let token = p1.body["next_page_token"].as_str().expect("next page");
    let p2 = s
        .get(&format!("/api/items?page_size=2&page_token={token}"), None)
        .await;
    assert_eq!(p2.status, StatusCode::OK, "{:?}", p2.body);
    assert_eq!(p2.body["items"].as_array().expect("items").len(), 1);
    let too_big = s.get("/api/items?page_size=1000", None).await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_big.field(), "page_size");
    let bad_sort = s.get("/api/items?sort=sideways", None).await;
    assert_eq!(bad_sort.status, StatusCode::BAD_REQUEST);

    // Get one.
    let got = s.get(&format!("/api/items/{a_id}"), None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["price"]["amount_minor"], 1250);
    assert_eq!(
        s.get("/api/items/not-an-id", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/api/items/0123456789abcdef01234567", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Update with optimistic concurrency.
    let version = got.body["version"].as_i64().expect("version");
    let upd = s
        .send(
            Method::PATCH,
            &format!("/api/items/{a_id}"),
            Some(&admin),
            Some(json!({"expected_version": version, "name": "Alpha widget v2", "price": {"amount_minor": 1300, "currency": "USD"}})),
            &[],
        )
        .await;
    assert_eq!(upd.status, StatusCode::OK, "{:?}", upd.body);
    assert_eq!(upd.body["name"], "Alpha widget v2");
    let stale = s
        .send(
            Method::PATCH,
            &format!("/api/items/{a_id}"),
            Some(&admin),
            Some(json!({"expected_version": version, "name": "lost update"})),
            &[],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{:?}", stale.body);

    // Cart pricing ignores anything but id and quantity.
    let b_id = b["id"].as_str().expect("id");
    let cart = s
        .post(
            "/api/cart/price",
            None,
            json!({"lines": [{"item_id": a_id, "quantity": 2, "unit_price": 1}, {"item_id": b_id, "quantity": 1}]}),
        )
        .await;
    assert_eq!(cart.status, StatusCode::OK, "{:?}", cart.body);
    assert_eq!(cart.body["total"]["amount_minor"], 2 * 1300 + 999);
    let unknown = s
        .post(
            "/api/cart/price",
            None,
            json!({"lines": [{"item_id": "0123456789abcdef01234567", "quantity": 1}]}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.field(), "lines[0].item_id");
    let empty = s.post("/api/cart/price", None, json!({"lines": []})).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty.field(), "lines");
    let qty = s
        .post(
            "/api/cart/price",
            None,
            json!({"lines": [{"item_id": a_id, "quantity": 0}]}),
        )
        .await;
    assert_eq!(qty.field(), "lines[0].quantity");

    // Delete.
    let del = s
        .send(
            Method::DELETE,
            &format!("/api/items/{a_id}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(
        s.get(&format!("/api/items/{a_id}"), None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_orders_and_ops_endpoints() {
    let s = stack().await;
    let (token, _) = s.customer().await;

    // Malformed JSON names the problem; wrong shapes are 422; huge bodies 413.
    let raw = s
        .http
        .post(format!("{}/api/auth/login", s.base))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = raw.json().await.expect("json");
    assert_eq!(body["error"]["code"], "malformed_json");
    assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty());

    let shape = s.post("/api/auth/login", None, json!({"email": 5})).await;
    assert_eq!(shape.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(shape.code(), "invalid_body");

    let huge = s
        .post(
            "/api/cart/price",
            None,
            json!({"lines": [], "pad": "x".repeat(200 * 1024)}),
        )
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(huge.code(), "payload_too_large");

    let no_type = s
        .http
        .post(format!("{}/api/auth/login", s.base))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Orders: empty history, unknown order.
    let orders = s.get("/api/orders", Some(&token)).await;
    assert_eq!(orders.status, StatusCode::OK);
    assert_eq!(orders.body["orders"], json!([]));
    assert_eq!(
        s.get("/api/orders", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let missing = s
        .get(
            &format!("/api/orders/{}", uuid::Uuid::new_v4()),
            Some(&token),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        s.get("/api/orders/nope", Some(&token)).await.status,
        StatusCode::NOT_FOUND
    );

    // Checkout input errors.
    let no_key = s
        .post(
            "/api/checkout",
            Some(&token),
            json!({"lines": [{"item_id": "0123456789abcdef01234567", "quantity": 1}],
                   "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2099, "cvc": "123"}}),
        )
        .await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.field(), "Idempotency-Key");
    let bad_strategy = s
        .checkout(&token, "sideways", &key(), json!([]), GOOD_CARD)
        .await;
    assert_eq!(bad_strategy.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_strategy.code(), "invalid_query");

    // Ops.
    let doc = s.get("/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["paths"]["/api/checkout"]["post"].is_object());
    // The operator's views, on the gateway's operator listener.
    let dbg = s.operator.get("/debug/downstreams", None).await;
    assert_eq!(dbg.status, StatusCode::OK);
    assert_eq!(dbg.body["downstreams"].as_array().expect("list").len(), 3);
    for lane in dbg.body["downstreams"][0]["kinds"]
        .as_array()
        .expect("kinds")
    {
        assert_eq!(lane["breaker"]["state"], "closed", "{lane:?}");
    }
    let metrics = s
        .http
        .get(format!("{}/metrics", s.operator.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("text");
    assert!(text.contains("gateway_circuit_state"), "{text}");
    assert!(text.contains("gateway_http_requests_total"));
    let unknown = s.get("/api/nothing-here", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "not_found");
    let page = s
        .http
        .get(format!("{}/", s.base))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("4242 4242 4242 4242")
    );

    // The gateway's own faults: admins only, and they apply.
    let rules = json!([{"method": "GET /api/items", "error_rate": 1.0}]);
    let denied = s
        .send(
            Method::PUT,
            "/api/admin/faults",
            Some(&token),
            Some(rules.clone()),
            &[],
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let admin = s.admin().await;
    let set = s
        .send(
            Method::PUT,
            "/api/admin/faults",
            Some(&admin),
            Some(rules),
            &[],
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.body);
    assert_eq!(
        s.get("/api/items", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let invalid = s
        .send(
            Method::PUT,
            "/api/admin/faults",
            Some(&admin),
            Some(json!([{"method": "*", "error_rate": 7.0}])),
            &[],
        )
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    let cleared = s
        .send(
            Method::PUT,
            "/api/admin/faults",
            Some(&admin),
            Some(json!([])),
            &[],
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(s.get("/api/items", None).await.status, StatusCode::OK);
    let got = s.get("/api/admin/faults", Some(&admin)).await;
    assert_eq!(got.body, json!([]));
}
