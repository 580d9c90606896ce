//! What every handler shares.

use std::sync::Arc;

use platform::faults::FaultInjector;

use crate::{
    admission::Admission,
    auth::TokenVerifier,
    card_tokens::CardTokens,
    deadline::Budgets,
    downstream::Downstreams,
    throttle::{LoginThrottle, RegisterThrottle},
};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub downstreams: Downstreams,
    pub verifier: TokenVerifier,
    pub budgets: Budgets,
    /// The gateway's own fault rules (its HTTP routes), changeable at run time.
    pub faults: FaultInjector,
    /// Failed-login counts per account and client address.
    pub login_throttle: LoginThrottle,
    /// Registrations per client address.
    pub register_throttle: RegisterThrottle,
    /// Logins and registrations in progress (each costs user-service a password hash).
    pub auth_admission: Admission,
    /// The lab's reach beyond the gateway: the services' and the card processor's rules.
    pub lab: crate::lab::Lab,
    /// The card processor's token endpoint (asynchronous checkout).
    pub card_tokens: CardTokens,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}
