//! Durable session and memory stores for `agent-core`.
//!
//! This crate will hold the S3 session store (Strands-compatible layout, conditional writes), the
//! DynamoDB short-term and long-term memory and the local file store. It is a documented skeleton
//! until its issue lands; the `SessionStore` trait it implements lives in `agent_core::session`,
//! together with the in-memory store that is the embedded default today.

pub use agent_core::session::{SessionStore, StoreError};
