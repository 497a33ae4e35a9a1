//! `travel-agent serve`: the travel agent as an HTTP service (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /invocations` | `{"prompt": "...", "session_id": "..."}`: the run's events as SSE (default), or one JSON document with `Accept: application/json` |
//! | `GET /sessions/{id}/messages` | the caller's session history |
//! | `GET /ping` | `{"status": "Healthy" \| "HealthyBusy", "time_of_last_update": <unix s>}` (the Bedrock AgentCore runtime contract) |
//! | `GET /ready` | 200 while taking work, 503 once draining (the readiness probe) |
//!
//! With `--metrics-listen`, a second listener serves `GET /metrics`: the replica's invocation
//! counts in the Prometheus text format, for the autoscaler (KEDA) and dashboards.
//!
//! Every route but `/ping` and `/ready` needs a Cognito bearer token; the token's `sub` is the
//! actor, and session ids are scoped to it (a user cannot name another user's session). On
//! SIGTERM readiness turns false at once, new invocations get 503, runs in flight get the drain
//! time to finish, the rest are cancelled with their sessions left valid, and the process exits 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_core::AgentError;
use agent_core::event::{ErrorEvent, SseEvent};
use agent_core::prelude::*;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod auth;
mod listen;
mod metrics;
mod state;

use auth::{AuthError, CognitoConfig, CognitoVerifier};

/// `travel-agent serve` options (each also from its environment variable).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, env = "TRAVEL_AGENT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// No authentication, for local use only: every caller is the actor `local`. Refuses to
    /// listen on anything but a loopback address.
    #[arg(long)]
    no_auth: bool,
    /// Seconds that runs in flight get to finish after SIGTERM (keep it below the pod's
    /// `terminationGracePeriodSeconds` and Spot's 120 s notice).
    #[arg(long, env = "TRAVEL_AGENT_DRAIN_SECONDS", default_value_t = 90)]
    drain_seconds: u64,
    /// Invocations running at once; beyond it, 503 with `Retry-After`.
    #[arg(long, env = "TRAVEL_AGENT_MAX_CONCURRENT", default_value_t = 64)]
    max_concurrent: usize,
    /// Invocations one user may run at once; beyond it, 429 with `Retry-After`.
    #[arg(long, env = "TRAVEL_AGENT_MAX_PER_USER", default_value_t = 4)]
    max_per_user: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "TRAVEL_AGENT_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Longest prompt in bytes (413 beyond).
    #[arg(long, env = "TRAVEL_AGENT_MAX_PROMPT_BYTES", default_value_t = 16 * 1024)]
    max_prompt_bytes: usize,
    /// Where sessions are kept when no S3 bucket is configured.
    #[arg(
        long,
        env = "TRAVEL_AGENT_DATA_DIR",
        default_value = "travel-agent-data"
    )]
    data_dir: PathBuf,
    /// Seconds a client may take to send a request's head or its body, or leave a response
    /// unread, before it is refused or its connection closed (an SSE stream's run goes on to its
    /// end without it).
    #[arg(long, env = "TRAVEL_AGENT_STALL_SECONDS", default_value_t = 30)]
    stall_seconds: u64,
    /// How long a run's claim on its session lasts without a save (a replica that dies leaves it
    /// to expire; until then another replica answers 409 for that session). Above the longest
    /// model or tool call.
    #[arg(long, env = "TRAVEL_AGENT_LEASE_SECONDS", default_value_t = 300)]
    lease_seconds: u64,
    /// Connections open at once; beyond it, new ones wait to be accepted.
    #[arg(long, env = "TRAVEL_AGENT_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Where to serve `GET /metrics` (Prometheus text format); none when unset.
    #[arg(long, env = "TRAVEL_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// The longest session id a client may choose (with a subject of up to 128 characters and the
/// `.`, a store key stays within the 256 that `validate_id` takes).
const MAX_SESSION_ID: usize = 120;
/// The log target of the service's start, drain and stop lines.
const LIFECYCLE: &str = "travel_agent::lifecycle";
/// How long after the drain time cancelled runs get to write their last state.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

enum Auth {
    None,
    Cognito(Box<CognitoVerifier>),
}

struct Service {
    agent: Agent,
    auth: Auth,
    args: Args,
    slots: Arc<Semaphore>,
    per_user: std::sync::Mutex<HashMap<String, usize>>,
    draining: AtomicBool,
    /// Cancels every run (after the drain time).
    cancel_all: CancellationToken,
    last_update: std::sync::atomic::AtomicU64,
    counts: metrics::Counts,
}

impl Service {
    fn in_flight(&self) -> usize {
        self.args.max_concurrent - self.slots.available_permits()
    }

    fn touch(&self) {
        self.last_update.store(unix_now(), Ordering::Relaxed);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request refused before or instead of a run: a status and an [`ErrorEvent`] body.
struct Refusal {
    status: StatusCode,
    kind: &'static str,
    message: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.headers
            .push((header::RETRY_AFTER, HeaderValue::from(seconds)));
        self
    }

    fn unauthorized(e: &AuthError) -> Self {
        let challenge = format!(
            "Bearer realm=\"travel-agent\", error=\"invalid_token\", error_description=\"{e}\""
        );
        let mut r = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers.push((header::WWW_AUTHENTICATE, v));
        }
        r
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let retryable = matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        );
        let body = ErrorEvent {
            kind: self.kind.to_owned(),
            message: self.message,
            retryable,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            response.headers_mut().insert(k, v);
        }
        response
    }
}

/// Runs the service until SIGTERM or Ctrl-C, then drains.
pub(crate) async fn run(
    args: Args,
    builder: agent_core::agent::AgentBuilder,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let auth = match CognitoConfig::from_env()? {
        Some(config) => {
            tracing::info!(
                target: LIFECYCLE,
                issuer = %config.issuer,
                clients = ?config.client_ids,
                "Cognito tokens checked"
            );
            Auth::Cognito(Box::new(CognitoVerifier::new(config)?))
        }
        None if args.no_auth => {
            if !args.listen.ip().is_loopback() {
                return Err(format!(
                    "--no-auth is for local use only and refuses to listen on {}: listen on \
                     127.0.0.1, or configure COGNITO_ISSUER and COGNITO_CLIENT_IDS",
                    args.listen
                )
                .into());
            }
            tracing::warn!(
                target: LIFECYCLE,
                "no authentication (--no-auth): every caller is `local`"
            );
            Auth::None
        }
        None => {
            return Err("no authentication configured: set COGNITO_ISSUER (or \
                        COGNITO_USER_POOL_ID) and COGNITO_CLIENT_IDS, or pass --no-auth for \
                        local use"
                .into());
        }
    };
    // Replicas share the session store: runs of one session exclude each other across them.
    let builder = state::configure(builder, &args.data_dir)
        .await?
        .replica_lease(Duration::from_secs(args.lease_seconds.max(1)));
    let agent = builder.build()?;
    let service = Arc::new(Service {
        agent,
        auth,
        slots: Arc::new(Semaphore::new(args.max_concurrent)),
        per_user: std::sync::Mutex::new(HashMap::new()),
        draining: AtomicBool::new(false),
        cancel_all: CancellationToken::new(),
        last_update: std::sync::atomic::AtomicU64::new(unix_now()),
        counts: metrics::Counts::default(),
        args: args.clone(),
    });
    let router = Router::new()
        .route("/invocations", post(invocations))
        .route("/sessions/{id}/messages", get(session_messages))
        .route("/ping", get(ping))
        .route("/ready", get(ready))
        .with_state(service.clone());
    let stall = Duration::from_secs(args.stall_seconds.max(1));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let stop_serving = CancellationToken::new();
    let server = tokio::spawn(listen::serve(
        listener,
        router,
        listen::Bounds {
            stall,
            connections: args.max_connections.max(1),
        },
        stop_serving.clone(),
    ));
    let metrics_server = match args.metrics_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await?;
            let metrics_addr = listener.local_addr()?;
            tracing::info!(
                target: LIFECYCLE,
                address = %format!("http://{metrics_addr}/metrics"),
                "metrics"
            );
            let router = Router::new()
                .route("/metrics", get(metrics::render))
                .with_state(service.clone());
            Some(tokio::spawn(listen::serve(
                listener,
                router,
                listen::Bounds {
                    stall,
                    connections: 64,
                },
                stop_serving.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(
        target: LIFECYCLE,
        address = %format!("http://{addr}"),
        ready_ms = started.elapsed().as_millis() as u64,
        "listening"
    );

    terminated().await;
    // Drain: no new work from now on; runs in flight get the drain time.
    service.draining.store(true, Ordering::SeqCst);
    let drain = Duration::from_secs(args.drain_seconds);
    tracing::info!(
        target: LIFECYCLE,
        in_flight = service.in_flight(),
        drain_seconds = drain.as_secs(),
        "draining"
    );
    let deadline = tokio::time::Instant::now() + drain;
    while service.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if service.in_flight() > 0 {
        tracing::warn!(
            target: LIFECYCLE,
            in_flight = service.in_flight(),
            "drain time over: cancelling the invocations still running; their sessions stay \
             resumable"
        );
        service.cancel_all.cancel();
        let deadline = tokio::time::Instant::now() + CANCEL_GRACE;
        while service.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // What the finished runs taught about their users is written before the process goes: the
    // extraction queue gets what is left of the drain time and its cancel grace, never more, so
    // preStop + drain + cancel grace + close stays inside the pod's termination grace period.
    if let Some(memory) = service.agent.memory() {
        let pending = memory.pending_extractions();
        if pending > 0 {
            let until = deadline + CANCEL_GRACE;
            if tokio::time::timeout_at(until, memory.settled())
                .await
                .is_err()
            {
                tracing::warn!(
                    target: LIFECYCLE,
                    pending = memory.pending_extractions(),
                    "memory extraction still running at the end of the drain: those invocations are not mined"
                );
            } else {
                tracing::info!(target: LIFECYCLE, mined = pending, "memory extraction flushed");
            }
        }
    }
    stop_serving.cancel();
    for task in std::iter::once(server).chain(metrics_server) {
        if let Err(e) = task.await {
            tracing::error!(target: LIFECYCLE, error = %e, "the server task failed");
        }
    }
    tracing::info!(target: LIFECYCLE, "drained");
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn ping(State(service): State<Arc<Service>>) -> Response {
    let status = if service.in_flight() > 0 {
        "HealthyBusy"
    } else {
        "Healthy"
    };
    axum::Json(serde_json::json!({
        "status": status,
        "time_of_last_update": service.last_update.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn ready(State(service): State<Arc<Service>>) -> Response {
    if service.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

/// The error a client is sent: its class, and the message when it is about the client's own
/// request; for the service's own failures (a store, the model server) a message with the request
/// id instead, the details going to the log, not to the client.
fn client_error(e: &AgentError, request_id: &str) -> ErrorEvent {
    let mut event = ErrorEvent::from(e);
    let about_the_request = matches!(
        e.kind(),
        "session_busy"
            | "store_conflict"
            | "empty_prompt"
            | "invalid_id"
            | "context_length_exceeded"
            | "nothing_to_resume"
    );
    if !about_the_request {
        tracing::warn!(request_id, kind = e.kind(), error = %e, "invocation failed");
        event.message = format!(
            "the invocation failed ({}); request id {request_id}",
            e.kind()
        );
    }
    event
}

/// The caller's actor id, from the bearer token.
async fn authenticate(service: &Service, headers: &HeaderMap) -> Result<String, Refusal> {
    match &service.auth {
        Auth::None => Ok("local".to_owned()),
        Auth::Cognito(verifier) => {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| Refusal::unauthorized(&AuthError::Missing))?;
            verifier.verify(token).await.map_err(|e| match e {
                AuthError::Jwks(detail) => {
                    tracing::warn!(%detail, "the issuer's keys cannot be fetched");
                    Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "auth_unavailable",
                        "tokens cannot be checked right now",
                    )
                    .retry_after(5)
                }
                other => Refusal::unauthorized(&other),
            })
        }
    }
}

/// The store's session id of `actor`'s session `session_id`: `<actor>.<session id>`. Neither
/// part can contain a `.` (actors are checked in `auth`, session ids here), so two users' keys
/// never meet.
fn scoped_session(actor: &str, session_id: &str) -> Result<String, Refusal> {
    let valid = !session_id.is_empty()
        && session_id.len() <= MAX_SESSION_ID
        && session_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_session_id",
            format!("a session id is 1 to {MAX_SESSION_ID} letters, digits, `-` or `_`"),
        ));
    }
    Ok(format!("{actor}.{session_id}"))
}

#[derive(Deserialize)]
struct InvocationRequest {
    prompt: String,
    #[serde(default)]
    session_id: Option<String>,
}

#[derive(Serialize)]
struct InvocationResponse {
    session_id: String,
    stop_reason: &'static str,
    text: String,
    message: Option<Message>,
    usage: agent_core::model::Usage,
}

/// Holds one of the service's slots and one of the user's.
struct Admission {
    service: Arc<Service>,
    actor: String,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_user = self
            .service
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = per_user.get_mut(&self.actor) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_user.remove(&self.actor);
            }
        }
        self.service.touch();
    }
}

fn admit(service: &Arc<Service>, actor: &str) -> Result<Admission, Refusal> {
    if service.draining.load(Ordering::SeqCst) {
        service.counts.refused(metrics::Refused::Draining);
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this replica is shutting down; retry on another",
        )
        .retry_after(1));
    }
    let Ok(slot) = service.slots.clone().try_acquire_owned() else {
        service.counts.refused(metrics::Refused::Busy);
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{} invocations are running, the most this replica takes",
                service.args.max_concurrent
            ),
        )
        .retry_after(1));
    };
    {
        let mut per_user = service
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = per_user.entry(actor.to_owned()).or_insert(0);
        if *n >= service.args.max_per_user {
            service.counts.refused(metrics::Refused::UserBusy);
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_invocations",
                format!(
                    "you have {} invocations running, the most one user may",
                    service.args.max_per_user
                ),
            )
            .retry_after(1));
        }
        *n += 1;
    }
    service.counts.admitted();
    service.touch();
    Ok(Admission {
        service: service.clone(),
        actor: actor.to_owned(),
        _slot: slot,
    })
}

/// W3C `traceparent`/`tracestate` of a request.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn header_value(headers: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, Refusal> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.trim().is_empty() && s.len() <= max => Ok(Some(s.trim().to_owned())),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("{name} must be 1 to {max} visible ASCII characters"),
        )),
    }
}

/// The whole body, at most `max` bytes, within `deadline` (a client that sends it a byte at a
/// time does not hold its connection longer).
async fn read_body(
    body: Body,
    max: usize,
    deadline: Duration,
) -> Result<axum::body::Bytes, Refusal> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.to_string().contains("length limit") => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {max} bytes"),
        )),
        Ok(Err(e)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body could not be read: {e}"),
        )),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {} s", deadline.as_secs()),
        )),
    }
}

async fn invocations(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = match invocation(service, headers, body).await {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    };
    // An SSE response is logged when its head is sent; its run goes on.
    tracing::info!(
        target: "travel_agent::access",
        method = "POST",
        path = "/invocations",
        status = response.status().as_u16(),
        request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

async fn invocation(
    service: Arc<Service>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let actor = authenticate(&service, &headers).await?;
    // Read after authentication: an anonymous client gets nothing buffered.
    let body = read_body(
        body,
        service.args.max_body_bytes,
        Duration::from_secs(service.args.stall_seconds.max(1)),
    )
    .await?;
    let request: InvocationRequest = serde_json::from_slice(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body is not {{\"prompt\": string, \"session_id\"?: string}}: {e}"),
        )
    })?;
    if request.prompt.len() > service.args.max_prompt_bytes {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "prompt_too_large",
            format!(
                "the prompt has {} bytes; at most {} are taken",
                request.prompt.len(),
                service.args.max_prompt_bytes
            ),
        ));
    }
    if request.prompt.trim().is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "empty_prompt",
            "the prompt is empty",
        ));
    }
    let session_id = request
        .session_id
        .unwrap_or_else(|| format!("s-{:016x}", fastrand::u64(..)));
    let scoped = scoped_session(&actor, &session_id)?;
    let idempotency_key = header_value(&headers, "idempotency-key", 256)?;
    let request_id = header_value(&headers, "x-request-id", 128)?
        .unwrap_or_else(|| format!("r-{:016x}", fastrand::u64(..)));
    let admission = admit(&service, &actor)?;
    let parent =
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(&headers));
    let mut session = service
        .agent
        .session(scoped)
        .actor(actor)
        .cancel_token(service.cancel_all.child_token())
        .trace_parent(parent)
        .request_id(request_id.clone());
    if let Some(key) = idempotency_key {
        session = session.idempotency_key(key);
    }
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/event-stream"));
    // The run belongs to the service, not to the connection: it holds its admission to its end,
    // and a client that goes away (or stops reading) does not stop it, so its outcome is
    // recorded for a retry with the same Idempotency-Key, and the drain waits for it.
    let mut response = if wants_json {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let prompt = request.prompt;
        tokio::spawn(async move {
            let _admission = admission;
            let _ = done.send(session.invoke(prompt).await);
        });
        match outcome.await {
            Ok(Ok(r)) => axum::Json(InvocationResponse {
                session_id: session_id.clone(),
                stop_reason: r.stop_reason.as_str(),
                text: r.text(),
                message: r.message,
                usage: r.usage,
            })
            .into_response(),
            Ok(Err(e)) => {
                let status = match e.kind() {
                    "session_busy" | "store_conflict" => StatusCode::CONFLICT,
                    "empty_prompt" | "invalid_id" => StatusCode::BAD_REQUEST,
                    "throttled" | "transient" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let mut response =
                    (status, axum::Json(client_error(&e, &request_id))).into_response();
                if matches!(
                    status,
                    StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    // The session is busy (a run in flight, perhaps this same invocation on
                    // another replica) or the model is: a retry soon may succeed.
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
                }
                response
            }
            Err(_) => Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "panicked",
                format!("the invocation ended without an outcome; request id {request_id}"),
            )
            .into_response(),
        }
    } else {
        let mut events = session.stream(request.prompt);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(64);
        let id = request_id.clone();
        let stall = Duration::from_secs(service.args.stall_seconds.max(1));
        tokio::spawn(async move {
            let _admission = admission;
            let mut client = Some(tx);
            while let Some(item) = events.next().await {
                let Some(sender) = &client else { continue };
                let sse = match &item {
                    Ok(event) => SseEvent::from_event(event),
                    Err(e) => SseEvent {
                        event: "error",
                        data: serde_json::to_string(&client_error(e, &id)).unwrap_or_default(),
                    },
                };
                let event = Event::default().event(sse.event).data(sse.data);
                // A client gone, or not reading for this long, gets no more events; the run
                // goes on to its end.
                if !matches!(
                    tokio::time::timeout(stall, sender.send(event)).await,
                    Ok(Ok(()))
                ) {
                    client = None;
                }
            }
        });
        let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(Ok::<_, std::convert::Infallible>);
        Sse::new(body)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&session_id) {
        response.headers_mut().insert("x-session-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    Ok(response)
}

async fn session_messages(
    State(service): State<Arc<Service>>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let actor = authenticate(&service, &headers).await?;
        let scoped = scoped_session(&actor, &session_id)?;
        match service.agent.session(scoped).messages().await {
            Ok(Some(messages)) => Ok(axum::Json(serde_json::json!({
                "session_id": session_id,
                "messages": messages,
            }))
            .into_response()),
            // Another user's session is as absent as one that never existed.
            Ok(None) => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "no_session",
                format!("you have no session `{session_id}`"),
            )),
            Err(e) if e.kind() == "invalid_id" => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                e.to_string(),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "reading a session failed");
                Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.kind(),
                    "the session cannot be read right now",
                )
                .retry_after(1))
            }
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
