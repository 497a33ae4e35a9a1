//! Durable session stores for `agent-core`, safe for several replicas (each behind a cargo
//! feature, all on by default: `s3`, `dynamodb`, `file`):
//!
//! - [`S3SessionStore`]: Strands' S3 layout and JSON, conditional writes (`If-None-Match`,
//!   `If-Match`), one request per appended message;
//! - [`DynamoDbSessionStore`]: short-term memory (the conversation log) in one DynamoDB table with
//!   condition expressions and a state version;
//! - [`FileSessionStore`]: the same layout on a local disk, atomic and exclusive writes;
//! - [`DynamoDbMemoryStore`]: long-term memory records per actor and namespace
//!   (`agent_core::memory::MemoryStore`), searched through an index kept per actor and checked
//!   against the actor's version counter, so a recall costs one request.
//!
//! All implement `agent_core::session::SessionStore`: a second writer of a session gets a typed
//! `StoreError::Conflict` and nothing is overwritten.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_memory::S3SessionStore;
//! let config = aws_config::load_from_env().await;
//! let s3 = aws_sdk_s3::Client::new(&config);
//! let store = S3SessionStore::new(s3, "my-sessions-bucket").with_prefix("travel");
//! # let _ = store; Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "dynamodb")]
mod dynamodb;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "dynamodb")]
mod long_term;
#[cfg(feature = "s3")]
mod s3;
#[cfg(any(feature = "s3", feature = "dynamodb", feature = "file"))]
mod strands;

pub use agent_core::session::{SessionStore, StoreError};
#[cfg(feature = "dynamodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "dynamodb")))]
pub use dynamodb::{DynamoDbSessionStore, MAX_MESSAGE_BYTES};
#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub use file::FileSessionStore;
#[cfg(feature = "dynamodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "dynamodb")))]
pub use long_term::{
    DEFAULT_RECALL_CACHE_ACTORS, DEFAULT_RECALL_CACHE_MAX_AGE, DynamoDbMemoryStore,
};
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use s3::S3SessionStore;

/// A store error from an AWS SDK error: the service's own message in the text (`what` failed:
/// message), the SDK error itself as the source.
#[cfg(any(feature = "s3", feature = "dynamodb"))]
pub(crate) fn sdk_error<E, R>(
    what: &str,
    e: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> agent_core::session::StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match &e {
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(s) => s.err().to_string(),
        other => other.to_string(),
    };
    agent_core::session::StoreError::backend(format!("{what}: {detail}"), e)
}
