//! Shop's protobuf contracts, generated at build time from `proto/`.
//!
//! Module paths follow the protobuf packages: `shop_proto::user::v1` is `shop.user.v1`.

/// `shop.common.v1`: money, pagination, cart lines, error reasons.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("shop.common.v1");
    }
}

/// `shop.user.v1`: accounts, tokens, order history, the chained checkout's entry.
pub mod user {
    pub mod v1 {
        tonic::include_proto!("shop.user.v1");
    }
}

/// `shop.item.v1`: catalog, stock and reservations.
pub mod item {
    pub mod v1 {
        tonic::include_proto!("shop.item.v1");
    }
}

/// `shop.payment.v1`: payments and refunds.
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("shop.payment.v1");
    }
}

/// `shop.admin.v1`: fault injection and the echo floor.
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("shop.admin.v1");
    }
}

mod redacted;

// The generated code refers to sibling packages as `super::super::super::common::v1`,
// so the modules above must sit at the crate root under a common parent. They do: the
// crate root stands in for `shop`.
pub mod shop {
    pub use super::{admin, common, item, payment, user};
}

/// Encoded `FileDescriptorSet` of every Shop proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));
