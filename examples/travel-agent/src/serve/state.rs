//! Where the service keeps state: sessions in S3 and long-term memory in DynamoDB when
//! configured (`TRAVEL_AGENT_SESSION_BUCKET`, `TRAVEL_AGENT_MEMORY_TABLE`, with the SDK's
//! standard `AWS_*` settings), otherwise a file store under the data directory and memory in
//! the process, which the service says at start. With `OPENAI_EMBEDDING_BASE_URL` (and
//! `OPENAI_EMBEDDING_MODEL`), memory is found by meaning as well as by words.

use std::path::Path;

use agent_core::agent::AgentBuilder;
use agent_core::memory::{InMemoryMemoryStore, MemoryConfig};
use agent_core::model::openai::OpenAiEmbedder;
use agent_memory::{DynamoDbMemoryStore, FileSessionStore, S3SessionStore};

use super::LIFECYCLE;

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// AWS clients from the standard configuration (`AWS_REGION`, the credential chain, and the
/// SDK's own `AWS_ENDPOINT_URL` for a local server). With a custom S3 endpoint
/// (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`), S3 uses path-style addressing, which local
/// servers need and the SDK cannot take from the environment; against AWS itself it keeps
/// virtual-hosted addressing.
async fn aws_clients() -> (aws_sdk_s3::Client, aws_sdk_dynamodb::Client) {
    let config = aws_config::load_from_env().await;
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()));
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(custom_endpoint)
        .build();
    (
        aws_sdk_s3::Client::from_conf(s3_config),
        aws_sdk_dynamodb::Client::new(&config),
    )
}

pub(super) async fn configure(
    builder: AgentBuilder,
    data_dir: &Path,
) -> Result<AgentBuilder, String> {
    let bucket = var("TRAVEL_AGENT_SESSION_BUCKET");
    let table = var("TRAVEL_AGENT_MEMORY_TABLE");
    let clients = if bucket.is_some() || table.is_some() {
        Some(aws_clients().await)
    } else {
        None
    };
    let builder = match (&bucket, &clients) {
        (Some(bucket), Some((s3, _))) => {
            tracing::info!(target: LIFECYCLE, "sessions in s3://{bucket}/travel-agent/");
            builder
                .session_store(S3SessionStore::new(s3.clone(), bucket).with_prefix("travel-agent"))
        }
        _ => {
            let dir = data_dir.join("sessions");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            tracing::warn!(
                target: LIFECYCLE,
                "no TRAVEL_AGENT_SESSION_BUCKET: sessions in {} (this replica only)",
                dir.display()
            );
            builder.session_store(FileSessionStore::new(dir))
        }
    };
    let memory = match (&table, &clients) {
        (Some(table), Some((_, dynamodb))) => {
            tracing::info!(target: LIFECYCLE, "long-term memory in DynamoDB table {table}");
            MemoryConfig::new(DynamoDbMemoryStore::new(dynamodb.clone(), table))
        }
        _ => {
            tracing::warn!(
                target: LIFECYCLE,
                "no TRAVEL_AGENT_MEMORY_TABLE: long-term memory in this process only"
            );
            MemoryConfig::new(InMemoryMemoryStore::new())
        }
    };
    // Retrieval by meaning when an embedding endpoint is configured (vLLM serving an embedding
    // model, or llama.cpp's server with --embeddings).
    let memory = if var("OPENAI_EMBEDDING_BASE_URL").is_some() {
        let embedder = OpenAiEmbedder::builder()
            .build()
            .map_err(|e| format!("the embedding endpoint: {e}"))?;
        tracing::info!(
            target: LIFECYCLE,
            "long-term memory found by meaning too: embeddings from {}",
            embedder.url()
        );
        memory.embedder(embedder)
    } else {
        memory
    };
    let builder = builder.memory(memory);
    Ok(builder)
}
