//! Fault rules set at run time on any service through its `FaultAdmin` (every service serves
//! it), for tests that make one call slow or failing and then clear it again.

use std::net::SocketAddr;

use shop_proto::admin::v1::{
    FaultRule, LatencySpec, SetFaultsRequest, fault_admin_client::FaultAdminClient, latency_spec,
};

/// Replaces the fault rules of the gRPC server at `addr` (an empty list clears them).
pub async fn set(addr: SocketAddr, rules: Vec<FaultRule>) {
    FaultAdminClient::new(crate::identity::operator(
        addr,
        platform::policy::ANY_SERVER,
    ))
    .set_faults(SetFaultsRequest { rules })
    .await
    .expect("set fault rules through FaultAdmin");
}

/// Every call of `method` (a gRPC path, or `*`) fails.
pub fn fail_always(method: &str) -> FaultRule {
    FaultRule {
        method: method.into(),
        latency: None,
        error_rate: 1.0,
    }
}

/// Every call of `method` takes `ms` longer.
pub fn delay(method: &str, ms: u32) -> FaultRule {
    FaultRule {
        method: method.into(),
        latency: Some(LatencySpec {
            kind: Some(latency_spec::Kind::FixedMs(ms)),
        }),
        error_rate: 0.0,
    }
}
