//! Sessions on S3: the conversation is stored in Strands' S3 layout (so Python Strands can
//! read it), with conditional writes, so two replicas never overwrite each other's turns. Run
//! it twice with the same session id: the second run remembers the first.
//!
//! ```sh
//! # Any S3-compatible endpoint; AWS_ENDPOINT_URL for a local one (ministack, MinIO).
//! AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 \
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=qwen3-8b \
//!   cargo run -p learn --bin s3-sessions -- my-bucket alice-1 "My name is Ada."
//! ```

use agent_core::prelude::*;
use agent_memory::S3SessionStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(bucket), Some(session), Some(prompt)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: s3-sessions <bucket> <session-id> <prompt>");
        std::process::exit(2);
    };
    let config = aws_config::load_from_env().await; // AWS_REGION, credentials, AWS_ENDPOINT_URL
    // Local S3 servers want path-style addressing; real S3 works either way.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let agent = Agent::builder()
        .model(OpenAiCompatible::from_env()?)
        .system_prompt("You are a concise assistant.")
        .session_store(S3SessionStore::new(s3, bucket).with_prefix("learn"))
        .build()?;
    let session = agent.session(session);
    let result = session.invoke(prompt).await?;
    println!("{}", result.text());
    let stored = session.messages().await?.unwrap_or_default();
    eprintln!("[session] {} messages stored", stored.len());
    Ok(())
}
