//! Support code for the integration tests: [`MockVllm`], an OpenAI-compatible chat-completions
//! server on 127.0.0.1 that plays scripted turns in vLLM's exact wire format (streaming and
//! not) and injects faults on request.
//!
//! The wire format follows vLLM's OpenAI server: SSE `data: <json>\n\n` chunks of
//! `chat.completion.chunk` objects, a first chunk with the role and empty content, tool calls
//! streamed by `index` with `id`, `type` and `function.name` only on the first delta and
//! argument fragments after it, the last fragment on the chunk that carries `finish_reason`,
//! a usage chunk with empty `choices` when `stream_options.include_usage` is set, `data: [DONE]`;
//! tool-call ids `chatcmpl-tool-<hex>`; error bodies
//! `{"error":{"message","type","param","code":<int>}}` (and the legacy flat shape).

pub mod bedrock;

/// S3 and DynamoDB clients for the suite's local server (`AWS_ENDPOINT_URL`): the standard
/// configuration, with S3's path-style addressing, which local servers need and the SDK cannot
/// take from the environment.
pub async fn aws_clients() -> (aws_sdk_s3::Client, aws_sdk_dynamodb::Client) {
    let config = aws_config::load_from_env().await;
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    (
        aws_sdk_s3::Client::from_conf(s3_config),
        aws_sdk_dynamodb::Client::new(&config),
    )
}

/// The README's code blocks, compiled as doc tests (this crate depends on every workspace crate).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

/// A tool call the scripted model makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedCall {
    /// Tool name.
    pub name: String,
    /// Arguments.
    pub args: Value,
}

/// How tool-call arguments go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArgsEncoding {
    /// A JSON string in fragments (vLLM's normal behaviour).
    #[default]
    Fragments,
    /// The whole arguments as a JSON object in one delta (some servers).
    Object,
    /// The JSON text encoded a second time as a JSON string.
    DoubleEncoded,
    /// Only the first half of the JSON text (a truncated call).
    Truncated,
    /// Deltas without `index`; the first carries the id.
    Idless,
}

/// A fault injected instead of, or into, a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An HTTP error status with vLLM's error body and an optional `Retry-After` header.
    Status {
        /// The status code.
        code: u16,
        /// `Retry-After` value.
        retry_after: Option<String>,
        /// The error message.
        message: String,
    },
    /// HTTP 400 "maximum context length" in the current (`legacy = false`) or flat legacy body.
    ContextOverflow {
        /// Use the legacy flat body.
        legacy: bool,
    },
    /// Send the first `after_chunks` chunks, then drop the connection.
    DropMidStream {
        /// Chunks sent before the drop.
        after_chunks: usize,
    },
    /// A chunk that is not JSON, then `[DONE]`.
    MalformedChunk,
    /// `data: {"error": ...}` with this code after the first chunk, then `[DONE]` (HTTP 200).
    MidStreamError {
        /// The error code in the body.
        code: u16,
    },
    /// Wait this long before sending the response head.
    SlowFirstByte(Duration),
    /// A UTF-8 byte-order mark before an otherwise valid stream.
    Bom,
    /// After the first chunk, one `data:` line that never ends, sent as fast as the client
    /// reads (64 KiB chunks, at most `max_bytes`).
    EndlessLine {
        /// When the server gives up.
        max_bytes: usize,
    },
    /// After the first chunk, `: ping` comments as fast as the client reads, and never an event
    /// (at most `max_bytes`).
    EndlessComments {
        /// When the server gives up.
        max_bytes: usize,
    },
    /// A redirect to `location` with this status (301, 302, 307, 308).
    Redirect {
        /// The status.
        code: u16,
        /// The `Location` header.
        location: String,
    },
    /// HTTP 400 whose message echoes the request's `authorization` and `x-api-key` headers.
    EchoHeaders,
    /// Hold the response until [`MockVllm::open_gate`] is called (once per gated request; an
    /// opening before the request arrives is kept for it).
    Gate,
}

/// One scripted model turn.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Turn {
    /// Reasoning text (`reasoning_content`).
    pub reasoning: Option<String>,
    /// Answer text.
    pub text: Option<String>,
    /// Tool calls.
    pub tool_calls: Vec<ScriptedCall>,
    /// Override of the finish reason.
    pub finish_reason: Option<String>,
    /// How arguments are encoded.
    pub args: ArgsEncoding,
    /// `(prompt_tokens, completion_tokens)`.
    pub usage: (u64, u64),
    /// A fault for this request.
    pub fault: Option<Fault>,
    /// Use the `reasoning` field instead of `reasoning_content`.
    pub reasoning_field: bool,
}

impl Turn {
    /// A text answer.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            usage: (20, 10),
            ..Self::default()
        }
    }

    /// One tool call.
    pub fn tool_call(name: impl Into<String>, args: Value) -> Self {
        Self {
            usage: (30, 15),
            ..Self::default()
        }
        .and_tool_call(name, args)
    }

    /// A fault for this request.
    pub fn fault(fault: Fault) -> Self {
        Self {
            fault: Some(fault),
            ..Self::default()
        }
    }

    /// Adds a tool call.
    pub fn and_tool_call(mut self, name: impl Into<String>, args: Value) -> Self {
        self.tool_calls.push(ScriptedCall {
            name: name.into(),
            args,
        });
        self
    }

    /// Adds reasoning.
    pub fn with_reasoning(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning = Some(reasoning.into());
        self
    }

    /// Sets the answer text (before any tool calls).
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Overrides the finish reason.
    pub fn with_finish_reason(mut self, reason: impl Into<String>) -> Self {
        self.finish_reason = Some(reason.into());
        self
    }

    /// Sets the argument encoding.
    pub fn with_args(mut self, encoding: ArgsEncoding) -> Self {
        self.args = encoding;
        self
    }

    /// Sets the usage.
    pub fn with_usage(mut self, prompt: u64, completion: u64) -> Self {
        self.usage = (prompt, completion);
        self
    }

    /// Injects a fault into this turn (for faults that happen mid-stream).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The JSON body.
    pub body: Value,
    /// The headers.
    pub headers: HeaderMap,
}

enum Responder {
    Script(VecDeque<Turn>),
    /// For benchmarks: a tool call when the last message is a user prompt, a 50-token answer
    /// when it is a tool result. Stateless, so any number of sessions can run at once.
    Bench,
}

/// One scripted answer of `/v1/embeddings`.
#[derive(Debug, Clone)]
pub enum EmbeddingReply {
    /// HTTP 200 with this JSON body, as sent.
    Json(Value),
    /// HTTP 200 with this body, as sent (JSON content type, whatever it holds).
    Raw(String),
    /// HTTP 200 with `{"object": "list", "data": [...]}` holding these vectors, indexed in order.
    Vectors(Vec<Vec<f32>>),
    /// A fault: `Status`, `Redirect` and `SlowFirstByte` as for chat; `EndlessLine` is a 200
    /// body that opens a vector and never closes it (at most `max_bytes`).
    Fault(Fault),
}

struct ServerState {
    gate: tokio::sync::Semaphore,
    embeddings: Mutex<VecDeque<EmbeddingReply>>,
    responder: Mutex<Responder>,
    received: Mutex<Vec<Received>>,
    record: bool,
    bench_call: Bytes,
    bench_answer: Bytes,
    bench_call_json: Value,
    bench_answer_json: Value,
}

/// The scripted vLLM-format server. Stops when dropped.
pub struct MockVllm {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockVllm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The model name the server serves.
pub const MODEL: &str = "qwen3-8b";

impl MockVllm {
    /// Starts a server that plays `turns` in order, one per request.
    pub async fn start(turns: impl IntoIterator<Item = Turn>) -> std::io::Result<Self> {
        Self::start_with(
            Responder::Script(turns.into_iter().collect()),
            true,
            "127.0.0.1:0",
        )
        .await
    }

    /// Starts the stateless benchmark server on `addr`.
    pub async fn start_bench(addr: &str) -> std::io::Result<Self> {
        Self::start_with(Responder::Bench, false, addr).await
    }

    async fn start_with(responder: Responder, record: bool, addr: &str) -> std::io::Result<Self> {
        let state = Arc::new(ServerState {
            gate: tokio::sync::Semaphore::new(0),
            embeddings: Mutex::new(VecDeque::new()),
            responder: Mutex::new(responder),
            received: Mutex::new(Vec::new()),
            record,
            bench_call: render_stream(&bench_call_turn(), "chatcmpl-bench", true),
            bench_answer: render_stream(&bench_answer_turn(), "chatcmpl-bench", true),
            bench_call_json: render_completion(&bench_call_turn(), "chatcmpl-bench"),
            bench_answer_json: render_completion(&bench_answer_turn(), "chatcmpl-bench"),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/health", get(|| async { "" }))
            .route(
                "/v1/models",
                get(|| async {
                    json_response(200, &json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1_764_200_000, "owned_by": "vllm", "root": MODEL, "parent": null, "max_model_len": 32768}]}))
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Serving ends only when the task is aborted.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// The base URL, `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds turns to the script.
    pub fn push(&self, turns: impl IntoIterator<Item = Turn>) {
        if let Responder::Script(q) = &mut *lock(&self.state.responder) {
            q.extend(turns);
        }
    }

    /// Lets one request held by [`Fault::Gate`] be answered.
    pub fn open_gate(&self) {
        self.state.gate.add_permits(1);
    }

    /// Adds answers for `/v1/embeddings`, played one per request (HTTP 500 when none is left).
    pub fn push_embeddings(&self, replies: impl IntoIterator<Item = EmbeddingReply>) {
        lock(&self.state.embeddings).extend(replies);
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// The content of the last message of request `i` (0-based), as text: the string, or
    /// the JSON of structured content; empty when there is no such request.
    pub fn last_message(&self, i: usize) -> String {
        let received = lock(&self.state.received);
        let content = received
            .get(i)
            .and_then(|r| r.body["messages"].as_array()?.last().cloned())
            .map(|m| m["content"].clone())
            .unwrap_or_default();
        match content {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    /// The text of each tool result sent with request `i` (0-based), in order; empty when
    /// there is no such request.
    pub fn tool_results(&self, i: usize) -> Vec<String> {
        lock(&self.state.received)
            .get(i)
            .and_then(|r| r.body["messages"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The names of the tools offered in request `i` (0-based), in order.
    pub fn offered_tools(&self, i: usize) -> Vec<String> {
        lock(&self.state.received)
            .get(i)
            .and_then(|r| r.body["tools"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Turns not played yet.
    pub fn remaining(&self) -> usize {
        match &*lock(&self.state.responder) {
            Responder::Script(q) => q.len(),
            Responder::Bench => 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The local AWS endpoint the suite runs (`AWS_ENDPOINT_URL`); panics with what to run when it is
/// not set.
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: run scripts/test.sh, or `scripts/aws-local.sh start` and export AWS_ENDPOINT_URL=<url> AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
        )
    })
}

/// A DynamoDB client for the local server and a new table (the session stores' key schema) named
/// `<prefix>-<random>`.
pub async fn fresh_dynamodb_table(prefix: &str) -> (aws_sdk_dynamodb::Client, String) {
    aws_endpoint();
    let (_, ddb) = aws_clients().await;
    let table = format!("{prefix}-{:x}", fastrand::u64(..));
    agent_memory::DynamoDbSessionStore::new(ddb.clone(), &table)
        .create_table()
        .await
        .unwrap_or_else(|e| panic!("creating table {table}: {e}"));
    (ddb, table)
}

/// The benchmark's first turn: a call of `get_weather`.
pub fn bench_call_turn() -> Turn {
    Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(120, 20)
}

/// The benchmark's second turn: an answer of 50 streamed tokens.
pub fn bench_answer_turn() -> Turn {
    let words: Vec<String> = (0..50).map(|i| format!("w{i} ")).collect();
    Turn::text(words.concat()).with_usage(160, 50)
}

/// A redirect with this status to `location`.
fn redirect(code: u16, location: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = axum::http::HeaderValue::from_str(location) {
        r.headers_mut().insert("location", v);
    }
    r
}

/// HTTP 400 whose message repeats the request's credentials, as careless servers do.
fn echo_headers(headers: &HeaderMap) -> Response {
    let echoed: Vec<String> = ["authorization", "x-api-key"]
        .iter()
        .filter_map(|h| {
            let v = headers.get(*h)?.to_str().ok()?;
            Some(format!("{h}: {v}"))
        })
        .collect();
    let message = format!("bad request; you sent {}", echoed.join(", "));
    error_response(400, &message, None, false)
}

async fn embeddings(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(body) = serde_json::from_slice::<Value>(&body) {
        lock(&state.received).push(Received {
            body,
            headers: headers.clone(),
        });
    }
    let reply = lock(&state.embeddings).pop_front();
    match reply {
        None => error_response(500, "no scripted embeddings answer", None, false),
        Some(EmbeddingReply::Json(body)) => json_response(200, &body),
        Some(EmbeddingReply::Raw(body)) => {
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                "content-type",
                axum::http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Some(EmbeddingReply::Vectors(vectors)) => {
            let data: Vec<Value> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                .collect();
            json_response(
                200,
                &json!({"object": "list", "model": "minilm", "data": data, "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
            )
        }
        Some(EmbeddingReply::Fault(Fault::Status {
            code,
            retry_after,
            message,
        })) => error_response(code, &message, retry_after.as_deref(), false),
        Some(EmbeddingReply::Fault(Fault::Redirect { code, location })) => {
            redirect(code, &location)
        }
        Some(EmbeddingReply::Fault(Fault::SlowFirstByte(d))) => {
            tokio::time::sleep(d).await;
            error_response(500, "too late", None, false)
        }
        Some(EmbeddingReply::Fault(Fault::EndlessLine { max_bytes })) => {
            let filler = Bytes::from(b"0.125,".repeat(64 * 1024 / 6));
            endless(
                Vec::new(),
                Bytes::from_static(br#"{"object":"list","data":[{"index":0,"embedding":["#),
                filler,
                max_bytes,
            )
        }
        Some(EmbeddingReply::Fault(Fault::EchoHeaders)) => echo_headers(&headers),
        Some(EmbeddingReply::Fault(other)) => error_response(
            500,
            &format!("{other:?} is not scripted for embeddings"),
            None,
            false,
        ),
    }
}

async fn chat(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(400, &format!("invalid JSON: {e}"), None, false),
    };
    let streaming = body["stream"].as_bool().unwrap_or(false);
    let turn = {
        let mut responder = lock(&state.responder);
        match &mut *responder {
            Responder::Script(q) => q.pop_front(),
            Responder::Bench => {
                let last_is_tool = body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .is_some_and(|m| m["role"] == "tool");
                drop(responder);
                if !streaming {
                    let body = if last_is_tool {
                        &state.bench_answer_json
                    } else {
                        &state.bench_call_json
                    };
                    return json_response(200, body);
                }
                let bytes = if last_is_tool {
                    state.bench_answer.clone()
                } else {
                    state.bench_call.clone()
                };
                return sse_response(vec![bytes]);
            }
        }
    };
    if state.record {
        lock(&state.received).push(Received {
            body: body.clone(),
            headers: headers.clone(),
        });
    }
    let Some(turn) = turn else {
        return error_response(
            500,
            "the test script has no turn left for this request",
            None,
            false,
        );
    };
    if body["model"] != MODEL {
        return error_response(
            404,
            &format!("The model `{}` does not exist.", body["model"]),
            None,
            false,
        );
    }
    if !streaming && body.get("stream_options").is_some() {
        return error_response(
            400,
            "Stream options can only be defined when `stream=True`.",
            None,
            false,
        );
    }
    let id = format!("chatcmpl-{:016x}", fastrand::u64(..));
    match &turn.fault {
        Some(Fault::Status {
            code,
            retry_after,
            message,
        }) => {
            return error_response(*code, message, retry_after.as_deref(), false);
        }
        Some(Fault::ContextOverflow { legacy }) => {
            // Older vLLM releases: a flat body, another text, and no `param`, so matching the
            // legacy shape rests on the message alone.
            let message = if *legacy {
                "This model's maximum context length is 32768 tokens. However, you requested 33793 tokens (32769 in the messages, 1024 in the completion). Please reduce the length of the messages or completion."
            } else {
                "This model's maximum context length is 32768 tokens. However, you requested 1024 output tokens and your prompt contains at least 31745 input tokens, for a total of at least 32769 tokens. Please reduce the length of the input prompt or the number of requested output tokens. (parameter=input_tokens, value=31745)"
            };
            return error_response(400, message, None, *legacy);
        }
        Some(Fault::SlowFirstByte(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Gate) => {
            if let Ok(permit) = state.gate.acquire().await {
                permit.forget();
            }
        }
        Some(Fault::Redirect { code, location }) => return redirect(*code, location),
        Some(Fault::EchoHeaders) => return echo_headers(&headers),
        _ => {}
    }
    if !streaming {
        return json_response(200, &render_completion(&turn, &id));
    }
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let chunks = stream_chunks(&turn, &id, include_usage);
    match &turn.fault {
        Some(Fault::DropMidStream { after_chunks }) => {
            let sent: Vec<Result<Bytes, std::io::Error>> =
                chunks.into_iter().take(*after_chunks).map(Ok).collect();
            let stream = futures::stream::iter(sent).chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected drop",
                ))
            }));
            streaming_response(Body::from_stream(stream))
        }
        Some(Fault::MalformedChunk) => {
            let mut out: Vec<Bytes> = chunks.into_iter().take(1).collect();
            out.push(Bytes::from_static(
                b"data: {\"id\": \"chatcmpl-x\", \"choices\": [{\"delta\": \n\n",
            ));
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            sse_response(out)
        }
        Some(Fault::MidStreamError { code }) => {
            let mut out: Vec<Bytes> = chunks.into_iter().take(1).collect();
            let err = json!({"error": {"message": "injected engine failure", "type": "InternalServerError", "param": null, "code": code}});
            out.push(sse(&err));
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            sse_response(out)
        }
        Some(Fault::Bom) => {
            let mut out = chunks;
            if let Some(first) = out.first_mut() {
                let mut with_bom = b"\xEF\xBB\xBF".to_vec();
                with_bom.extend_from_slice(first);
                *first = Bytes::from(with_bom);
            }
            sse_response(out)
        }
        Some(Fault::EndlessLine { max_bytes }) => {
            let first: Vec<Bytes> = chunks.into_iter().take(1).collect();
            let filler = Bytes::from(vec![b'a'; 64 * 1024]);
            endless(first, Bytes::from_static(b"data: "), filler, *max_bytes)
        }
        Some(Fault::EndlessComments { max_bytes }) => {
            let first: Vec<Bytes> = chunks.into_iter().take(1).collect();
            let filler = Bytes::from(b": ping\n".repeat(64 * 1024 / 7));
            endless(first, Bytes::new(), filler, *max_bytes)
        }
        _ => {
            // A pause (one yield) before every write makes the server flush each one on its
            // own instead of coalescing them.
            let paced = futures::stream::iter(as_real_servers_send(chunks)).then(|b| async move {
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(b)
            });
            streaming_response(Body::from_stream(paced))
        }
    }
}

/// The chunks as real servers deliver them: a `: ping` keep-alive comment before every third
/// event, and each event split across two writes mid-line, so clients are tested on partial
/// lines and comments in every scripted stream.
fn as_real_servers_send(chunks: Vec<Bytes>) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(chunks.len() * 3);
    for (i, chunk) in chunks.into_iter().enumerate() {
        if i % 3 == 2 {
            out.push(Bytes::from_static(b": ping\n\n"));
        }
        let mid = chunk.len() / 2;
        out.push(chunk.slice(..mid));
        out.push(chunk.slice(mid..));
    }
    out
}

/// `first`, then `head`, then `filler` again and again up to `max_bytes`: a peer that talks
/// as fast as it can. It stops by itself at the bound, or when the client goes away.
fn endless(first: Vec<Bytes>, head: Bytes, filler: Bytes, max_bytes: usize) -> Response {
    let rounds = max_bytes / filler.len().max(1);
    let stream = futures::stream::iter(first.into_iter().chain(std::iter::once(head)))
        .chain(futures::stream::iter(std::iter::repeat_n(filler, rounds)))
        .map(Ok::<_, Infallible>);
    streaming_response(Body::from_stream(stream))
}

fn sse(value: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn chunk(id: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    let mut choice =
        json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason});
    if finish_reason.is_some() {
        choice["stop_reason"] = Value::Null;
    }
    json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_200_000, "model": MODEL, "choices": [choice]})
}

fn finish_reason(turn: &Turn) -> String {
    turn.finish_reason.clone().unwrap_or_else(|| {
        if turn.tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
        .into()
    })
}

fn args_text(turn: &Turn, args: &Value) -> String {
    let text = args.to_string();
    match turn.args {
        ArgsEncoding::DoubleEncoded => Value::String(text).to_string(),
        ArgsEncoding::Truncated => text[..text.len() / 2].to_owned(),
        _ => text,
    }
}

fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if ch == ' ' {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn stream_chunks(turn: &Turn, id: &str, include_usage: bool) -> Vec<Bytes> {
    let mut out = vec![sse(&chunk(
        id,
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    if let Some(r) = &turn.reasoning {
        let field = if turn.reasoning_field {
            "reasoning"
        } else {
            "reasoning_content"
        };
        for piece in split_words(r) {
            out.push(sse(&chunk(id, json!({ field: piece }), None)));
        }
    }
    if let Some(t) = &turn.text {
        for piece in split_words(t) {
            out.push(sse(&chunk(id, json!({"content": piece}), None)));
        }
    }
    let finish = finish_reason(turn);
    let mut finished = false;
    for (i, call) in turn.tool_calls.iter().enumerate() {
        let call_id = format!("chatcmpl-tool-{:08x}{i}", fastrand::u32(..));
        let last_call = i + 1 == turn.tool_calls.len();
        match turn.args {
            ArgsEncoding::Object => {
                out.push(sse(&chunk(id, json!({"tool_calls": [{"id": call_id, "type": "function", "index": i, "function": {"name": call.name}}]}), None)));
                let f = last_call.then_some(finish.as_str());
                out.push(sse(&chunk(
                    id,
                    json!({"tool_calls": [{"index": i, "function": {"arguments": call.args}}]}),
                    f,
                )));
                finished |= last_call;
            }
            ArgsEncoding::Idless => {
                let text = args_text(turn, &call.args);
                out.push(sse(&chunk(id, json!({"tool_calls": [{"id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}]}), None)));
                out.push(sse(&chunk(
                    id,
                    json!({"tool_calls": [{"function": {"arguments": text}}]}),
                    None,
                )));
            }
            _ => {
                let text = args_text(turn, &call.args);
                out.push(sse(&chunk(id, json!({"tool_calls": [{"id": call_id, "type": "function", "index": i, "function": {"name": call.name}}]}), None)));
                let cut = text
                    .char_indices()
                    .map(|(k, _)| k)
                    .nth(text.chars().count() / 2)
                    .unwrap_or(0);
                let (a, b) = text.split_at(cut);
                if !a.is_empty() {
                    out.push(sse(&chunk(
                        id,
                        json!({"tool_calls": [{"index": i, "function": {"arguments": a}}]}),
                        None,
                    )));
                }
                // vLLM flushes the rest of the arguments on the chunk that carries finish_reason.
                let f = last_call.then_some(finish.as_str());
                out.push(sse(&chunk(
                    id,
                    json!({"tool_calls": [{"index": i, "function": {"arguments": b}}]}),
                    f,
                )));
                finished |= last_call;
            }
        }
    }
    if !finished {
        out.push(sse(&chunk(id, json!({"content": ""}), Some(&finish))));
    }
    if include_usage {
        let (p, c) = turn.usage;
        out.push(sse(&json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_200_000, "model": MODEL, "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p.saturating_add(c)}})));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The whole streamed response of a turn as one buffer (used by the benchmark server).
pub fn render_stream(turn: &Turn, id: &str, include_usage: bool) -> Bytes {
    let mut all = Vec::new();
    for c in stream_chunks(turn, id, include_usage) {
        all.extend_from_slice(&c);
    }
    Bytes::from(all)
}

fn render_completion(turn: &Turn, id: &str) -> Value {
    let tool_calls: Vec<Value> = turn
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let arguments = match turn.args {
                ArgsEncoding::Object => c.args.clone(),
                _ => Value::String(args_text(turn, &c.args)),
            };
            json!({"id": format!("chatcmpl-tool-{:08x}{i}", fastrand::u32(..)), "type": "function", "function": {"name": c.name, "arguments": arguments}})
        })
        .collect();
    let (p, c) = turn.usage;
    let reasoning_field = if turn.reasoning_field {
        "reasoning"
    } else {
        "reasoning_content"
    };
    let mut message = json!({"role": "assistant", "content": turn.text, "tool_calls": tool_calls});
    message[reasoning_field] = json!(turn.reasoning);
    json!({
        "id": id, "object": "chat.completion", "created": 1_764_200_000, "model": MODEL,
        "choices": [{"index": 0, "logprobs": null, "finish_reason": finish_reason(turn), "stop_reason": null, "message": message}],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p.saturating_add(c), "prompt_tokens_details": null}
    })
}

fn error_response(code: u16, message: &str, retry_after: Option<&str>, legacy: bool) -> Response {
    let kind = match code {
        400 => "BadRequestError",
        404 => "NotFoundError",
        429 => "TooManyRequestsError",
        503 => "ServiceUnavailableError",
        _ => "InternalServerError",
    };
    let param = if message.contains("(parameter=input_tokens") {
        json!("input_tokens")
    } else {
        Value::Null
    };
    let body = if legacy {
        json!({"object": "error", "message": message, "type": kind, "param": param, "code": code})
    } else {
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
    };
    let mut response = json_response(code, &body);
    if let Some(ra) = retry_after
        && let Ok(v) = ra.parse()
    {
        response.headers_mut().insert("retry-after", v);
    }
    response
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

fn sse_response(chunks: Vec<Bytes>) -> Response {
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
    streaming_response(Body::from_stream(stream))
}

fn streaming_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

use futures::StreamExt as _;

/// Client CPU time (user + system) of this process so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is valid and `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A provider aimed at `server`, with a short read timeout so injected stalls fail fast.
pub fn provider(server: &MockVllm) -> agent_core::model::openai::OpenAiCompatible {
    provider_builder(server)
        .build()
        .unwrap_or_else(|e| panic!("provider: {e}"))
}

/// A provider builder aimed at `server`.
pub fn provider_builder(server: &MockVllm) -> agent_core::model::openai::OpenAiCompatibleBuilder {
    agent_core::model::openai::OpenAiCompatible::builder()
        .base_url(server.base_url())
        .model(MODEL)
        .api_key("test-key")
        .read_timeout(Duration::from_secs(2))
}

/// A retry policy with millisecond backoffs, for tests.
pub fn fast_retry() -> agent_core::retry::RetryPolicy {
    agent_core::retry::RetryPolicy::default()
        .max_attempts(4)
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
}

/// One replica of the racing tests (the store test and the soak): an agent with one
/// `get_weather` tool on `server`, on a store client of its own, taking replica leases of
/// `lease` when given.
pub fn racing_replica(
    server: &MockVllm,
    store: std::sync::Arc<dyn agent_core::session::SessionStore>,
    lease: Option<Duration>,
) -> Result<agent_core::Agent, agent_core::BuildError> {
    use agent_core::tool::{FnTool, ToolOutput};
    let builder = match lease {
        Some(lease) => agent_core::Agent::builder().replica_lease(lease),
        None => agent_core::Agent::builder(),
    };
    builder
        .model(provider(server))
        .tool(FnTool::new(
            "get_weather",
            "Weather.",
            json!({"type": "object"}),
            |_, _| async { Ok(ToolOutput::text("sunny")) },
        ))
        .session_store(store)
        .build()
}

/// Counts the HTTP requests an AWS SDK client sends, retries included (S3 and DynamoDB share the
/// interceptor trait): `aws_sdk_dynamodb::config::Builder::interceptor(RequestCounter(n))`.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(pub Arc<std::sync::atomic::AtomicUsize>);

impl aws_sdk_dynamodb::config::Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// What an [`OtlpReceiver`] was sent.
#[derive(Default)]
pub struct OtlpReceived {
    /// Trace exports, with their headers.
    pub traces: Vec<(
        HeaderMap,
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    )>,
    /// Metric exports, with their headers.
    pub metrics: Vec<(
        HeaderMap,
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    )>,
    /// Metric export attempts, refused ones included.
    pub metric_requests: usize,
}

/// An OTLP/HTTP (protobuf) receiver on 127.0.0.1 that decodes what it is sent, on its own thread
/// and runtime (the SDK's exporters block while they send). It stops with the test process.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:<port>`, the `OTEL_EXPORTER_OTLP_ENDPOINT` to use.
    pub endpoint: String,
    /// What arrived.
    pub received: Arc<Mutex<OtlpReceived>>,
}

impl OtlpReceiver {
    /// A receiver that takes traces and metrics.
    pub fn start() -> Self {
        Self::start_with_metrics_status(StatusCode::OK)
    }

    /// A receiver that answers metric exports with `status` (405: a traces-only backend such as
    /// Arize Phoenix); they are counted, and kept only when `status` is a success.
    pub fn start_with_metrics_status(status: StatusCode) -> Self {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let received = Arc::new(Mutex::new(OtlpReceived::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let state = received.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let traces = state.clone();
                let metrics = state;
                let app = axum::Router::new()
                    .route(
                        "/v1/traces",
                        post(move |headers: HeaderMap, body: Bytes| async move {
                            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                                return StatusCode::BAD_REQUEST;
                            };
                            lock(&traces).traces.push((headers, request));
                            StatusCode::OK
                        }),
                    )
                    .route(
                        "/v1/metrics",
                        post(move |headers: HeaderMap, body: Bytes| async move {
                            let mut received = lock(&metrics);
                            received.metric_requests += 1;
                            if !status.is_success() {
                                return status;
                            }
                            let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
                                return StatusCode::BAD_REQUEST;
                            };
                            received.metrics.push((headers, request));
                            StatusCode::OK
                        }),
                    );
                let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                    return;
                };
                let Ok(addr) = listener.local_addr() else {
                    return;
                };
                let _ = tx.send(addr);
                let _ = axum::serve(listener, app).await;
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the OTLP receiver did not start: {e}"));
        Self {
            endpoint: format!("http://{addr}"),
            received,
        }
    }
}

/// Appends `line` to the file at `path` in one write (so lines of concurrent callers do not
/// mix): the calls log of the crash-test processes.
pub fn log_line(path: &std::path::Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// The address in `travel-agent serve`'s start line, a JSON log line
/// `{"fields": {"message": "listening", "address": "http://127.0.0.1:<port>"}, ...}`; `None` for
/// any other line.
pub fn listening_address(line: &str) -> Option<String> {
    let record: Value = serde_json::from_str(line).ok()?;
    let fields = record.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some(fields.get("address")?.as_str()?.to_owned())
}

/// Raises this process's open-file limit to its hard limit (at most 65,536), for benchmarks with
/// a thousand connections; children inherit it.
pub fn raise_fd_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The benchmarks' model server process: serves [`MockVllm::start_bench`] on 127.0.0.1, prints
/// its port on stdout, and serves until stdin closes (so the CPU a benchmark measures in its own
/// process is the client's alone).
pub fn serve_bench_model_until_stdin_closes() {
    use std::io::Read as _;
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let server = MockVllm::start_bench("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("server: {e}"));
        let bedrock = bedrock::LoopbackBedrock::start_bench()
            .await
            .unwrap_or_else(|e| panic!("bedrock server: {e}"));
        // The OpenAI-compatible server's port, then the Bedrock endpoint's.
        println!("{} {}", server.addr().port(), bedrock.url());
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .ok();
    });
}

/// The benchmarks' model server as a child process: this same executable run with `--serve`
/// (which calls [`serve_bench_model_until_stdin_closes`]). Returns the child, which serves until
/// its stdin is closed, and the base URL (`http://127.0.0.1:<port>/v1`).
pub fn spawn_bench_model() -> (std::process::Child, String) {
    let (child, base_url, _) = spawn_bench_models();
    (child, base_url)
}

/// [`spawn_bench_model`], with the URL of the Bedrock endpoint the same child serves
/// ([`bedrock::LoopbackBedrock::start_bench`]).
pub fn spawn_bench_models() -> (std::process::Child, String, String) {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("exe: {e}"));
    let mut child = std::process::Command::new(exe)
        .arg("--serve")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")))
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let mut words = line.split_whitespace();
    let port: u16 = words
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let bedrock = words
        .next()
        .unwrap_or_else(|| panic!("no Bedrock URL in {line:?}"))
        .to_owned();
    (child, format!("http://127.0.0.1:{port}/v1"), bedrock)
}
