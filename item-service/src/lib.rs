//! item-service
