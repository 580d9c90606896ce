//! An attacker who reaches the card processor's API: without the secret key nothing is
//! listed, refunded or charged; the publishable key only makes tokens; a token is charged
//! once, by the account that made it; a burst of tokens evicts no pending one; and neither
//! tokens nor card numbers reach the log.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use card_gateway::{CardGateway, Config, Gateway};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";

/// Everything the process logs, for the no-secrets-in-logs test.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        // Another test in this process may have installed it first: same sink either way.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Processor {
    url: String,
    sk: SecretString,
    pk: SecretString,
    handle: Gateway,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Processor {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let (sk, pk) = platform::card_keys::generate_pair();
        let mut config = Config::on("127.0.0.1:0").with_keys(sk.clone(), pk.clone());
        tweak(&mut config);
        let gw = CardGateway::build(config).await.expect("binds");
        let url = format!("http://{}", gw.addr());
        let handle = gw.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(gw.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            url,
            sk,
            pk,
            handle,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, key, None, Some(body))
            .await
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, key, None, None).await
    }

    fn sk(&self) -> Option<&str> {
        Some(self.sk.expose_secret())
    }

    fn pk(&self) -> Option<&str> {
        Some(self.pk.expose_secret())
    }

    async fn token_with(&self, key: Option<&str>, number: &str) -> (u16, Value) {
        self.post("/v1/tokens", key, json!({"card": card(number)}))
            .await
    }

    async fn token(&self, number: &str) -> String {
        let (status, body) = self.token_with(self.pk(), number).await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("token id").to_owned()
    }

    async fn charge(&self, key: Option<&str>, body: Value) -> (u16, Value) {
        self.post("/v1/charges", key, body).await
    }
}

fn card(number: &str) -> Value {
    json!({"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"})
}

fn by_card(number: &str) -> Value {
    json!({"amount": 1000, "currency": "usd", "card": card(number)})
}

fn by_token(token: &str) -> Value {
    json!({"amount": 1000, "currency": "usd", "token": token})
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn without_a_key_or_with_a_wrong_one_nothing_is_listed_refunded_or_charged() {
    let p = Processor::start(|_| {}).await;
    let (status, charge) = p.charge(p.sk(), by_card(VISA)).await;
    assert_eq!(status, 200, "{charge}");
    let id = charge["id"].as_str().expect("charge id").to_owned();
    let (wrong, _) = platform::card_keys::generate_pair();

    for key in [None, Some(wrong.expose_secret()), Some("")] {
        let (status, body) = p.get("/v1/charges", key).await;
        assert_eq!(status, 401, "list: {body}");
        assert_eq!(error_type(&body), "authentication_error");
        assert!(body.get("data").is_none(), "nothing listed: {body}");
        let (status, body) = p.get(&format!("/v1/charges/{id}"), key).await;
        assert_eq!(status, 401, "read: {body}");
        let (status, body) = p.post("/v1/refunds", key, json!({"charge": id})).await;
        assert_eq!(status, 401, "refund: {body}");
        assert_eq!(error_type(&body), "authentication_error");
        let (status, body) = p.charge(key, by_card(VISA)).await;
        assert_eq!(status, 401, "charge: {body}");
    }
    let stats = p.handle.stats();
    assert_eq!(stats.charges_created, 1, "no charge but the shop's");
    assert_eq!(stats.refunds_created, 0, "nothing refunded");
    let (_, still) = p.get(&format!("/v1/charges/{id}"), p.sk()).await;
    assert_eq!(still["amount_refunded"], 0, "{still}");
}

#[tokio::test]
async fn the_publishable_key_makes_tokens_and_nothing_else() {
    let p = Processor::start(|_| {}).await;
    let (_, charge) = p.charge(p.sk(), by_card(VISA)).await;
    let id = charge["id"].as_str().expect("charge id").to_owned();
    let token = p.token(VISA).await;

    let (status, body) = p.charge(p.pk(), by_token(&token)).await;
    assert_eq!(status, 403, "charge by token: {body}");
    assert_eq!(error_type(&body), "permission_error");
    let (status, _) = p.charge(p.pk(), by_card(VISA)).await;
    assert_eq!(status, 403, "charge by card");
    let (status, body) = p.post("/v1/refunds", p.pk(), json!({"charge": id})).await;
    assert_eq!(status, 403, "refund: {body}");
    let (status, body) = p.get("/v1/charges", p.pk()).await;
    assert_eq!(status, 403, "list: {body}");
    assert!(body.get("data").is_none());
    let (status, _) = p.get(&format!("/v1/charges/{id}"), p.pk()).await;
    assert_eq!(status, 403, "read");

    let stats = p.handle.stats();
    assert_eq!((stats.charges_created, stats.refunds_created), (1, 0));
    // The token the refused attempts named is still good for the secret key.
    let (status, body) = p.charge(p.sk(), by_token(&token)).await;
    assert_eq!(status, 200, "{body}");
    // And a token without any key is refused too.
    let (status, _) = p.token_with(None, VISA).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_token_charges_once_and_only_a_replay_of_that_request_answers_again() {
    let p = Processor::start(|_| {}).await;
    let token = p.token(VISA).await;
    let charge = |idem: Option<&'static str>| {
        p.call(
            reqwest::Method::POST,
            "/v1/charges",
            p.sk(),
            idem,
            Some(by_token(&token)),
        )
    };
    let (status, first) = charge(Some("order-1")).await;
    assert_eq!(status, 200, "{first}");
    let (status, replay) = charge(Some("order-1")).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["id"], first["id"], "the same charge answered");

    for idem in [Some("order-2"), None] {
        let (status, body) = charge(idem).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "token_already_used");
    }
    assert_eq!(p.handle.stats().charges_created, 1, "charged once");
}

#[tokio::test]
async fn a_token_of_another_key_pair_is_refused() {
    let (other_sk, other_pk) = platform::card_keys::generate_pair();
    let (osk, opk) = (other_sk.clone(), other_pk.clone());
    let p = Processor::start(move |c| c.other_accounts = vec![(osk, opk)]).await;

    let (status, theirs) = p.token_with(Some(other_pk.expose_secret()), VISA).await;
    assert_eq!(status, 200, "{theirs}");
    let theirs = theirs["id"].as_str().expect("id").to_owned();
    let ours = p.token(MASTERCARD).await;

    let (status, body) = p.charge(p.sk(), by_token(&theirs)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "resource_missing");
    let (status, body) = p
        .charge(Some(other_sk.expose_secret()), by_token(&ours))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(p.handle.stats().charges_created, 0);

    // Each account can still charge its own.
    let (status, _) = p
        .charge(Some(other_sk.expose_secret()), by_token(&theirs))
        .await;
    assert_eq!(status, 200);
    let (status, _) = p.charge(p.sk(), by_token(&ours)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_burst_of_tokens_does_not_evict_a_pending_one() {
    let p = Processor::start(|c| c.max_tokens = 4).await;
    let pending = p.token(VISA).await;
    let mut refused = 0;
    for _ in 0..20 {
        let (status, body) = p.token_with(p.pk(), MASTERCARD).await;
        match status {
            200 => {}
            429 => {
                assert_eq!(body["error"]["code"], "too_many_pending_tokens", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(refused, 17, "three more fit, the rest are refused");
    let (status, body) = p.charge(p.sk(), by_token(&pending)).await;
    assert_eq!(status, 200, "the pending token still charges: {body}");
    assert_eq!(body["payment_method_details"]["card"]["last4"], "4242");
    // Its use made room for exactly one more.
    let (status, _) = p.token_with(p.pk(), MASTERCARD).await;
    assert_eq!(status, 200);
    let (status, _) = p.token_with(p.pk(), MASTERCARD).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn no_token_or_card_number_reaches_the_log() {
    let logs = captured_logs();
    let p = Processor::start(|_| {}).await;
    let token = p.token(MASTERCARD).await;
    let (status, body) = p.charge(p.sk(), by_token(&token)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = p.charge(p.sk(), by_card(VISA)).await;
    assert_eq!(status, 200);
    // Refused attempts log too; they must not echo what they were given.
    p.charge(p.sk(), by_token(&token)).await;
    p.charge(p.sk(), by_token("tok_guessed0123456789")).await;

    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        text.contains("token created"),
        "the log was captured: {text}"
    );
    assert!(
        text.contains("charge created"),
        "the log was captured: {text}"
    );
    for secret in [token.as_str(), "tok_guessed0123456789", VISA, MASTERCARD] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
    assert!(!text.contains(p.sk.expose_secret()) && !text.contains(p.pk.expose_secret()));
}

#[tokio::test]
async fn the_gateway_sets_fault_rules_only_for_an_admin_and_nothing_else_of_the_admin_api() {
    use platform::identity::{
        GATEWAY, OPERATOR, PAYMENT_SERVICE, Signer, Switch, UserAssertion, UserRole, trust_file,
    };
    let op = Signer::ephemeral(OPERATOR).expect("key");
    let gw = Signer::ephemeral(GATEWAY).expect("key");
    let pay = Signer::ephemeral(PAYMENT_SERVICE).expect("key");
    let trusted = trust_file(&[&op, &gw, &pay]);
    let p = Processor::start(|c| {
        c.identity.fault_admin = Switch::On;
        c.identity.trusted_keys = Some(trusted);
    })
    .await;
    let admin = UserAssertion {
        user_id: uuid::Uuid::new_v4(),
        role: UserRole::Admin,
    };
    let customer = UserAssertion {
        role: UserRole::Customer,
        ..admin
    };
    let call = |method: reqwest::Method, path: &'static str, signer: &Signer, user| {
        let token = signer
            .mint(card_gateway::AUDIENCE, path, user)
            .expect("mint");
        let mut req = p
            .http
            .request(method.clone(), format!("{}{path}", p.url))
            .header(platform::identity::CALLER_HEADER, token);
        if method == reqwest::Method::PUT {
            req = req.json(&json!([{"method": "POST /v1/charges", "error_rate": 1.0}]));
        }
        async move { req.send().await.expect("send").status().as_u16() }
    };
    use reqwest::Method;
    // The lab: the gateway acting for an admin sets and reads the fault rules...
    assert_eq!(
        call(Method::PUT, "/admin/faults", &gw, Some(admin)).await,
        200
    );
    assert_eq!(
        call(Method::GET, "/admin/faults", &gw, Some(admin)).await,
        200
    );
    assert_eq!(p.handle.faults().rules().len(), 1);
    // ...and nothing else of the admin API.
    assert_eq!(
        call(Method::PUT, "/admin/hangs", &gw, Some(admin)).await,
        403
    );
    assert_eq!(
        call(Method::GET, "/admin/stats", &gw, Some(admin)).await,
        403
    );
    // Not without an admin, nor another service naming one.
    assert_eq!(call(Method::PUT, "/admin/faults", &gw, None).await, 403);
    assert_eq!(
        call(Method::PUT, "/admin/faults", &gw, Some(customer)).await,
        403
    );
    assert_eq!(
        call(Method::PUT, "/admin/faults", &pay, Some(admin)).await,
        403
    );
    // The operator, as before.
    assert_eq!(call(Method::GET, "/admin/stats", &op, None).await, 200);
}
