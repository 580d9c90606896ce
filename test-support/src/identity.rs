//! Service identities for tests: one key pair per identity, made in memory once per test
//! process; servers under test trust all of them, and tests call as whichever identity
//! (and end user) they need.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use platform::{
    identity::{self, IdentitySettings, Signer, Switch, UserAssertion, UserRole},
    policy,
    transport::GrpcTransport,
};
use secrecy::SecretString;
use tower::ServiceExt as _;

struct Keys {
    pems: Vec<(&'static str, SecretString)>,
    signers: Vec<Signer>,
    trust: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut pems = Vec::new();
        let mut signers = Vec::new();
        for name in identity::IDENTITIES {
            let pem = identity::generate_key().expect("an Ed25519 key");
            signers.push(Signer::from_pem(name, &pem).expect("a fresh key loads"));
            pems.push((name, pem));
        }
        let trust = identity::trust_file(&signers.iter().collect::<Vec<_>>());
        Keys {
            pems,
            signers,
            trust,
        }
    })
}

/// The signer of identity `name` ("gateway", "operator", ...).
pub fn signer(name: &str) -> Signer {
    keys()
        .signers
        .iter()
        .find(|s| s.name() == name)
        .cloned()
        .unwrap_or_else(|| panic!("no test identity {name:?}"))
}

/// The trust file every test server gets (every identity's public key).
pub fn trust_file() -> &'static str {
    &keys().trust
}

/// Settings of a server under test running as `name`: its key, trust in every identity,
/// and the fault admin on (tests set faults at run time).
pub fn settings(name: &str) -> IdentitySettings {
    let key = keys()
        .pems
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| k.clone());
    IdentitySettings {
        fault_admin: Switch::On,
        ..IdentitySettings::with_values(key, trust_file())
    }
}

/// A channel to `addr` whose calls come from `caller`, addressed to `audience`, on
/// behalf of `user` when given.
pub fn client_as(
    addr: SocketAddr,
    caller: &str,
    audience: &str,
    user: Option<UserAssertion>,
) -> GrpcTransport {
    let channel = platform::transport::channel(&format!("http://{addr}"), Duration::from_secs(5))
        .expect("a socket address makes a valid URL");
    let signed = policy::sign(channel, &signer(caller), audience);
    // The user goes on before signing (the signer reads it from the extensions).
    tower::util::BoxCloneSyncService::new(signed.map_request(
        move |mut req: http::Request<tonic::body::Body>| {
            if let Some(u) = user {
                req.extensions_mut().insert(u);
            }
            req
        },
    ))
}

/// A channel to `addr` as the operator (allowed every RPC), addressed to `audience`.
pub fn operator(addr: SocketAddr, audience: &str) -> GrpcTransport {
    client_as(addr, identity::OPERATOR, audience, None)
}

/// An end user as the gateway asserts them.
pub fn customer(user_id: uuid::Uuid) -> UserAssertion {
    UserAssertion {
        user_id,
        role: UserRole::Customer,
    }
}

/// An admin end user.
pub fn admin(user_id: uuid::Uuid) -> UserAssertion {
    UserAssertion {
        user_id,
        role: UserRole::Admin,
    }
}

/// An operator token for `audience` that lasts as long as a test (HTTP admin APIs: the
/// card gateway's `/admin/*` takes it in `x-shop-caller`).
pub fn operator_token(audience: &str) -> String {
    signer(identity::OPERATOR)
        .mint_for(audience, None, None, identity::MAX_LIFETIME)
        .expect("minting an operator token")
}
