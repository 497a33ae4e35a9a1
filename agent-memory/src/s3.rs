//! Sessions in S3, in Strands' layout and JSON, safe for several writers.
//!
//! - Appending a message is one `PutObject` of `message_<n>.json` with `If-None-Match: *`: the
//!   second writer of index `n` gets HTTP 412 and a [`StoreError::Conflict`]; nothing is
//!   overwritten and nothing is read first. (The first append of a session also writes
//!   `session.json`, once, the same way.)
//! - The agent document is written with `If-Match` on the ETag read at load (or
//!   `If-None-Match: *` when there was none): a stale writer gets a conflict.
//! - Loading lists the messages with pagination and reads them concurrently.
//!
//! It reads sessions Python Strands wrote and writes ones Strands can read.

use agent_core::message::Message;
use agent_core::session::{
    SessionKey, SessionState, SessionStore, StateVersion, StoreError, StoredSession,
};
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use futures::{StreamExt, TryStreamExt};

use crate::strands::{self, Layout};

/// How many objects a load reads at once.
const READ_CONCURRENCY: usize = 16;

/// Sessions in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3SessionStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3SessionStore {
    /// A store in `bucket`, at the bucket's root.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: String::new(),
        }
    }

    /// Keys start with `prefix/` (Strands' `prefix` option).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<Option<String>, PutError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body.clone()));
        request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(out) => Ok(out.e_tag().map(str::to_owned)),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if !matches!(status, Some(412 | 409)) {
                    return Err(PutError::Other(crate::sdk_error(
                        &format!("writing {key}"),
                        e,
                    )));
                }
                // The SDK retries a request whose response was lost; if the first attempt
                // landed, the retry fails its own condition. The object then holds exactly
                // these bytes (another writer's document differs: its timestamps, at least),
                // and the write succeeded.
                match self.get(key).await {
                    Ok(Some((stored, etag))) if stored == body => Ok(etag),
                    _ => Err(PutError::Precondition),
                }
            }
        }
    }

    /// Reads an object and its ETag, at most [`MAX_OBJECT_BYTES`] of it.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(mut out) => {
                let etag = out.e_tag().map(str::to_owned);
                // A session document is at most a few megabytes; an object past the cap is
                // refused while it is read, not collected whole.
                let mut bytes = Vec::new();
                while let Some(chunk) = out
                    .body
                    .try_next()
                    .await
                    .map_err(|e| StoreError::backend(format!("reading {key}"), e))?
                {
                    if bytes.len() + chunk.len() > MAX_OBJECT_BYTES {
                        return Err(object_too_large(key));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(Some((bytes, etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(crate::sdk_error(&format!("reading {key}"), e)),
        }
    }

    async fn list_message_keys(&self, prefix: &str) -> Result<Vec<(usize, String)>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| crate::sdk_error(&format!("listing {prefix}"), e))?;
            for object in page.contents() {
                if let Some(k) = object.key()
                    && let Some(i) = strands::message_index(k)
                {
                    keys.push((i, k.to_owned()));
                }
            }
        }
        keys.sort_by_key(|(i, _)| *i);
        Ok(keys)
    }
}

enum Condition<'a> {
    Absent,
    Matches(&'a str),
}

/// The largest object read from the bucket.
const MAX_OBJECT_BYTES: usize = 64 * 1024 * 1024;

fn object_too_large(key: &str) -> StoreError {
    StoreError::backend_message(format!(
        "{key} is larger than {MAX_OBJECT_BYTES} bytes; it was not read"
    ))
}

enum PutError {
    Precondition,
    Other(StoreError),
}

#[async_trait]
impl SessionStore for S3SessionStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let layout = Layout::new(&self.prefix, key);
        let agent_key = layout.agent();
        let messages_prefix = layout.messages_dir();
        let (agent, listed) = futures::try_join!(
            self.get(&agent_key),
            self.list_message_keys(&messages_prefix)
        )?;
        if agent.is_none() && listed.is_empty() {
            return Ok(None);
        }
        strands::check_contiguous(key, &listed.iter().map(|(i, _)| *i).collect::<Vec<_>>())?;
        let messages: Vec<Message> =
            futures::stream::iter(listed.into_iter().map(|(_, object)| async move {
                let (bytes, _) = self.get(&object).await?.ok_or_else(|| {
                    strands::corrupt(key, format!("{object} disappeared while loading"))
                })?;
                strands::parse_message(key, &object, &bytes)
            }))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let (state, version) = match agent {
            Some((bytes, etag)) => (strands::parse_agent(key, &bytes)?.0, StateVersion(etag)),
            None => (SessionState::default(), StateVersion::none()),
        };
        Ok(Some(StoredSession {
            messages,
            state,
            state_version: version,
        }))
    }

    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let layout = Layout::new(&self.prefix, key);
        if expected_len == 0 {
            match self
                .put(
                    &layout.session(),
                    strands::session_doc(key.session_id()),
                    Condition::Absent,
                )
                .await
            {
                Ok(_) | Err(PutError::Precondition) => {}
                Err(PutError::Other(e)) => return Err(e),
            }
        }
        for (i, message) in messages.iter().enumerate() {
            let index = expected_len + i;
            let object = layout.message(index);
            match self
                .put(
                    &object,
                    strands::message_doc(index, message),
                    Condition::Absent,
                )
                .await
            {
                Ok(_) => {}
                Err(PutError::Precondition) => {
                    return Err(strands::conflict(
                        key,
                        format!("{object} was written by another writer"),
                    ));
                }
                Err(PutError::Other(e)) => return Err(e),
            }
        }
        Ok(())
    }

    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError> {
        let layout = Layout::new(&self.prefix, key);
        let object = layout.agent();
        let condition = match &expected.0 {
            Some(etag) => Condition::Matches(etag),
            None => Condition::Absent,
        };
        // The document as stored, so what another writer recorded in it (its `created_at`,
        // Strands' interrupt state, fields we do not know) is kept. A document that changed
        // since it was read fails the conditional write below anyway.
        let previous = match &expected.0 {
            Some(_) => self.get(&object).await?.map(|(bytes, _)| bytes),
            None => None,
        };
        match self
            .put(
                &object,
                strands::agent_doc(previous.as_deref(), key.agent_id(), state, None),
                condition,
            )
            .await
        {
            Ok(etag) => Ok(StateVersion(etag)),
            Err(PutError::Precondition) => Err(strands::conflict(
                key,
                format!("{object} changed since it was read"),
            )),
            Err(PutError::Other(e)) => Err(e),
        }
    }
}
