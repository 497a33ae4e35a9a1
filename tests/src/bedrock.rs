//! [`LoopbackBedrock`]: a Bedrock Runtime endpoint on 127.0.0.1 for the Converse provider's
//! tests and benchmark. It answers `ConverseStream` with real AWS event-stream frames (encoded
//! by `aws-smithy-eventstream`, the SDK's own codec: prelude, headers, payload, CRCs) and
//! `Converse` with JSON, plays scripted replies in order, and plays the faults no emulator
//! does: throttling, an exception event in the middle of a stream, a stream cut inside a frame,
//! a frame that declares 200 MB, a stall, and a context-window overflow.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

/// One step of a streamed reply.
#[derive(Debug, Clone)]
pub enum StreamStep {
    /// An event: its `:event-type` and JSON payload.
    Event(&'static str, Value),
    /// An exception event (`:message-type: exception`) of this type, with this message.
    Exception(&'static str, String),
    /// Half of the next frame, then the end of the body.
    Cut,
    /// A wait before the next step.
    Pause(Duration),
    /// A frame that declares 200 MB, its first 64 KiB, then silence.
    HugeFrame,
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum BedrockReply {
    /// A `ConverseStream` reply.
    Stream(Vec<StreamStep>),
    /// A `Converse` reply body.
    Converse(Value),
    /// An HTTP error with Bedrock's error shape (`x-amzn-ErrorType` and `{"message"}`).
    Error {
        /// HTTP status.
        status: u16,
        /// The error code, e.g. `ThrottlingException`.
        code: &'static str,
        /// The message.
        message: String,
    },
    /// Headers never come.
    Stall,
}

/// Usage in a reply's metadata event.
#[derive(Debug, Clone, Copy, Default)]
pub struct BedrockUsage {
    /// `inputTokens` (not counting cached ones).
    pub input: u64,
    /// `outputTokens`.
    pub output: u64,
    /// `cacheReadInputTokens`.
    pub cache_read: u64,
    /// `cacheWriteInputTokens`.
    pub cache_write: u64,
}

impl BedrockReply {
    /// A streamed text answer in fragments, ending `end_turn`, with `usage`.
    pub fn text(fragments: &[&str], usage: BedrockUsage) -> Self {
        let mut steps = vec![StreamStep::Event(
            "messageStart",
            json!({"role": "assistant"}),
        )];
        for f in fragments {
            steps.push(StreamStep::Event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": f}}),
            ));
        }
        steps.push(StreamStep::Event(
            "contentBlockStop",
            json!({"contentBlockIndex": 0}),
        ));
        steps.extend(Self::end("end_turn", usage));
        Self::Stream(steps)
    }

    /// A streamed tool call (`input` sent in two fragments), after reasoning with a signature,
    /// ending `tool_use`.
    pub fn tool_call(id: &str, name: &str, input: &Value, usage: BedrockUsage) -> Self {
        let input = input.to_string();
        let (a, b) = input.split_at(input.len() / 2);
        let mut steps = vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "The user wants weather."}}}),
            ),
            StreamStep::Event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig-abc"}}}),
            ),
            StreamStep::Event("contentBlockStop", json!({"contentBlockIndex": 0})),
            StreamStep::Event(
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
            ),
        ];
        for part in [a, b] {
            steps.push(StreamStep::Event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": part}}}),
            ));
        }
        steps.push(StreamStep::Event(
            "contentBlockStop",
            json!({"contentBlockIndex": 1}),
        ));
        steps.extend(Self::end("tool_use", usage));
        Self::Stream(steps)
    }

    /// `messageStop` with `stop_reason` and the metadata event with `usage`.
    pub fn end(stop_reason: &str, usage: BedrockUsage) -> Vec<StreamStep> {
        let mut u = json!({
            "inputTokens": usage.input,
            "outputTokens": usage.output,
            "totalTokens": usage.input + usage.output + usage.cache_read + usage.cache_write,
        });
        if usage.cache_read > 0 {
            u["cacheReadInputTokens"] = json!(usage.cache_read);
        }
        if usage.cache_write > 0 {
            u["cacheWriteInputTokens"] = json!(usage.cache_write);
        }
        vec![
            StreamStep::Event("messageStop", json!({"stopReason": stop_reason})),
            StreamStep::Event(
                "metadata",
                json!({"usage": u, "metrics": {"latencyMs": 12}}),
            ),
        ]
    }

    /// An HTTP error.
    pub fn error(status: u16, code: &'static str, message: &str) -> Self {
        Self::Error {
            status,
            code,
            message: message.into(),
        }
    }
}

/// A request the endpoint received.
#[derive(Debug, Clone)]
pub struct BedrockRequest {
    /// The model id in the path.
    pub model: String,
    /// `converse-stream` or `converse`.
    pub operation: String,
    /// The JSON body.
    pub body: Value,
    /// Whether it was SigV4-signed.
    pub signed: bool,
}

struct LoopbackState {
    /// The benchmark's replies, rendered once: a tool call for a request without a tool result,
    /// the answer for one with.
    bench: Option<(Bytes, Bytes)>,
    script: Mutex<VecDeque<BedrockReply>>,
    /// Answered when the script is empty (the benchmark's endless replies).
    fallback: Option<BedrockReply>,
    received: Mutex<Vec<BedrockRequest>>,
    record: bool,
}

/// The endpoint. Stopped when dropped.
pub struct LoopbackBedrock {
    addr: SocketAddr,
    state: Arc<LoopbackState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoopbackBedrock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One event-stream frame.
pub fn frame(headers: Vec<(&'static str, &str)>, payload: &[u8]) -> Bytes {
    let mut message = Message::new(Bytes::copy_from_slice(payload));
    for (name, value) in headers {
        message = message.add_header(Header::new(
            name,
            HeaderValue::String(value.to_owned().into()),
        ));
    }
    let mut out = Vec::new();
    // Encoding a well-formed message into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .expect("an event-stream frame");
    Bytes::from(out)
}

fn event_frame(kind: &str, payload: &Value) -> Bytes {
    frame(
        vec![
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// A whole streamed reply as the bytes of its frames (no pauses, cuts or exceptions).
pub fn render_stream(reply: &BedrockReply) -> Bytes {
    let mut out = Vec::new();
    if let BedrockReply::Stream(steps) = reply {
        for step in steps {
            if let StreamStep::Event(kind, payload) = step {
                out.extend_from_slice(&event_frame(kind, payload));
            }
        }
    }
    Bytes::from(out)
}

impl LoopbackBedrock {
    /// An endpoint that plays `script` in order.
    pub async fn start(script: impl IntoIterator<Item = BedrockReply>) -> std::io::Result<Self> {
        Self::start_with(script.into_iter().collect(), None, true).await
    }

    /// An endpoint that answers every request with `reply` and records nothing.
    pub async fn start_endless(reply: BedrockReply) -> std::io::Result<Self> {
        Self::start_with(VecDeque::new(), Some(reply), false).await
    }

    /// The benchmark's endpoint: the weather round of the OpenAI-compatible benchmark server
    /// (a `get_weather` call, then an answer of 50 streamed tokens) on `ConverseStream`,
    /// stateless, recording nothing.
    pub async fn start_bench() -> std::io::Result<Self> {
        let words: Vec<String> = (0..50).map(|i| format!("w{i} ")).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let call = render_stream(&BedrockReply::tool_call(
            "tooluse_bench",
            "get_weather",
            &json!({"city": "Lisbon"}),
            // The system prompt and tools, written to the cache.
            BedrockUsage {
                input: 20,
                output: 20,
                cache_read: 0,
                cache_write: 100,
            },
        ));
        let answer = render_stream(&BedrockReply::text(
            &words,
            // The prompt of the first call, read back from the cache.
            BedrockUsage {
                input: 40,
                output: 50,
                cache_read: 120,
                cache_write: 0,
            },
        ));
        Self::serve(Arc::new(LoopbackState {
            bench: Some((call, answer)),
            script: Mutex::new(VecDeque::new()),
            fallback: None,
            received: Mutex::new(Vec::new()),
            record: false,
        }))
        .await
    }

    async fn start_with(
        script: VecDeque<BedrockReply>,
        fallback: Option<BedrockReply>,
        record: bool,
    ) -> std::io::Result<Self> {
        Self::serve(Arc::new(LoopbackState {
            bench: None,
            script: Mutex::new(script),
            fallback,
            received: Mutex::new(Vec::new()),
            record,
        }))
        .await
    }

    async fn serve(state: Arc<LoopbackState>) -> std::io::Result<Self> {
        let app = axum::Router::new()
            .route("/model/{model}/{operation}", post(answer))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// The endpoint URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An SDK client for this endpoint: test credentials, region us-east-1.
    pub fn client(&self) -> aws_sdk_bedrockruntime::Client {
        loopback_client(&self.url())
    }

    /// Adds replies to the script.
    pub fn push(&self, replies: impl IntoIterator<Item = BedrockReply>) {
        crate::lock(&self.state.script).extend(replies);
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<BedrockRequest> {
        crate::lock(&self.state.received).clone()
    }
}

/// An SDK client for a Bedrock endpoint at `url` with test credentials.
pub fn loopback_client(url: &str) -> aws_sdk_bedrockruntime::Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(aws_sdk_bedrockruntime::config::BehaviorVersion::latest())
        .region(aws_sdk_bedrockruntime::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_bedrockruntime::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(url)
        .build();
    aws_sdk_bedrockruntime::Client::from_conf(config)
}

async fn answer(
    State(state): State<Arc<LoopbackState>>,
    Path((model, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((call, answer)) = &state.bench {
        // The server's CPU is not the benchmark's: a plain search will do.
        let has_result = body.windows(10).any(|w| w == b"toolResult");
        return (
            [("content-type", "application/vnd.amazon.eventstream")],
            if has_result {
                answer.clone()
            } else {
                call.clone()
            },
        )
            .into_response();
    }
    if state.record {
        let signed = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
        crate::lock(&state.received).push(BedrockRequest {
            model,
            operation,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            signed,
        });
    }
    let next = crate::lock(&state.script)
        .pop_front()
        .or_else(|| state.fallback.clone());
    let Some(next) = next else {
        return error_response(500, "InternalServerException", "the script is exhausted");
    };
    match next {
        BedrockReply::Error {
            status,
            code,
            message,
        } => error_response(status, code, &message),
        BedrockReply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error_response(500, "InternalServerException", "stalled")
        }
        BedrockReply::Converse(body) => {
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        BedrockReply::Stream(steps) => {
            let body = futures::stream::unfold(steps.into_iter(), |mut steps| async move {
                let step = steps.next()?;
                let bytes = match step {
                    StreamStep::Event(kind, payload) => event_frame(kind, &payload),
                    StreamStep::Exception(kind, message) => frame(
                        vec![
                            (":exception-type", kind),
                            (":content-type", "application/json"),
                            (":message-type", "exception"),
                        ],
                        json!({"message": message}).to_string().as_bytes(),
                    ),
                    StreamStep::Pause(d) => {
                        tokio::time::sleep(d).await;
                        Bytes::new()
                    }
                    StreamStep::Cut => {
                        let next = event_frame(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": 0, "delta": {"text": "cut off here"}}),
                        );
                        // The rest of the script is dropped: the body ends after half a frame.
                        return Some((
                            Ok::<_, std::io::Error>(next.slice(..next.len() / 2)),
                            Vec::new().into_iter(),
                        ));
                    }
                    StreamStep::HugeFrame => {
                        let mut huge = 200_000_000u32.to_be_bytes().to_vec();
                        huge.resize(64 * 1024, 0);
                        let _ = steps.by_ref().count();
                        return Some((
                            Ok(Bytes::from(huge)),
                            vec![StreamStep::Pause(Duration::from_secs(3600))].into_iter(),
                        ));
                    }
                };
                Some((Ok(bytes), steps))
            });
            (
                [("content-type", "application/vnd.amazon.eventstream")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
    }
}

/// An error reply; an empty `code` sends none (a proxy's error page, say).
fn error_response(status: u16, code: &str, message: &str) -> Response {
    let status =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    if code.is_empty() {
        return (status, [("content-type", "text/html")], message.to_owned()).into_response();
    }
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-amzn-errortype", code),
        ],
        json!({"message": message}).to_string(),
    )
        .into_response()
}
