//! Framework overhead of one agent invocation, side by side with a hand-written `reqwest` client
//! doing the same two model calls (the floor), in the same run, against a fast local model
//! server in a child process (so the CPU time measured here is the client's alone).
//!
//! One invocation: prompt -> the model calls `get_weather` -> the tool runs -> the model
//! streams a 50-token answer. Reported: client CPU time per invocation, throughput at 1, 10,
//! 100 and 1000 concurrent sessions, and memory per idle session, each as a ratio to the floor.
//!
//! Run: `scripts/bench.sh` (or `cargo run --release -p agent-tests --bin bench -- [--quick]`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_core::prelude::*;
use agent_core::session::{InMemorySessionStore, SessionKey, SessionStore};
use agent_tests::{MODEL, MockVllm, process_cpu_time};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn weather(city: &str) -> Value {
    json!({"city": city, "conditions": "sunny", "high_c": 21, "low_c": 14})
}

fn weather_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false})
}

// ------------------------------------------------------------------ the floor

#[derive(Deserialize)]
struct FChunk {
    #[serde(default)]
    choices: Vec<FChoice>,
}
#[derive(Deserialize)]
struct FChoice {
    #[serde(default)]
    delta: FDelta,
}
#[derive(Deserialize, Default)]
struct FDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<FCall>>,
}
#[derive(Deserialize)]
struct FCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FFunction>,
}
#[derive(Deserialize)]
struct FFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

struct Floor {
    client: reqwest::Client,
    url: String,
    tools: Value,
}

impl Floor {
    /// One streamed call; returns (text, tool call id, name, arguments).
    async fn call(
        &self,
        messages: &[Value],
    ) -> Result<(String, Option<(String, String, String)>), String> {
        let body = json!({"model": MODEL, "messages": messages, "stream": true, "stream_options": {"include_usage": true},
            "tools": self.tools, "tool_choice": "auto"});
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = response.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut text = String::new();
        let mut call: Option<(String, String, String)> = None;
        while let Some(bytes) = stream.next().await {
            buf.extend_from_slice(&bytes.map_err(|e| e.to_string())?);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let Some(data) = event.strip_prefix(b"data: ") else {
                    continue;
                };
                let data = &data[..data.len() - 2];
                if data == b"[DONE]" {
                    return Ok((text, call));
                }
                let chunk: FChunk = serde_json::from_slice(data).map_err(|e| e.to_string())?;
                for choice in chunk.choices {
                    if let Some(c) = choice.delta.content {
                        text.push_str(&c);
                    }
                    for tc in choice.delta.tool_calls.into_iter().flatten() {
                        let entry = call.get_or_insert_with(Default::default);
                        if let Some(id) = tc.id {
                            entry.0 = id;
                        }
                        if let Some(f) = tc.function {
                            if let Some(n) = f.name {
                                entry.1 = n;
                            }
                            if let Some(a) = f.arguments {
                                entry.2.push_str(&a);
                            }
                        }
                    }
                }
            }
        }
        Ok((text, call))
    }

    /// One invocation; returns the conversation (the floor's session).
    async fn invoke(&self, prompt: &str) -> Result<Vec<Value>, String> {
        let mut messages = vec![
            json!({"role": "system", "content": "You plan trips."}),
            json!({"role": "user", "content": prompt}),
        ];
        let (_, call) = self.call(&messages).await?;
        let (id, name, args) = call.ok_or("no tool call")?;
        let input: Value = serde_json::from_str(&args).map_err(|e| e.to_string())?;
        let result = weather(input["city"].as_str().unwrap_or_default());
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": args}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": result.to_string()}));
        let (text, _) = self.call(&messages).await?;
        messages.push(json!({"role": "assistant", "content": text}));
        Ok(messages)
    }
}

// ------------------------------------------------------------------ the agent

fn build_agent(base_url: &str, store: InMemorySessionStore) -> Agent {
    build_agent_with(
        base_url,
        store,
        agent_core::telemetry::Telemetry::disabled(),
    )
}

/// Spans and metrics recorded by the SDK (sampled, attributes set), not exported: the
/// instrumentation's own cost.
fn recording_telemetry() -> agent_core::telemetry::Telemetry {
    let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    agent_core::telemetry::Telemetry::new(&tracer_provider, &meter_provider)
}

fn build_agent_with(
    base_url: &str,
    store: InMemorySessionStore,
    telemetry: agent_core::telemetry::Telemetry,
) -> Agent {
    let model = OpenAiCompatible::builder()
        .base_url(base_url)
        .model(MODEL)
        .build()
        .unwrap_or_else(|e| panic!("model: {e}"));
    Agent::builder()
        .model(model)
        .system_prompt("You plan trips.")
        .tool(FnTool::new(
            "get_weather",
            "Weather for a city.",
            weather_schema(),
            |input, _| async move {
                Ok(ToolOutput::json(weather(
                    input["city"].as_str().unwrap_or_default(),
                )))
            },
        ))
        .session_store(store)
        .telemetry(telemetry)
        .build()
        .unwrap_or_else(|e| panic!("agent: {e}"))
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Floor,
    Agent,
    AgentTraced,
}

struct Subjects {
    floor: Floor,
    agent: Agent,
    traced: Agent,
    next_session: AtomicUsize,
}

impl Subjects {
    async fn one(&self, who: Who) {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        match who {
            Who::Floor => {
                let conv = self
                    .floor
                    .invoke("Weather in Lisbon?")
                    .await
                    .unwrap_or_else(|e| panic!("floor: {e}"));
                assert_eq!(conv.len(), 5);
            }
            Who::AgentTraced => {
                let r = self
                    .traced
                    .session(format!("t{n}"))
                    .invoke("Weather in Lisbon?")
                    .await
                    .unwrap_or_else(|e| panic!("agent: {e}"));
                assert_eq!(r.stop_reason, StopReason::EndTurn);
            }
            Who::Agent => {
                let r = self
                    .agent
                    .session(format!("s{n}"))
                    .invoke("Weather in Lisbon?")
                    .await
                    .unwrap_or_else(|e| panic!("agent: {e}"));
                assert_eq!(r.stop_reason, StopReason::EndTurn);
            }
        }
    }
}

async fn cpu_per_invocation(s: &Subjects, who: Who, n: usize) -> Duration {
    let before = process_cpu_time();
    for _ in 0..n {
        s.one(who).await;
    }
    (process_cpu_time() - before) / n as u32
}

async fn throughput(s: &Arc<Subjects>, who: Who, concurrency: usize, total: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (s, done) = (s.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.fetch_add(1, Ordering::Relaxed) < total {
                s.one(who).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("task: {e}"));
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn raise_fd_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn serve() {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let server = MockVllm::start_bench("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("server: {e}"));
        println!("{}", server.addr().port());
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .ok();
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        serve();
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    raise_fd_limit();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("exe: {e}"));
    let mut child = Command::new(exe)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")))
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("port {line:?}: {e}"));
    let base_url = format!("http://127.0.0.1:{port}/v1");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let store = InMemorySessionStore::new();
        let subjects = Arc::new(Subjects {
            floor: Floor {
                client: reqwest::Client::new(),
                url: format!("{base_url}/chat/completions"),
                tools: json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", "parameters": weather_schema()}}]),
            },
            agent: build_agent(&base_url, store.clone()),
            traced: build_agent_with(&base_url, InMemorySessionStore::new(), recording_telemetry()),
            next_session: AtomicUsize::new(0),
        });
        let cpu_n = if quick { 200 } else { 2000 };
        // Warm up both (connections, allocator, caches).
        cpu_per_invocation(&subjects, Who::Floor, 100).await;
        cpu_per_invocation(&subjects, Who::Agent, 100).await;
        cpu_per_invocation(&subjects, Who::AgentTraced, 100).await;
        let mut floor_cpu = Duration::MAX;
        let mut agent_cpu = Duration::MAX;
        let mut traced_cpu = Duration::MAX;
        for _ in 0..3 {
            floor_cpu = floor_cpu.min(cpu_per_invocation(&subjects, Who::Floor, cpu_n).await);
            agent_cpu = agent_cpu.min(cpu_per_invocation(&subjects, Who::Agent, cpu_n).await);
            traced_cpu = traced_cpu.min(cpu_per_invocation(&subjects, Who::AgentTraced, cpu_n).await);
        }
        let mut rows = vec![(
            "client CPU per invocation, telemetry off (us)".to_owned(),
            floor_cpu.as_secs_f64() * 1e6,
            agent_cpu.as_secs_f64() * 1e6,
            "<= 1.5x",
        )];
        rows.push((
            "client CPU per invocation, telemetry recording (us)".to_owned(),
            floor_cpu.as_secs_f64() * 1e6,
            traced_cpu.as_secs_f64() * 1e6,
            "",
        ));
        // Memory per idle session: sessions kept after one invocation each. Measured before the
        // throughput stages, whose thousand concurrent runs leave connections and tasks winding
        // down that would otherwise be counted here.
        let sessions = if quick { 500 } else { 2000 };
        let mut floor_sessions: HashMap<String, Vec<Value>> = HashMap::new();
        let before = ALLOCATED.load(Ordering::SeqCst);
        for i in 0..sessions {
            let conv = subjects.floor.invoke("Weather in Lisbon?").await.unwrap_or_else(|e| panic!("floor: {e}"));
            floor_sessions.insert(format!("f{i}"), conv);
        }
        let floor_bytes = (ALLOCATED.load(Ordering::SeqCst) - before) as f64 / sessions as f64;
        let agent_store = InMemorySessionStore::new();
        let agent = build_agent(&base_url, agent_store.clone());
        agent.session("warm").invoke("Weather in Lisbon?").await.unwrap_or_else(|e| panic!("agent: {e}"));
        let before = ALLOCATED.load(Ordering::SeqCst);
        for i in 0..sessions {
            agent.session(format!("a{i}")).invoke("Weather in Lisbon?").await.unwrap_or_else(|e| panic!("agent: {e}"));
        }
        let agent_total = ALLOCATED.load(Ordering::SeqCst) - before;
        // The messages' own heap size: a deep copy of every session's messages.
        let before = ALLOCATED.load(Ordering::SeqCst);
        let mut copies = Vec::with_capacity(sessions);
        for i in 0..sessions {
            let key = SessionKey::new(&format!("a{i}"), "default").unwrap_or_else(|e| panic!("key: {e}"));
            let loaded = agent_store.load(&key).await.unwrap_or_else(|e| panic!("load: {e}")).unwrap_or_else(|| panic!("missing"));
            copies.push(loaded.messages);
        }
        let message_bytes = ALLOCATED.load(Ordering::SeqCst) - before;
        let agent_bytes = agent_total as f64 / sessions as f64;
        let overhead = (agent_total - message_bytes) as f64 / sessions as f64;
        drop(copies);
        rows.push(("memory per idle session, messages included (bytes)".to_owned(), floor_bytes, agent_bytes, ""));
        drop(floor_sessions);
        for c in [1usize, 10, 100, 1000] {
            let total = if quick { (c * 2).max(200) } else { (c * 4).max(1000) };
            let f = throughput(&subjects, Who::Floor, c, total).await;
            let a = throughput(&subjects, Who::Agent, c, total).await;
            let target = if c == 1000 { ">= 0.7x" } else { "" };
            rows.push((format!("throughput, {c} concurrent sessions (invocations/s)"), f, a, target));
        }


        println!("\nagent-core invocation benchmark ({} mode): prompt -> tool call -> 50-token streamed answer", if quick { "quick" } else { "full" });
        println!("{:<58} {:>12} {:>12} {:>8}  target", "metric", "floor", "agent", "ratio");
        for (name, f, a, target) in &rows {
            println!("{name:<58} {f:>12.1} {a:>12.1} {:>7.2}x  {target}", a / f);
        }
        println!("{:<58} {:>12} {:>12.1} {:>8}  <= 8192", "idle session cost beyond its messages (bytes)", "", overhead, "");
        let cpu_ok = agent_cpu.as_secs_f64() <= 1.5 * floor_cpu.as_secs_f64();
        let tp = &rows[5];
        let tp_ok = tp.2 >= 0.7 * tp.1;
        let mem_ok = overhead <= 8192.0;
        println!("\ntargets: cpu {} / throughput@1000 {} / idle session {}", ok(cpu_ok), ok(tp_ok), ok(mem_ok));
    });
    drop(child.stdin.take());
    let _ = child.wait();
}

fn ok(b: bool) -> &'static str {
    if b { "met" } else { "MISSED" }
}
