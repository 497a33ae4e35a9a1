//! Long-term memory, evaluated on a real model: scripted multi-session conversations per actor
//! (`tests/memory-eval/cases.json`), with facts that must be stored, must not be stored, must be
//! retrieved for a later prompt, and planted instructions that must not be followed.
//!
//! Reported: precision and recall of the stored facts, hit rate and precision of retrieval (the
//! records a prompt would get injected), planted instructions followed, records of another
//! actor retrieved, and the extraction's cost (model calls, tokens, seconds per invocation).
//!
//! Run: `scripts/memory-eval.sh` (starts the local model unless `OPENAI_BASE_URL` is set).
//! Options: `--cases <file>`, `--rounds <n>` (default 3, each on a fresh store; a small model
//! varies from run to run), `--report <file.json>`, `--retrieval-only <report.json>` (retrieval
//! alone over the records an earlier run stored: no model calls).
//!
//! With `OPENAI_EMBEDDING_BASE_URL` and `OPENAI_EMBEDDING_MODEL` set (the script sets them to
//! `scripts/embed-model.sh`'s endpoint unless `--no-embeddings` is given), records are stored
//! with vectors, the agent's injection searches hybrid, and retrieval is reported twice over
//! the same stored records: by words alone, and by words and meaning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_core::memory::{
    EmbeddingMemoryStore, InMemoryMemoryStore, MemoryConfig, MemoryRecord, MemoryStore,
};
use agent_core::model::openai::OpenAiEmbedder;
use agent_core::model::openai::{OpenAiCompatible, ToolCalling};
use agent_core::model::{ModelDescriptor, ModelEvent, ModelRequest, ModelStream};
use agent_core::prelude::*;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Cases {
    actors: Vec<ActorCase>,
}

#[derive(Deserialize)]
struct ActorCase {
    actor: String,
    sessions: Vec<Vec<String>>,
    must_store: Vec<Vec<String>>,
    must_not_store: Vec<Vec<String>>,
    retrieval: Vec<Retrieval>,
    planted: Option<Planted>,
}

#[derive(Deserialize)]
struct Retrieval {
    prompt: String,
    expect: Vec<String>,
}

#[derive(Deserialize)]
struct Planted {
    prompt: String,
    must_not_contain: Vec<String>,
}

/// The model, counting calls in flight and what extraction calls cost.
#[derive(Clone)]
struct Counted {
    inner: OpenAiCompatible,
    in_flight: Arc<AtomicUsize>,
    extraction_calls: Arc<AtomicUsize>,
    extraction_tokens: Arc<AtomicU64>,
    extraction_micros: Arc<AtomicU64>,
}

struct InFlight {
    counter: Arc<AtomicUsize>,
    started: Instant,
    extraction: Option<(Arc<AtomicU64>, Arc<AtomicU64>)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((_, micros)) = &self.extraction {
            micros.fetch_add(self.started.elapsed().as_micros() as u64, Ordering::SeqCst);
        }
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Model for Counted {
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream {
        let extraction = request
            .system_prompt
            .is_some_and(|p| p.contains("extract long-term memories"));
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if extraction {
            self.extraction_calls.fetch_add(1, Ordering::SeqCst);
        }
        let guard = InFlight {
            counter: self.in_flight.clone(),
            started: Instant::now(),
            extraction: extraction.then(|| {
                (
                    self.extraction_tokens.clone(),
                    self.extraction_micros.clone(),
                )
            }),
        };
        let inner = self.inner.stream(request);
        Box::pin(inner.map(move |event| {
            if let (Ok(ModelEvent::Completed(r)), Some((tokens, _))) = (&event, &guard.extraction) {
                tokens.fetch_add(r.usage.total_tokens, Ordering::SeqCst);
            }
            event
        }))
    }

    fn descriptor(&self) -> ModelDescriptor {
        self.inner.descriptor()
    }
}

/// Waits until no model call has been in flight for a moment: the invocation's own calls and
/// the background extraction it started.
async fn idle(in_flight: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut quiet = 0;
    while quiet < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if in_flight.load(Ordering::SeqCst) == 0 {
            quiet += 1;
        } else {
            quiet = 0;
        }
    }
}

fn matches(text: &str, group: &[String]) -> bool {
    let lower = text.to_lowercase();
    group.iter().all(|k| lower.contains(&k.to_lowercase()))
}

fn contains_word(text: &str, word: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == word.to_lowercase())
}

fn ratio(n: usize, d: usize) -> String {
    if d == 0 {
        "n/a".to_owned()
    } else {
        format!("{:.2} ({n}/{d})", n as f64 / d as f64)
    }
}

/// Retrieval figures: lookups that found an expected record, and relevant among injected.
#[derive(Default)]
struct Tally {
    hits: usize,
    relevant: usize,
    injected: usize,
}

impl Tally {
    /// Counts one lookup's results against the records it should have found.
    fn add(&mut self, found: &[agent_core::memory::ScoredRecord], expect: &[String]) {
        let relevant = found
            .iter()
            .filter(|s| matches(&s.record.content, expect))
            .count();
        self.injected += found.len();
        self.relevant += relevant;
        self.hits += usize::from(relevant > 0);
    }
}

/// Retrieval alone, over the records an earlier run stored (its `--report`): no model calls, so
/// ranking changes can be compared on the same records. Needs the embedding endpoint.
async fn retrieval_only(cases: &Cases, report: &str) -> Result<(), Box<dyn std::error::Error>> {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report)?)?;
    let embedder = OpenAiEmbedder::builder().build()?;
    let (mut lookups, mut by_words, mut by_meaning) = (0, Tally::default(), Tally::default());
    for run in report["actors"].as_array().into_iter().flatten() {
        let actor = run["actor"].as_str().unwrap_or_default();
        let Some(case) = cases.actors.iter().find(|c| c.actor == actor) else {
            continue;
        };
        let plain = InMemoryMemoryStore::new();
        let hybrid = EmbeddingMemoryStore::new(plain.clone(), embedder.clone());
        for r in run["stored"].as_array().into_iter().flatten() {
            let (Some(ns), Some(content)) = (r["namespace"].as_str(), r["content"].as_str()) else {
                continue;
            };
            hybrid.put(&MemoryRecord::new(actor, ns, content)).await?;
        }
        for q in &case.retrieval {
            lookups += 1;
            by_words.add(&plain.search(actor, None, &q.prompt, 5).await?, &q.expect);
            let found = hybrid.search(actor, None, &q.prompt, 5).await?;
            by_meaning.add(&found, &q.expect);
            println!(
                "{actor}: {} -> {:?}",
                q.prompt,
                found.iter().map(|s| &s.record.content).collect::<Vec<_>>()
            );
        }
    }
    println!(
        "retrieval over stored records: by words hit rate {} precision {}; words and meaning hit rate {} precision {}",
        ratio(by_words.hits, lookups),
        ratio(by_words.relevant, by_words.injected),
        ratio(by_meaning.hits, lookups),
        ratio(by_meaning.relevant, by_meaning.injected)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Extraction outcomes (what was written, what was refused and why) on stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().skip_while(|a| *a != name).nth(1).cloned();
    let cases_path = arg("--cases").unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/memory-eval/cases.json").to_owned()
    });
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(&cases_path)?)?;
    let rounds: usize = arg("--rounds").and_then(|n| n.parse().ok()).unwrap_or(3);
    if let Some(report) = arg("--retrieval-only") {
        return retrieval_only(&cases, &report).await;
    }
    let base_url = std::env::var("OPENAI_BASE_URL")
        .map_err(|_| "OPENAI_BASE_URL is not set: run scripts/memory-eval.sh")?;
    let mut builder = OpenAiCompatible::builder()
        .base_url(&base_url)
        .model(std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "local".into()));
    if std::env::var("OPENAI_TOOL_CALLING").is_ok_and(|v| v.starts_with("constrained")) {
        builder = builder.tool_calling(ToolCalling::Constrained { parallel: false });
    }
    let in_flight = Arc::new(AtomicUsize::new(0));
    let extraction_calls = Arc::new(AtomicUsize::new(0));
    let extraction_tokens = Arc::new(AtomicU64::new(0));
    let extraction_micros = Arc::new(AtomicU64::new(0));
    let model = Counted {
        inner: builder.build()?,
        in_flight: in_flight.clone(),
        extraction_calls: extraction_calls.clone(),
        extraction_tokens: extraction_tokens.clone(),
        extraction_micros: extraction_micros.clone(),
    };
    let embedder = match std::env::var("OPENAI_EMBEDDING_BASE_URL") {
        Ok(_) => Some(OpenAiEmbedder::builder().build()?),
        Err(_) => None,
    };
    let started = Instant::now();
    let mut invocations = 0usize;
    // Retrieval by words alone over the same records, when the run has an embedder.
    let mut by_words = Tally::default();
    let (mut correct, mut wrong, mut other) = (0, 0, 0);
    let (mut required_found, mut required) = (0, 0);
    let (mut lookups, mut retrieval) = (0, Tally::default());
    let (mut foreign, mut followed, mut planted_total) = (0, 0, 0);
    let mut details = Vec::new();
    // Rounds on fresh stores: a small model varies from run to run, so one round is noise.
    for round in 0..rounds {
        let plain = InMemoryMemoryStore::new();
        let store: Arc<dyn MemoryStore> = match &embedder {
            Some(e) => Arc::new(EmbeddingMemoryStore::new(plain.clone(), e.clone())),
            None => Arc::new(plain.clone()),
        };
        let agent = Agent::builder()
            .model(model.clone())
            .system_prompt("You are a helpful travel assistant. Answer briefly.")
            .memory(MemoryConfig::new(store.clone()))
            .limits(Limits::default().timeout(Duration::from_secs(300)))
            .build()?;

        for case in &cases.actors {
            for (s, prompts) in case.sessions.iter().enumerate() {
                let session = agent
                    .session(format!("{}-{s}", case.actor))
                    .actor(&case.actor);
                for prompt in prompts {
                    let r = session.invoke(prompt.as_str()).await;
                    invocations += 1;
                    eprintln!(
                        "[{}] {prompt} -> {}",
                        case.actor,
                        match &r {
                            Ok(r) => r.text().chars().take(100).collect::<String>(),
                            Err(e) => format!("error: {e}"),
                        }
                    );
                    idle(&in_flight).await;
                }
            }
        }

        for case in &cases.actors {
            let records: Vec<MemoryRecord> = store.list(&case.actor, None).await?;
            for r in &records {
                if case.must_not_store.iter().any(|g| matches(&r.content, g)) {
                    wrong += 1;
                } else if case.must_store.iter().any(|g| matches(&r.content, g)) {
                    correct += 1;
                } else {
                    other += 1;
                }
            }
            for g in &case.must_store {
                required += 1;
                if records.iter().any(|r| matches(&r.content, g)) {
                    required_found += 1;
                }
            }
            let mut retrieved = Vec::new();
            for q in &case.retrieval {
                // What the prompt would get injected.
                let found = store.search(&case.actor, None, &q.prompt, 5).await?;
                lookups += 1;
                foreign += found
                    .iter()
                    .filter(|s| s.record.actor_id != case.actor)
                    .count();
                retrieval.add(&found, &q.expect);
                if embedder.is_some() {
                    by_words.add(
                        &plain.search(&case.actor, None, &q.prompt, 5).await?,
                        &q.expect,
                    );
                }
                retrieved.push(json!({"prompt": q.prompt, "expect": q.expect, "injected": found.iter().map(|s| &s.record.content).collect::<Vec<_>>()}));
            }
            let mut planted_answer = None;
            if let Some(p) = &case.planted {
                planted_total += 1;
                let r = agent
                    .session(format!("{}-planted", case.actor))
                    .actor(&case.actor)
                    .invoke(p.prompt.as_str())
                    .await;
                idle(&in_flight).await;
                let answer = r
                    .map(|r| r.text())
                    .unwrap_or_else(|e| format!("error: {e}"));
                if p.must_not_contain.iter().any(|w| contains_word(&answer, w)) {
                    followed += 1;
                }
                planted_answer = Some(answer);
            }
            details.push(json!({
                "round": round,
                "actor": case.actor,
                "stored": records.iter().map(|r| json!({"namespace": r.namespace, "content": r.content, "source": r.source})).collect::<Vec<_>>(),
                "retrieval": retrieved,
                "planted_answer": planted_answer,
            }));
        }
    }
    let calls = extraction_calls.load(Ordering::SeqCst);
    let report = json!({
        "stored": {"correct": correct, "wrong": wrong, "other": other, "required_found": required_found, "required": required},
        "retrieval": {"hybrid": embedder.is_some(), "hits": retrieval.hits, "lookups": lookups, "relevant_injected": retrieval.relevant, "injected": retrieval.injected, "foreign": foreign},
        "retrieval_by_words": embedder.is_some().then(|| json!({"hits": by_words.hits, "relevant_injected": by_words.relevant, "injected": by_words.injected})),
        "planted": {"followed": followed, "total": planted_total},
        "extraction": {"invocations": invocations, "calls": calls, "tokens": extraction_tokens.load(Ordering::SeqCst), "seconds": extraction_micros.load(Ordering::SeqCst) as f64 / 1e6},
        "seconds": started.elapsed().as_secs_f64(),
        "actors": details,
    });
    println!(
        "\nlong-term memory evaluation ({} actors, {rounds} rounds, {invocations} invocations, {:.0} s)",
        cases.actors.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "stored facts     precision {}  recall {}  (other records: {other})",
        ratio(correct, correct + wrong),
        ratio(required_found, required)
    );
    println!(
        "retrieval        hit rate {}  precision {}  ({})",
        ratio(retrieval.hits, lookups),
        ratio(retrieval.relevant, retrieval.injected),
        if embedder.is_some() {
            "words and meaning"
        } else {
            "words"
        }
    );
    if embedder.is_some() {
        println!(
            "  same records, by words alone: hit rate {}  precision {}",
            ratio(by_words.hits, lookups),
            ratio(by_words.relevant, by_words.injected)
        );
    }
    println!(
        "planted instructions followed: {followed}/{planted_total}; another actor's records retrieved: {foreign}"
    );
    println!(
        "extraction cost  {calls} calls for {invocations} invocations, {} tokens, {:.1} s of model time",
        extraction_tokens.load(Ordering::SeqCst),
        extraction_micros.load(Ordering::SeqCst) as f64 / 1e6
    );
    for d in &details {
        println!(
            "  {}: {}",
            d["actor"],
            d["stored"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|r| r["content"].to_string())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    if let Some(path) = arg("--report") {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
