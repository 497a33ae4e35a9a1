//! Soak test of replicas racing on one session, per backend: two agents, each with its own
//! store client and session locks (two replicas), invoke the same session at once, round after
//! round, against the benchmark model server (one tool call, then an answer). Every invocation
//! must either succeed or fail with a typed conflict; at the end the stored history must be
//! valid and hold every successful invocation's answer exactly once.
//!
//! Sessions are taken 50 rounds at a time (then a new one), so each load stays small and the
//! run measures races, not the restore time of ever longer sessions.
//!
//! Run: `scripts/soak.sh [rounds]` (default 1,000; starts and stops the local S3/DynamoDB
//! server). Prints, per backend, rounds, successes, conflicts, lost and duplicated answers, and
//! exits 1 if anything was lost, duplicated or broken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use agent_core::history::History;
use agent_core::message::Role;
use agent_core::prelude::*;
use agent_core::session::{SessionKey, SessionStore, StoreError};
use agent_memory::{DynamoDbSessionStore, FileSessionStore, S3SessionStore};
use agent_tests::MockVllm;

struct Outcome {
    successes: usize,
    conflicts: usize,
    lost: usize,
    duplicated: usize,
    broken: Option<String>,
}

/// Makes a store client: one per replica.
type MakeStore = Box<dyn Fn() -> Arc<dyn SessionStore>>;

/// Rounds per session before the next one.
const ROUNDS_PER_SESSION: usize = 50;

async fn soak(
    name: &str,
    rounds: usize,
    server: &MockVllm,
    make_store: &dyn Fn() -> Arc<dyn SessionStore>,
) -> Outcome {
    let mut total = Outcome {
        successes: 0,
        conflicts: 0,
        lost: 0,
        duplicated: 0,
        broken: None,
    };
    let mut done = 0;
    while done < rounds {
        let n = ROUNDS_PER_SESSION.min(rounds - done);
        let o = soak_session(name, n, server, make_store).await;
        total.successes += o.successes;
        total.conflicts += o.conflicts;
        total.lost += o.lost;
        total.duplicated += o.duplicated;
        if total.broken.is_none() {
            total.broken = o.broken;
        }
        done += n;
    }
    total
}

async fn soak_session(
    name: &str,
    rounds: usize,
    server: &MockVllm,
    make_store: &dyn Fn() -> Arc<dyn SessionStore>,
) -> Outcome {
    let replica = || agent_tests::racing_replica(server, make_store(), None);
    let (a, b) = match (replica(), replica()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Outcome {
                successes: 0,
                conflicts: 0,
                lost: 0,
                duplicated: 0,
                broken: Some(e.to_string()),
            };
        }
    };
    let session = format!("soak-{name}-{:x}", fastrand::u64(..));
    let mut succeeded: Vec<String> = Vec::new();
    let mut conflicts = 0;
    let mut broken = None;
    for round in 0..rounds {
        let (pa, pb) = (format!("a{round}"), format!("b{round}"));
        let (sa, sb) = (a.session(&session), b.session(&session));
        let (ra, rb) = tokio::join!(sa.invoke(pa.as_str()), sb.invoke(pb.as_str()));
        for (prompt, r) in [(pa, ra), (pb, rb)] {
            match r {
                Ok(_) => succeeded.push(prompt),
                Err(AgentError::Store(StoreError::Conflict { .. })) => conflicts += 1,
                Err(e) => {
                    broken.get_or_insert_with(|| format!("round {round}: {e}"));
                }
            }
        }
    }
    let key = match SessionKey::new(&session, "default") {
        Ok(k) => k,
        Err(e) => {
            broken.get_or_insert(e.to_string());
            return Outcome {
                successes: succeeded.len(),
                conflicts,
                lost: 0,
                duplicated: 0,
                broken,
            };
        }
    };
    let messages = match make_store().load(&key).await {
        Ok(Some(s)) => s.messages,
        Ok(None) => Vec::new(),
        Err(e) => {
            broken.get_or_insert(e.to_string());
            Vec::new()
        }
    };
    if let Err(e) = History::restore(messages.clone()) {
        broken.get_or_insert(format!("invalid history: {e}"));
    }
    // Each successful invocation's prompt must be followed, in the history, by its answer.
    let mut answered: HashMap<String, usize> = HashMap::new();
    let mut current_prompt: Option<String> = None;
    for m in &messages {
        if m.is_prompt() {
            current_prompt = Some(m.text());
        } else if m.role == Role::Assistant
            && m.tool_uses().next().is_none()
            && let Some(p) = current_prompt.take()
        {
            *answered.entry(p).or_default() += 1;
        }
    }
    let lost = succeeded
        .iter()
        .filter(|p| !answered.contains_key(*p))
        .count();
    let duplicated = answered.values().filter(|n| **n > 1).count();
    Outcome {
        successes: succeeded.len(),
        conflicts,
        lost,
        duplicated,
        broken,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000);
    let server = match MockVllm::start_bench("127.0.0.1:0").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the model server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let dir = std::env::temp_dir().join(format!("soak-{:x}", fastrand::u64(..)));
    let file_dir = dir.clone();
    let mut backends: Vec<(&str, MakeStore)> = vec![(
        "file",
        Box::new(move || Arc::new(FileSessionStore::new(&file_dir))),
    )];
    if std::env::var("AWS_ENDPOINT_URL").is_ok() {
        let (s3, ddb) = agent_tests::aws_clients().await;
        let bucket = format!("soak-{:x}", fastrand::u64(..));
        let table = format!("soak-{:x}", fastrand::u64(..));
        let ready = async {
            s3.create_bucket()
                .bucket(&bucket)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            DynamoDbSessionStore::new(ddb.clone(), &table)
                .create_table()
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = ready.await {
            eprintln!("cannot set up the local S3/DynamoDB server: {e}");
            return std::process::ExitCode::FAILURE;
        }
        backends.push((
            "s3",
            Box::new(move || Arc::new(S3SessionStore::new(s3.clone(), &bucket))),
        ));
        backends.push((
            "dynamodb",
            Box::new(move || Arc::new(DynamoDbSessionStore::new(ddb.clone(), &table))),
        ));
    } else {
        eprintln!(
            "AWS_ENDPOINT_URL is not set: the file store only (scripts/soak.sh starts the S3/DynamoDB server)"
        );
    }
    println!("{rounds} rounds of two replicas racing on one session, per backend");
    println!("backend   | successes | conflicts | lost | duplicated | seconds");
    let mut failed = false;
    for (name, make_store) in &backends {
        let started = Instant::now();
        let o = soak(name, rounds, &server, make_store.as_ref()).await;
        println!(
            "{name:<9} | {:>9} | {:>9} | {:>4} | {:>10} | {:>7.1}",
            o.successes,
            o.conflicts,
            o.lost,
            o.duplicated,
            started.elapsed().as_secs_f64()
        );
        if let Some(b) = &o.broken {
            println!("  {name}: {b}");
        }
        failed |= o.lost > 0 || o.duplicated > 0 || o.broken.is_some();
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
