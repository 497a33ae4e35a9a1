//! A model endpoint that misbehaves on purpose (the vLLM-format server with injected faults):
//! nothing it sends may panic, grow memory without bound, outlive a deadline, leak a secret or
//! be misreported.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use agent_core::model::{Model, ModelDescriptor, ModelError, ModelRequest, ModelStream};
use agent_core::prelude::*;
use agent_core::retry::RetryPolicy;
use agent_tests::{Fault, MockVllm, Turn, fast_retry, provider, provider_builder};
use futures::StreamExt;
use serde_json::json;

/// A run must end well within this, whatever the peer does; the runs below have limits of a few
/// seconds at most.
const BOUND: Duration = Duration::from_secs(60);

fn no_retries() -> RetryPolicy {
    fast_retry().max_attempts(1)
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("the run outlived its bound")
}

#[tokio::test]
async fn a_byte_order_mark_before_the_stream_is_read_past() {
    let server = MockVllm::start([Turn::text("Sunny.").with_fault(Fault::Bom)])
        .await
        .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .build()
        .expect("agent");
    let r = bounded(agent.session("bom").invoke("Weather?"))
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Sunny.");
}

#[tokio::test]
async fn absurd_token_counts_saturate_instead_of_panicking() {
    let server = MockVllm::start([
        Turn::tool_call("echo", json!({"x": 1})).with_usage(u64::MAX, u64::MAX),
        Turn::text("done").with_usage(u64::MAX, 1),
    ])
    .await
    .expect("server");
    let echo = FnTool::new(
        "echo",
        "Echoes.",
        json!({"type": "object"}),
        |input, _| async move { Ok(ToolOutput::json(input)) },
    );
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(echo)
        .limits(Limits::default().max_total_tokens(u64::MAX))
        .build()
        .expect("agent");
    let mut events = agent.session("usage").stream("go");
    let mut stop = None;
    while let Some(event) = bounded(events.next()).await {
        if let AgentEvent::Stop(r) = event.expect("event") {
            stop = Some(r);
        }
    }
    let r = stop.expect("the stream ended with its stop event");
    assert_eq!(r.usage.total_tokens, u64::MAX);
    assert_eq!(r.usage.input_tokens, u64::MAX);
}

#[tokio::test]
async fn a_line_that_never_ends_is_refused_at_the_cap() {
    // 256 MiB offered; the decoder refuses at 4 MiB, so neither memory nor time follow the peer.
    let server = MockVllm::start([Turn::text("never").with_fault(Fault::EndlessLine {
        max_bytes: 256 * 1024 * 1024,
    })])
    .await
    .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .retry(no_retries())
        .build()
        .expect("agent");
    let err = bounded(agent.session("line").invoke("hi"))
        .await
        .expect_err("refused");
    match err {
        AgentError::Model {
            error: ModelError::InvalidReply { message },
            ..
        } => assert!(message.contains("line exceeds"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_talks_fast_but_says_nothing_cannot_outlive_the_time_limit() {
    let server = MockVllm::start([Turn::text("never").with_fault(Fault::EndlessComments {
        max_bytes: 4 * 1024 * 1024 * 1024,
    })])
    .await
    .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .limits(Limits::default().timeout(Duration::from_secs(2)))
        .build()
        .expect("agent");
    let r = bounded(agent.session("ping").invoke("hi"))
        .await
        .expect("invoke");
    assert_eq!(r.stop_reason, StopReason::Timeout);
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed() {
    let elsewhere = MockVllm::start([Turn::text("from elsewhere")])
        .await
        .expect("server");
    for code in [301, 302, 307, 308] {
        let server = MockVllm::start([Turn::text("x").with_fault(Fault::Redirect {
            code,
            location: format!("{}/chat/completions", elsewhere.base_url()),
        })])
        .await
        .expect("server");
        let model = provider_builder(&server)
            .header("x-api-key", "hdr-secret")
            .build()
            .expect("model");
        let agent = Agent::builder()
            .model(model)
            .retry(fast_retry())
            .build()
            .expect("agent");
        let err = bounded(agent.session("redirect").invoke("hi"))
            .await
            .expect_err("refused");
        match &err {
            AgentError::Model {
                error: ModelError::Redirected { status, location },
                attempts: 1,
            } => {
                assert_eq!(*status, code);
                assert!(location.starts_with(&elsewhere.base_url()), "{location}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("not followed"), "{err}");
    }
    assert!(
        elsewhere.received().is_empty(),
        "nothing, no header and no conversation, reached the other origin"
    );
}

#[tokio::test]
async fn a_server_that_echoes_the_keys_does_not_put_them_in_errors() {
    let server = MockVllm::start([Turn::text("x").with_fault(Fault::EchoHeaders)])
        .await
        .expect("server");
    let model = provider_builder(&server)
        .api_key("sk-very-secret-key")
        .header("x-api-key", "hdr-very-secret")
        .build()
        .expect("model");
    let agent = Agent::builder().model(model).build().expect("agent");
    let err = bounded(agent.session("echo").invoke("hi"))
        .await
        .expect_err("400");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("sk-very-secret-key"), "{text}");
    assert!(!text.contains("hdr-very-secret"), "{text}");
    assert!(text.contains("Bearer [REDACTED]"), "{text}");
    assert_eq!(
        server.received()[0].headers["x-api-key"],
        "hdr-very-secret",
        "the header was sent"
    );
}

#[tokio::test]
async fn a_throttle_longer_than_the_time_left_is_an_error_saying_when_to_come_back() {
    let server = MockVllm::start([Turn::text("x").with_fault(Fault::Status {
        code: 429,
        retry_after: Some("3600".into()),
        message: "slow down".into(),
    })])
    .await
    .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .limits(Limits::default().timeout(Duration::from_secs(30)))
        .build()
        .expect("agent");
    let err = bounded(agent.session("429").invoke("hi"))
        .await
        .expect_err("throttled");
    match &err {
        AgentError::Model {
            error: ModelError::Throttled { retry_after, .. },
            ..
        } => assert_eq!(*retry_after, Some(Duration::from_secs(3600))),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("retry after 3600 s"), "{err}");
}

/// A model that panics in the middle of its stream.
struct Panicking;

impl Model for Panicking {
    fn stream(&self, _request: &ModelRequest<'_>) -> ModelStream {
        Box::pin(futures::stream::once(async {
            panic!("the model implementation broke");
        }))
    }

    fn descriptor(&self) -> ModelDescriptor {
        ModelDescriptor::default()
    }
}

#[tokio::test]
async fn a_panic_inside_a_streamed_run_ends_the_stream_with_a_typed_error() {
    let agent = Agent::builder().model(Panicking).build().expect("agent");
    let mut events = agent.session("panic").stream("hi");
    let mut last = None;
    while let Some(event) = bounded(events.next()).await {
        last = Some(event);
    }
    match last {
        Some(Err(AgentError::Panicked { message })) => {
            assert_eq!(message, "the model implementation broke");
        }
        other => panic!("{other:?}"),
    }
}

/// The chain of `source()`s below an error.
fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        out.push(e);
        next = e.source();
    }
    out
}

#[tokio::test]
async fn errors_keep_their_cause_down_to_the_client_and_the_file_system() {
    // Nothing listens on this port: the connection fails, and the reqwest error is in the chain.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let model = agent_core::model::openai::OpenAiCompatible::builder()
        .base_url(format!("http://127.0.0.1:{port}/v1"))
        .model("m")
        .build()
        .unwrap();
    let agent = Agent::builder()
        .model(model)
        .retry(no_retries())
        .build()
        .unwrap();
    let err = bounded(agent.session("down").invoke("hi"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            AgentError::Model {
                error: ModelError::Connection { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        chain(&err)
            .iter()
            .any(|e| e.downcast_ref::<reqwest::Error>().is_some()),
        "{:?}",
        chain(&err)
    );

    // A file store whose root is a file: the io::Error is in the chain.
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let server = MockVllm::start([Turn::text("x")]).await.unwrap();
    let agent = Agent::builder()
        .model(provider(&server))
        .session_store(agent_memory::FileSessionStore::new(&not_a_dir))
        .build()
        .unwrap();
    let err = bounded(agent.session("s").invoke("hi"))
        .await
        .expect_err("not a directory");
    assert!(
        chain(&err)
            .iter()
            .any(|e| e.downcast_ref::<std::io::Error>().is_some()),
        "{err:?}"
    );
}

/// An embeddings endpoint that lies, stalls, floods or redirects: every answer is a typed error
/// within the embedder's bound, and memory keeps working by words (no fact is lost to it).
#[tokio::test]
async fn an_embeddings_endpoint_that_lies_gets_typed_errors_and_memory_keeps_working() {
    use agent_core::memory::{
        Embedder, EmbeddingMemoryStore, InMemoryMemoryStore, MemoryRecord, MemoryStore,
    };
    use agent_core::model::openai::OpenAiEmbedder;
    use agent_tests::EmbeddingReply;

    let server = MockVllm::start([]).await.expect("server");
    let embedder = OpenAiEmbedder::builder()
        .base_url(server.base_url())
        .model("minilm")
        .api_key("sk-secret-embedding-key")
        .timeout(Duration::from_secs(2))
        .build()
        .expect("embedder");
    let one = |v: &[f32]| EmbeddingReply::Vectors(vec![v.to_vec()]);
    let invalid = |e: &ModelError| matches!(e, ModelError::InvalidReply { .. });
    type Expected<'a> = &'a dyn Fn(&ModelError) -> bool;
    let cases: Vec<(&str, EmbeddingReply, Expected<'_>)> = vec![
        (
            "two vectors for one text",
            EmbeddingReply::Vectors(vec![vec![1.0, 0.0], vec![0.0, 1.0]]),
            &invalid,
        ),
        ("no vectors", EmbeddingReply::Vectors(vec![]), &invalid),
        ("an empty vector", one(&[]), &invalid),
        ("a zero vector", one(&[0.0, 0.0, 0.0]), &invalid),
        (
            "a value beyond f32 (read as infinity)",
            EmbeddingReply::Json(json!({"data": [{"index": 0, "embedding": [1e39, 0.5]}]})),
            &invalid,
        ),
        (
            "an index out of range",
            EmbeddingReply::Json(json!({"data": [{"index": 7, "embedding": [0.5, 0.5]}]})),
            &invalid,
        ),
        (
            "strings for numbers",
            EmbeddingReply::Json(json!({"data": [{"index": 0, "embedding": ["a", "b"]}]})),
            &invalid,
        ),
        (
            "not JSON at all",
            EmbeddingReply::Raw("<html>gateway</html>".into()),
            &invalid,
        ),
        (
            "a JSON string, not an object",
            EmbeddingReply::Json(json!("<html>gateway</html>")),
            &invalid,
        ),
        (
            "throttled",
            EmbeddingReply::Fault(agent_tests::Fault::Status {
                code: 429,
                retry_after: Some("3".into()),
                message: "slow down".into(),
            }),
            &|e| matches!(e, ModelError::Throttled { retry_after: Some(d), .. } if *d == Duration::from_secs(3)),
        ),
        (
            "a redirect to another origin",
            EmbeddingReply::Fault(agent_tests::Fault::Redirect {
                code: 307,
                location: "http://203.0.113.9/v1/embeddings".into(),
            }),
            &|e| matches!(e, ModelError::Redirected { status: 307, .. }),
        ),
        (
            "an error that repeats the API key",
            EmbeddingReply::Fault(agent_tests::Fault::EchoHeaders),
            &|e| matches!(e, ModelError::Fatal { status: Some(400), message } if message.contains("[REDACTED]")),
        ),
        (
            "a stall past the bound",
            EmbeddingReply::Fault(agent_tests::Fault::SlowFirstByte(Duration::from_secs(30))),
            &|e| e.is_retryable() && matches!(e, ModelError::Connection { .. }),
        ),
        (
            "a 200 MB vector",
            EmbeddingReply::Fault(agent_tests::Fault::EndlessLine {
                max_bytes: 200 << 20,
            }),
            &invalid,
        ),
    ];
    for (what, reply, expected) in cases {
        server.push_embeddings([reply]);
        let started = std::time::Instant::now();
        let result = bounded(embedder.embed(&["I'm vegetarian."])).await;
        let error = result.expect_err(what);
        assert!(expected(&error), "{what}: {error:?}");
        assert!(
            !format!("{error:?}").contains("sk-secret-embedding-key"),
            "{what}: the key leaked"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    // Vectors of different lengths in one answer.
    server.push_embeddings([EmbeddingReply::Vectors(vec![vec![1.0, 0.0], vec![1.0]])]);
    assert!(invalid(
        &embedder.embed(&["a", "b"]).await.expect_err("ragged")
    ));
    // Indexes out of order are put back in order.
    server.push_embeddings([EmbeddingReply::Json(json!({"data": [
        {"index": 1, "embedding": [0.0, 1.0]},
        {"index": 0, "embedding": [1.0, 0.0]}
    ]}))]);
    let got = embedder
        .embed(&["first", "second"])
        .await
        .expect("reordered");
    assert_eq!(got[0].vector, vec![1.0, 0.0]);
    assert_eq!(got[1].vector, vec![0.0, 1.0]);
    assert_eq!(got[0].model, "minilm");

    // Memory over the lying endpoint: the record is stored without a vector, and found by its
    // words when the query cannot be embedded either.
    let store = EmbeddingMemoryStore::new(InMemoryMemoryStore::new(), embedder.clone())
        .pause_after_failure(Duration::ZERO);
    server.push_embeddings([one(&[0.0, 0.0])]);
    store
        .put(&MemoryRecord::new("ana", "facts", "I'm vegetarian."))
        .await
        .expect("a fact is stored even when its vector is refused");
    let kept = store.list("ana", None).await.expect("list");
    assert_eq!(kept.len(), 1);
    assert!(kept[0].embedding.is_none());
    server.push_embeddings([EmbeddingReply::Fault(agent_tests::Fault::Status {
        code: 503,
        retry_after: None,
        message: "down".into(),
    })]);
    let found = store
        .search("ana", None, "vegetarian meals", 5)
        .await
        .expect("search by words");
    assert_eq!(found.len(), 1);
    // A failed embedder is left alone for a while: with the default pause, the next write and
    // search do not call it at all (no request reaches the server).
    let paused = EmbeddingMemoryStore::new(InMemoryMemoryStore::new(), embedder.clone());
    server.push_embeddings([EmbeddingReply::Fault(agent_tests::Fault::SlowFirstByte(
        Duration::from_secs(30),
    ))]);
    let started = std::time::Instant::now();
    for fact in ["I'm vegetarian.", "I fly from Porto.", "I have a dog."] {
        paused
            .put(&MemoryRecord::new("bo", "facts", fact))
            .await
            .expect("stored without a vector");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "one stall, not three: {:?}",
        started.elapsed()
    );
    assert_eq!(paused.list("bo", None).await.unwrap().len(), 3);
    assert_eq!(
        paused.search("bo", None, "dog", 5).await.unwrap().len(),
        1,
        "found by words while the embedder is left alone"
    );
    // Once the endpoint is back, `embed_missing` gives the record its vector.
    server.push_embeddings([one(&[0.6, 0.8])]);
    assert_eq!(store.embed_missing("ana").await.expect("backfill"), 1);
    let kept = store.list("ana", None).await.expect("list");
    assert_eq!(
        kept[0].embedding.as_ref().map(|e| e.vector.clone()),
        Some(vec![0.6, 0.8])
    );
}
