//! The services' fault rules, for the web shop's lab: in the monolith the gateway is handed
//! the injector its in-process services share ([`crate::Application::attach_service_faults`]),
//! so `PUT /api/admin/faults` (admins, only with SHOP_FAULT_ADMIN=on) can slow or fail any
//! method of any service. Separately deployed services take their rules through their own
//! `shop.admin.v1.FaultAdmin` (the operator's token); the gateway holds no such token.

use std::sync::{Arc, OnceLock};

use platform::faults::{FaultInjector, FaultRule};

#[derive(Clone, Default)]
pub struct ServiceFaults(Arc<OnceLock<FaultInjector>>);

impl ServiceFaults {
    /// Hands over the services' injector (once; later calls are ignored).
    pub fn attach(&self, faults: &FaultInjector) {
        let _ = self.0.set(faults.clone());
    }

    pub fn get(&self) -> Option<&FaultInjector> {
        self.0.get()
    }
}

/// A rule for a service rather than a gateway route: a gRPC method path
/// ("/shop.item.v1.ItemService/ReserveStock") or an event-flow fault point.
pub fn is_service_rule(rule: &FaultRule) -> bool {
    rule.method.starts_with('/')
        || rule.method.starts_with("event:")
        || rule.method.starts_with("relay:")
}
