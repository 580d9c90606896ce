//! user-service
