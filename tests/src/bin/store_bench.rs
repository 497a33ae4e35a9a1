//! Session-store measurements against the local S3/DynamoDB server and a local disk: requests
//! per appended message (counted by an SDK interceptor, so every HTTP request is seen) and the
//! time to restore a 1,000-message session; long-term memory recall over one actor's records
//! (100,000 by default, `--records N`; `--dynamodb-records N` for the DynamoDB row alone), each
//! with a 384-dimension vector: reading them all and ranking, against the kept index, by words
//! and hybrid.
//!
//! Run: `scripts/store-bench.sh` (starts and stops the local server).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_core::message::Message;
use agent_core::session::{SessionKey, SessionStore};
use agent_memory::{DynamoDbSessionStore, FileSessionStore, S3SessionStore};
use agent_tests::RequestCounter;

fn conversation(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                Message::user(format!(
                    "question {i}: what about the weather in city number {i}?"
                ))
            } else {
                Message::assistant(format!(
                    "answer {i}: it is sunny, 21 degrees, light wind from the north-west."
                ))
            }
        })
        .collect()
}

async fn measure(
    name: &str,
    store: Arc<dyn SessionStore>,
    requests: Option<&AtomicUsize>,
) -> (f64, Duration) {
    let key =
        SessionKey::new(&format!("bench-{name}"), "default").unwrap_or_else(|e| panic!("{e}"));
    let messages = conversation(1000);
    // The first append also creates the session document; count the steady state after it.
    store
        .append(&key, 0, &messages[..1])
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let before = requests.map(|r| r.load(Ordering::Relaxed));
    for (i, m) in messages.iter().enumerate().skip(1) {
        store
            .append(&key, i, std::slice::from_ref(m))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let per_append = match (requests, before) {
        (Some(r), Some(b)) => (r.load(Ordering::Relaxed) - b) as f64 / 999.0,
        _ => f64::NAN,
    };
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let loaded = store
            .load(&key)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: missing"));
        best = best.min(started.elapsed());
        assert_eq!(loaded.messages.len(), 1000);
    }
    (per_append, best)
}

#[tokio::main]
async fn main() {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        eprintln!(
            "AWS_ENDPOINT_URL is not set: run scripts/store-bench.sh, which starts the local server"
        );
        std::process::exit(2);
    }
    let config = aws_config::load_from_env().await;
    let s3_requests = Arc::new(AtomicUsize::new(0));
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .interceptor(RequestCounter(s3_requests.clone()))
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(s3_config);
    let ddb_requests = Arc::new(AtomicUsize::new(0));
    let ddb_config = aws_sdk_dynamodb::config::Builder::from(&config)
        .interceptor(RequestCounter(ddb_requests.clone()))
        .build();
    let ddb = aws_sdk_dynamodb::Client::from_conf(ddb_config);
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bucket = format!("bench-{suffix}");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("bucket: {e}"));
    let table = DynamoDbSessionStore::new(ddb, format!("bench-{suffix}"));
    table
        .create_table()
        .await
        .unwrap_or_else(|e| panic!("table: {e}"));
    let dir = std::env::temp_dir().join(format!("agent-store-bench-{suffix}"));

    let rows = [
        (
            "S3 (ministack)",
            measure(
                "s3",
                Arc::new(S3SessionStore::new(s3, &bucket)),
                Some(&s3_requests),
            )
            .await,
        ),
        (
            "DynamoDB (ministack)",
            measure("ddb", Arc::new(table), Some(&ddb_requests)).await,
        ),
        (
            "local files",
            measure("file", Arc::new(FileSessionStore::new(&dir)), None).await,
        ),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    let records: usize = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    // ministack reads a 100,000-record partition with vectors slowly (minutes per read): the
    // DynamoDB row may use fewer records.
    let dynamodb_records: usize = std::env::args()
        .skip_while(|a| a != "--dynamodb-records")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(records);
    let memory_requests = Arc::new(AtomicUsize::new(0));
    let memory_client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .interceptor(RequestCounter(memory_requests.clone()))
            .build(),
    );
    let dynamo_memory =
        agent_memory::DynamoDbMemoryStore::new(memory_client, format!("bench-{suffix}"));
    let memory_rows = [
        (
            "in memory",
            search_latency(
                Arc::new(agent_core::memory::InMemoryMemoryStore::new()),
                records,
                None,
            )
            .await,
        ),
        (
            "DynamoDB (ministack)",
            search_latency(
                Arc::new(dynamo_memory),
                dynamodb_records,
                Some(&memory_requests),
            )
            .await,
        ),
    ];
    println!("\nsession stores: 1,000 messages appended one at a time, then restored (best of 5)");
    println!(
        "{:<22} {:>26} {:>28}",
        "store", "requests per append", "restore 1,000 messages (ms)"
    );
    for (name, (per_append, restore)) in rows {
        let requests = if per_append.is_nan() {
            "n/a (no requests)".to_owned()
        } else {
            format!("{per_append:.2}")
        };
        println!(
            "{name:<22} {requests:>26} {:>28.1}",
            restore.as_secs_f64() * 1000.0
        );
    }
    println!(
        "\nlong-term memory: recall (5 results) over {records} records of one actor ({dynamodb_records}\n in DynamoDB), each with a 384-dimension vector: BM25 alone, and hybrid (BM25 fused with\n cosine over every vector)"
    );
    println!(
        "{:<22} {:>22} {:>18} {:>18} {:>20} {:>20}",
        "store",
        "read all + rank (ms)",
        "first search (ms)",
        "next search (ms)",
        "next hybrid (ms)",
        "requests per next"
    );
    for (name, r) in memory_rows {
        println!(
            "{name:<22} {:>22.1} {:>18.1} {:>18.2} {:>20.2} {:>20}",
            r.read_all.as_secs_f64() * 1000.0,
            r.first.as_secs_f64() * 1000.0,
            r.next.as_secs_f64() * 1000.0,
            r.hybrid.as_secs_f64() * 1000.0,
            r.requests.map_or("n/a".to_owned(), |n| format!("{n:.1}")),
        );
    }
    println!(
        "(read all + rank: what every recall did before the kept index, and still does once per\n actor after another replica's write; next search: median of 20 with the index kept)"
    );
}

/// A unit 384-dimension vector near topic `topic`'s direction, varied by `seed` (a stand-in for
/// a sentence embedding: records of one topic are close, other topics far).
fn vector(topic: usize, seed: u64) -> agent_core::memory::Embedding {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut v: Vec<f32> = (0..384)
        .map(|d| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05;
            let axis = if d % 6 == topic { 1.0 } else { 0.0 };
            axis + noise
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    agent_core::memory::Embedding {
        model: "bench".into(),
        vector: v,
    }
}

/// Recall timings over one actor's records.
struct Recall {
    /// Reading every record and ranking them (median of 3).
    read_all: Duration,
    /// The first search (builds the kept index).
    first: Duration,
    /// Later searches (median of 20).
    next: Duration,
    /// Later hybrid searches, words and a 384-dimension vector (median of 20).
    hybrid: Duration,
    /// Requests per later search, when counted.
    requests: Option<f64>,
}

async fn search_latency(
    store: Arc<dyn agent_core::memory::MemoryStore>,
    records: usize,
    requests: Option<&AtomicUsize>,
) -> Recall {
    use futures::StreamExt;
    let topics = [
        "window seats",
        "vegetarian meals",
        "lives in Porto",
        "travels with a dog",
        "prefers trains",
        "loves museums",
    ];
    let started = Instant::now();
    futures::stream::iter(0..records)
        .map(|i| {
            let store = store.clone();
            let content = format!(
                "{} (note {i}) about city {} and budget {}",
                topics[i % topics.len()],
                i % 97,
                i % 13
            );
            async move {
                let mut record =
                    agent_core::memory::MemoryRecord::new("bench-actor", "facts", content);
                record.embedding = Some(vector(i % topics.len(), i as u64));
                store
                    .put(&record)
                    .await
                    .unwrap_or_else(|e| panic!("put: {e}"))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "wrote {records} memories in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let query = "does the user like window seats in Porto?";
    let mut read_all = Vec::new();
    let mut ranked = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let all = store
            .list("bench-actor", None)
            .await
            .unwrap_or_else(|e| panic!("list: {e}"));
        let found = agent_core::memory::rank(all, query, 5);
        read_all.push(started.elapsed());
        assert_eq!(found.len(), 5);
        ranked = found.into_iter().map(|s| s.record).collect();
    }
    read_all.sort();
    let started = Instant::now();
    let first = store
        .search("bench-actor", None, query, 5)
        .await
        .unwrap_or_else(|e| panic!("search: {e}"));
    let first_time = started.elapsed();
    let first_records: Vec<_> = first.iter().map(|s| s.record.clone()).collect();
    assert_eq!(
        first_records, ranked,
        "the index ranks as reading everything does"
    );
    let before = requests.map(|r| r.load(Ordering::Relaxed));
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let found = store
            .search("bench-actor", None, query, 5)
            .await
            .unwrap_or_else(|e| panic!("search: {e}"));
        times.push(started.elapsed());
        assert_eq!(found, first, "a kept index answers as a fresh read does");
    }
    times.sort();
    let requests = requests
        .zip(before)
        .map(|(r, b)| (r.load(Ordering::Relaxed) - b) as f64 / 20.0);
    // Hybrid: the same kept index, BM25 fused with cosine over every record's vector.
    let wanted = vector(0, u64::MAX);
    let hybrid_query = agent_core::memory::MemoryQuery::new(query).embedding(&wanted);
    let mut hybrid_times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let found = store
            .search_query("bench-actor", None, &hybrid_query, 5)
            .await
            .unwrap_or_else(|e| panic!("search: {e}"));
        hybrid_times.push(started.elapsed());
        assert_eq!(found.len(), 5);
        assert!(
            found
                .iter()
                .all(|s| s.record.content.starts_with("window seats"))
        );
    }
    hybrid_times.sort();
    Recall {
        read_all: read_all[1],
        first: first_time,
        next: times[times.len() / 2],
        hybrid: hybrid_times[hybrid_times.len() / 2],
        requests,
    }
}
