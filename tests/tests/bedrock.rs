//! Bedrock embeddings (`agent_core::model::bedrock`, feature `bedrock`) on the wire: SigV4-signed
//! `InvokeModel` requests through `aws-sdk-bedrockruntime`.
//!
//! No local server emulates Bedrock's embedding models: ministack (the suite's AWS emulator)
//! answers `InvokeModel` for `amazon.titan-embed-*` with a text-generation body, which the
//! embedder must refuse. So the vectors come from a loopback endpoint that speaks Titan's and
//! Cohere's `InvokeModel` shapes and gets its vectors from the real embedding endpoint
//! (all-MiniLM-L6-v2 on llama-server, `AGENT_EMBED_URL`), and that plays Bedrock's errors.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::memory::{
    Embedder, EmbeddingMemoryStore, InMemoryMemoryStore, MemoryRecord, MemoryStore,
};
use agent_core::model::ModelError;
use agent_core::model::bedrock::BedrockEmbedder;
use agent_core::model::openai::OpenAiEmbedder;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

fn client(endpoint: &str) -> aws_sdk_bedrockruntime::Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(aws_sdk_bedrockruntime::config::BehaviorVersion::latest())
        .region(aws_sdk_bedrockruntime::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_bedrockruntime::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(endpoint)
        // The embedder classifies errors for the agent's own retries; one attempt here.
        .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_bedrockruntime::Client::from_conf(config)
}

/// What the loopback answers next, when not the vectors.
#[derive(Clone, Debug)]
enum Next {
    Vectors,
    Error(u16, &'static str),
    Body(Value),
    Stall,
}

struct Loopback {
    real: OpenAiEmbedder,
    next: Mutex<Vec<Next>>,
    seen: Mutex<Vec<(String, Value, bool)>>,
}

async fn invoke(
    State(state): State<Arc<Loopback>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let signed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
    state
        .seen
        .lock()
        .unwrap()
        .push((model.clone(), body.clone(), signed));
    let next = {
        let mut next = state.next.lock().unwrap();
        if next.is_empty() {
            Next::Vectors
        } else {
            next.remove(0)
        }
    };
    match next {
        Next::Error(status, kind) => (
            StatusCode::from_u16(status).unwrap(),
            [
                ("x-amzn-errortype", kind),
                ("content-type", "application/json"),
            ],
            json!({"message": format!("{kind} from the loopback")}).to_string(),
        )
            .into_response(),
        Next::Body(v) => axum::Json(v).into_response(),
        Next::Stall => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Next::Vectors => {
            let texts: Vec<String> = if model.contains("titan") {
                vec![body["inputText"].as_str().unwrap_or_default().to_owned()]
            } else {
                body["texts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect()
            };
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors: Vec<Vec<f32>> = state
                .real
                .embed(&refs)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.vector)
                .collect();
            if model.contains("titan") {
                axum::Json(json!({"embedding": vectors[0], "inputTextTokenCount": 5}))
                    .into_response()
            } else {
                axum::Json(json!({"embeddings": vectors, "id": "x", "texts": texts, "response_type": "embeddings_floats"})).into_response()
            }
        }
    }
}

async fn loopback() -> (Arc<Loopback>, String) {
    let url = std::env::var("AGENT_EMBED_URL").unwrap_or_else(|_| {
        panic!("AGENT_EMBED_URL is not set: run scripts/test.sh, or `export AGENT_EMBED_URL=$(scripts/embed-model.sh start)`")
    });
    let real = OpenAiEmbedder::builder()
        .base_url(url)
        .model("all-minilm-l6-v2")
        .build()
        .unwrap();
    let state = Arc::new(Loopback {
        real,
        next: Mutex::new(Vec::new()),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/model/{model}/invoke", axum::routing::post(invoke))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, format!("http://{addr}"))
}

#[tokio::test]
async fn titan_and_cohere_embeddings_over_the_bedrock_wire_find_facts_by_meaning() {
    let (state, endpoint) = loopback().await;
    let titan = BedrockEmbedder::new(client(&endpoint), "amazon.titan-embed-text-v2:0")
        .unwrap()
        .dimensions(384);
    let got = titan
        .embed(&["I'm vegetarian.", "I prefer window seats."])
        .await
        .expect("titan");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].model, "amazon.titan-embed-text-v2:0");
    assert_eq!(got[0].vector.len(), 384);
    {
        let seen = state.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "Titan takes one text per request");
        assert!(seen.iter().all(|(_, _, signed)| *signed), "SigV4-signed");
        assert_eq!(
            seen[0].1,
            json!({"inputText": "I'm vegetarian.", "dimensions": 384})
        );
    }
    let cohere = BedrockEmbedder::new(client(&endpoint), "cohere.embed-english-v3").unwrap();
    let texts: Vec<String> = (0..100).map(|i| format!("fact number {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = cohere.embed(&refs).await.expect("cohere");
    assert_eq!(got.len(), 100);
    let seen = state.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "96 texts per Cohere request");
    assert_eq!(seen[2].1["texts"].as_array().unwrap().len(), 96);
    assert_eq!(seen[2].1["input_type"], "search_document");

    // Memory found by meaning with Bedrock's vectors.
    let store = EmbeddingMemoryStore::new(InMemoryMemoryStore::new(), titan.clone());
    for fact in [
        "My daughter is allergic to peanuts.",
        "I prefer window seats.",
        "I collect vintage postcards.",
    ] {
        store
            .put(&MemoryRecord::new("ana", "facts", fact))
            .await
            .unwrap();
    }
    let found = store
        .search(
            "ana",
            None,
            "Does anyone in my family have food allergies?",
            1,
        )
        .await
        .unwrap();
    assert!(found[0].record.content.contains("peanuts"), "{found:?}");
    assert!(BedrockEmbedder::new(client(&endpoint), "anthropic.claude-3-haiku").is_err());
}

#[tokio::test]
async fn bedrock_errors_are_classified_and_bounded() {
    let (state, endpoint) = loopback().await;
    let titan = BedrockEmbedder::new(client(&endpoint), "amazon.titan-embed-text-v2:0")
        .unwrap()
        // Room for the loopback to build its 33 MB answer on a loaded machine; the stall case
        // waits this long.
        .timeout(Duration::from_secs(10));
    let cases: Vec<(Next, &str)> = vec![
        (Next::Error(429, "ThrottlingException"), "throttled"),
        (
            Next::Error(429, "ServiceQuotaExceededException"),
            "throttled",
        ),
        (Next::Error(503, "ServiceUnavailableException"), "throttled"),
        (Next::Error(500, "InternalServerException"), "transient"),
        (Next::Error(403, "AccessDeniedException"), "access"),
        (Next::Error(404, "ResourceNotFoundException"), "not found"),
        (Next::Error(400, "ValidationException"), "fatal"),
        (Next::Body(json!({"embedding": []})), "invalid"),
        (Next::Body(json!({"embedding": [0.0, 0.0]})), "invalid"),
        (
            Next::Body(json!({"results": [{"outputText": "hello"}]})),
            "invalid",
        ),
        (Next::Stall, "transient"),
        // 40 MB declared and sent: refused on its Content-Length, before it is buffered.
        (
            Next::Body(json!({"embedding": [0.5], "padding": "x".repeat(40 << 20)})),
            "too large",
        ),
    ];
    for (next, kind) in cases {
        state.next.lock().unwrap().push(next.clone());
        let started = std::time::Instant::now();
        let e = titan.embed(&["x"]).await.expect_err(kind);
        // Every case ends within the embedder's 10 s bound (the stall at it), plus slack.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{next:?} took {:?}",
            started.elapsed()
        );
        let ok = match kind {
            "throttled" => matches!(e, ModelError::Throttled { .. }) && e.is_retryable(),
            "transient" => matches!(e, ModelError::Transient { .. }) && e.is_retryable(),
            "access" => {
                matches!(&e, ModelError::Fatal { status: Some(403), message } if message.contains("bedrock:InvokeModel"))
            }
            "not found" => {
                matches!(&e, ModelError::Fatal { status: Some(404), message } if message.contains("in this region"))
            }
            "fatal" => matches!(e, ModelError::Fatal { .. }) && !e.is_retryable(),
            "too large" => {
                matches!(&e, ModelError::Connection { message, .. } if message.contains("beyond"))
            }
            _ => matches!(e, ModelError::InvalidReply { .. }),
        };
        assert!(ok, "{next:?}: {e:?}");
    }
}

/// ministack, the suite's AWS emulator, answers a Titan embedding request with a text body: a
/// real peer's wrong shape, refused with a typed error.
#[tokio::test]
async fn ministacks_text_answer_to_an_embedding_request_is_refused() {
    let endpoint = agent_tests::aws_endpoint();
    let titan = BedrockEmbedder::new(client(&endpoint), "amazon.titan-embed-text-v2:0").unwrap();
    let e = titan
        .embed(&["I'm vegetarian."])
        .await
        .expect_err("a text answer is no vector");
    assert!(
        matches!(&e, ModelError::InvalidReply { message } if message.contains("no embedding")),
        "{e:?}"
    );
}
