//! Who the load test is to the services: the operator (allowed every RPC, the fault admins
//! included). The processes it starts get their own keys from a key directory it makes
//! (`shopctl keys init` does the same), the trust file, and SHOP_FAULT_ADMIN=on because the
//! experiment and the crash test inject faults; its own gRPC and card-gateway admin calls
//! carry the operator's token. Against a shop started elsewhere, `--keys DIR` (or
//! SHOP_KEYS_DIR) names that shop's key directory.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http::HeaderValue;
use platform::{
    card_keys::Kind,
    identity::{self, CALLER_HEADER, Signer},
    keys::KeyDir,
    policy::ANY_SERVER,
    transport::{GrpcTransport, TransportError},
};
use tower::{BoxError, ServiceExt as _, util::BoxCloneSyncService};

/// The audience of the card gateway's admin API.
pub const CARD_GATEWAY: &str = "card-gateway";

/// How long a token the load test mints lives, and after how long it mints a fresh one:
/// reused meanwhile, so signing costs nothing per call in a measurement.
const TOKEN_TTL: Duration = Duration::from_secs(300);
const TOKEN_REFRESH: Duration = Duration::from_secs(120);

static OPERATOR: OnceLock<Operator> = OnceLock::new();

struct Operator {
    signer: Signer,
    tokens: Mutex<HashMap<&'static str, (String, Instant)>>,
}

/// Makes `signer` the identity this process calls as. The first one set stays (a process
/// talks to one shop); returns whether this one was taken.
pub fn use_operator(signer: Signer) -> bool {
    OPERATOR
        .set(Operator {
            signer,
            tokens: Mutex::new(HashMap::new()),
        })
        .is_ok()
}

/// Calls as the operator of the key directory `dir` (`shopctl keys init DIR`).
pub fn use_key_dir(dir: &Path) -> anyhow::Result<()> {
    let signer = KeyDir::new(dir)
        .signer(identity::OPERATOR)
        .with_context(|| format!("the operator key in {}", dir.display()))?;
    use_operator(signer);
    Ok(())
}

/// An operator token for `audience`, when an operator is set.
pub fn operator_token(audience: &'static str) -> Option<String> {
    let op = OPERATOR.get()?;
    let mut tokens = op.tokens.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((t, at)) = tokens.get(audience)
        && at.elapsed() < TOKEN_REFRESH
    {
        return Some(t.clone());
    }
    match op.signer.mint_for(audience, None, None, TOKEN_TTL) {
        Ok(t) => {
            tokens.insert(audience, (t.clone(), Instant::now()));
            Some(t)
        }
        Err(e) => {
            eprintln!("loadtest: signing an operator token failed: {e}");
            None
        }
    }
}

/// The audience of a call to `path` ("/shop.item.v1.ItemService/GetItem"): the service that
/// serves it, or any Shop server for the admin services (Echo, FaultAdmin) and health.
fn audience_of(path: &str) -> &'static str {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "shop.user.v1.UserService" => identity::USER_SERVICE,
        "shop.item.v1.ItemService" => identity::ITEM_SERVICE,
        "shop.payment.v1.PaymentService" => identity::PAYMENT_SERVICE,
        _ => ANY_SERVER,
    }
}

/// `channel` with the operator's token on every call (none when no operator is set: the
/// servers then say UNAUTHENTICATED, which names the missing token).
pub fn signed(channel: tonic::transport::Channel) -> GrpcTransport {
    BoxCloneSyncService::new(
        channel
            .map_request(|mut req: http::Request<tonic::body::Body>| {
                if let Some(v) = operator_token(audience_of(req.uri().path()))
                    .and_then(|t| HeaderValue::try_from(t).ok())
                {
                    req.headers_mut().insert(CALLER_HEADER, v);
                }
                req
            })
            .map_err(|e| TransportError(BoxError::from(e))),
    )
}

/// The keys of a stack the load test starts: a key directory (made once, kept) and the
/// settings each process gets from it.
#[derive(Debug, Clone)]
pub struct StackKeys(KeyDir);

impl StackKeys {
    /// Makes (or reuses) the keys in `dir`, and calls as its operator from now on.
    pub fn init(dir: &Path) -> anyhow::Result<Self> {
        let keys = KeyDir::new(dir);
        keys.init(&identity::IDENTITIES)
            .with_context(|| format!("making service keys in {}", dir.display()))?;
        use_key_dir(dir)?;
        Ok(Self(keys))
    }

    /// The environment of a process running binary `bin`: its own key when it calls other
    /// services, the trust file, and the fault admin on (the load test injects faults).
    pub fn env_for(&self, bin: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (
                "SHOP_TRUSTED_KEYS_FILE",
                self.0.trust_file().display().to_string(),
            ),
            ("SHOP_FAULT_ADMIN", "on".into()),
        ];
        if identity::IDENTITIES.contains(&bin) {
            env.push((
                "SHOP_IDENTITY_KEY_FILE",
                self.0.key_file(bin).display().to_string(),
            ));
        }
        // The card processor's API keys: the secret one for whoever charges, the publishable
        // one for whoever tokenizes, both for the processor itself.
        let secret = ("CARD_GATEWAY_SECRET_KEY_FILE", Kind::Secret);
        let publishable = ("CARD_GATEWAY_PUBLISHABLE_KEY_FILE", Kind::Publishable);
        let card_keys: &[_] = match bin {
            // The monolith charges (its payment-service) and tokenizes (its gateway).
            "card-gateway" | "shop" => &[secret, publishable],
            identity::PAYMENT_SERVICE => &[secret],
            identity::GATEWAY => &[publishable],
            _ => &[],
        };
        for (name, kind) in card_keys {
            env.push((name, self.0.card_key_file(*kind).display().to_string()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_addressed_to_the_service_that_serves_them() {
        assert_eq!(
            audience_of("/shop.item.v1.ItemService/GetItem"),
            identity::ITEM_SERVICE
        );
        assert_eq!(
            audience_of("/shop.payment.v1.PaymentService/Refund"),
            identity::PAYMENT_SERVICE
        );
        assert_eq!(audience_of("/shop.admin.v1.Echo/Echo"), ANY_SERVER);
        assert_eq!(
            audience_of("/shop.admin.v1.FaultAdmin/SetFaults"),
            ANY_SERVER
        );
    }

    #[test]
    fn each_service_gets_its_own_keys_and_the_edge_no_secret_card_key() {
        let dir = std::env::temp_dir().join(format!("loadtest-keys-{}", uuid::Uuid::new_v4()));
        let keys = StackKeys::init(&dir).expect("keys");
        let env = keys.env_for("payment-service");
        let key = env
            .iter()
            .find(|(k, _)| *k == "SHOP_IDENTITY_KEY_FILE")
            .map(|(_, v)| v.clone());
        assert_eq!(
            key,
            Some(dir.join("payment-service.pem").display().to_string())
        );
        assert!(
            env.iter()
                .any(|(k, _)| *k == "CARD_GATEWAY_SECRET_KEY_FILE")
        );
        let env = keys.env_for("card-gateway");
        assert!(env.iter().all(|(k, _)| *k != "SHOP_IDENTITY_KEY_FILE"));
        assert!(
            env.iter()
                .any(|(k, _)| *k == "CARD_GATEWAY_PUBLISHABLE_KEY_FILE")
        );
        let env = keys.env_for("gateway");
        assert!(
            env.iter()
                .all(|(k, _)| *k != "CARD_GATEWAY_SECRET_KEY_FILE"),
            "the edge never holds the secret key"
        );
        assert!(env.contains(&("SHOP_FAULT_ADMIN", "on".into())));
        // The monolith is both: it charges and it tokenizes.
        let env = keys.env_for("shop");
        for key in [
            "CARD_GATEWAY_SECRET_KEY_FILE",
            "CARD_GATEWAY_PUBLISHABLE_KEY_FILE",
        ] {
            assert!(
                env.iter().any(|(k, _)| *k == key),
                "the monolith needs {key}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
