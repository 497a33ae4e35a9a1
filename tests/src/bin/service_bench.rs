//! What the travel-agent service adds to an invocation (HTTP, Cognito token check, SSE) next to
//! calling the library directly, in the same run, against the same fast model server (a child
//! process) and the same travel MCP server; then throughput and latency at 100 and 1,000
//! concurrent SSE streams with every session checked afterwards (nothing lost or duplicated),
//! RSS per open stream, and cold start to ready.
//!
//! Run: `scripts/service-bench.sh` (builds `travel-agent` and this, release). `--quick` runs
//! fewer invocations.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::memory::{InMemoryMemoryStore, MemoryConfig};
use agent_core::prelude::*;
use agent_memory::FileSessionStore;
use agent_tests::process_cpu_time;
use futures::StreamExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SIGNING_KEY: &[u8] =
    include_bytes!("../../../examples/travel-agent/tests/fixtures/test-signing-key.der");
const TEST_JWKS: &str =
    include_str!("../../../examples/travel-agent/tests/fixtures/test-jwks.json");
const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_bench";
const PROMPT: &str = "Weather in Lisbon?";

fn travel_agent_bin() -> String {
    std::env::var("TRAVEL_AGENT_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("exe: {e}"));
        exe.with_file_name("travel-agent").display().to_string()
    })
}

/// CPU time (user + system) of process `pid`, from `/proc`.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based: utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Service {
    child: Child,
    url: String,
    /// From spawn to the `listening on` line.
    ready_after: Duration,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_service(model_url: &str, jwks_url: &str, data: &std::path::Path) -> Service {
    let started = Instant::now();
    let mut child = Command::new(travel_agent_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--max-concurrent", "2000", "--max-per-user", "2000"])
        .env("OPENAI_BASE_URL", model_url)
        .env("OPENAI_MODEL", agent_tests::MODEL)
        .env("COGNITO_ISSUER", ISSUER)
        .env("COGNITO_CLIENT_IDS", "bench-client")
        .env("COGNITO_JWKS_URL", jwks_url)
        .env("TRAVEL_AGENT_DATA_DIR", data)
        // The start line, and no access log (its cost is not the service's to measure here).
        .env("RUST_LOG", "warn,travel_agent::lifecycle=info")
        .env_remove("TRAVEL_AGENT_LOG_FORMAT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("TRAVEL_AGENT_SESSION_BUCKET")
        .env_remove("TRAVEL_AGENT_MEMORY_TABLE")
        .env_remove("TRAVEL_MCP_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", travel_agent_bin()));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = agent_tests::listening_address(&line) {
                let _ = tx.send((url, started.elapsed()));
            }
        }
    });
    let (url, ready_after) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the service did not start: {e}"));
    Service {
        child,
        url,
        ready_after,
    }
}

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({"sub": "bench-user", "iss": ISSUER, "token_use": "access",
                        "client_id": "bench-client", "exp": now + 3600, "iat": now});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".to_owned());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(SIGNING_KEY))
        .unwrap_or_else(|e| panic!("sign: {e}"))
}

async fn jwks_server() -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(|| async { ([("content-type", "application/json")], TEST_JWKS) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/jwks.json")
}

/// One SSE invocation; its latency, or why it failed.
async fn sse_invocation(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let response = client
        .post(format!("{url}/invocations"))
        .bearer_auth(token)
        .json(&json!({"prompt": PROMPT, "session_id": session}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut tail = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    let tail = String::from_utf8_lossy(&tail);
    if !tail.contains("event: stop") {
        return Err(format!("no stop event: {tail}"));
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--serve") {
        agent_tests::serve_bench_model_until_stdin_closes();
        return;
    }
    agent_tests::raise_fd_limit();
    let (mut model, model_url) = agent_tests::spawn_bench_model();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(run(&model_url, quick));
    drop(model.stdin.take());
    let _ = model.wait();
}

async fn run(model_url: &str, quick: bool) {
    let sequential = if quick { 100 } else { 500 };
    let jwks = jwks_server().await;
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("dir: {e}"));
    let token = token();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));

    // Cold start: spawn to `listening on`, five times.
    let mut cold: Vec<Duration> = (0..5)
        .map(|i| {
            let dir = data.path().join(format!("cold-{i}"));
            start_service(model_url, &jwks, &dir).ready_after
        })
        .collect();
    cold.sort();

    // The library directly: the same model server, the same MCP tools, a file store.
    let mcp = agent_mcp::McpServer::stdio("travel", travel_agent_bin(), ["mcp"])
        .connect()
        .await
        .unwrap_or_else(|e| panic!("mcp: {e}"));
    let model = OpenAiCompatible::builder()
        .base_url(model_url)
        .model(agent_tests::MODEL)
        .build()
        .unwrap_or_else(|e| panic!("model: {e}"));
    let agent = Agent::builder()
        .name("travel-agent")
        .model(model)
        .tools(mcp.tools().await.unwrap_or_else(|e| panic!("tools: {e}")))
        .session_store(FileSessionStore::new(data.path().join("library")))
        .memory(MemoryConfig::new(InMemoryMemoryStore::new()))
        // As the service configures it: runs of a session exclude each other across replicas.
        .replica_lease(std::time::Duration::from_secs(300))
        .build()
        .unwrap_or_else(|e| panic!("agent: {e}"));
    // One library invocation, as the service's user makes it.
    let invoke = |session: String| {
        let agent = &agent;
        async move {
            agent
                .session(session)
                .actor("bench-user")
                .invoke(PROMPT)
                .await
                .unwrap_or_else(|e| panic!("invoke: {e}"))
        }
    };
    for i in 0..20 {
        invoke(format!("warm-{i}")).await;
    }
    // CPU: the library alone in this process.
    let cpu = process_cpu_time();
    for i in 0..sequential {
        let r = invoke(format!("lib-cpu-{i}")).await;
        assert_eq!(r.stop_reason, StopReason::EndTurn);
    }
    let library_cpu = (process_cpu_time() - cpu) / sequential;

    // The service: HTTP + token check + SSE. Wall time interleaved with the library's, one
    // invocation each in turn, so drift (disk, page cache) hits both alike.
    let service = start_service(model_url, &jwks, &data.path().join("service"));
    let pid = service.child.id();
    for i in 0..20 {
        sse_invocation(&client, &service.url, &token, &format!("warm-{i}"))
            .await
            .unwrap_or_else(|e| panic!("warm-up: {e}"));
    }
    let mut library_wall = Vec::new();
    let mut service_wall = Vec::new();
    let cpu = cpu_of(pid);
    for i in 0..sequential {
        let started = Instant::now();
        invoke(format!("lib-{i}")).await;
        library_wall.push(started.elapsed());
        service_wall.push(
            sse_invocation(&client, &service.url, &token, &format!("seq-{i}"))
                .await
                .unwrap_or_else(|e| panic!("invocation: {e}")),
        );
    }
    let service_cpu = (cpu_of(pid) - cpu) / sequential;
    library_wall.sort();
    service_wall.sort();
    let (lib50, svc50) = (
        percentile(&library_wall, 0.5),
        percentile(&service_wall, 0.5),
    );
    let (lib99, svc99) = (
        percentile(&library_wall, 0.99),
        percentile(&service_wall, 0.99),
    );

    println!(
        "## travel-agent service vs the library, one at a time ({sequential} invocations each)\n"
    );
    println!("| | library | service | service - library | ratio |");
    println!("|---|---|---|---|---|");
    for (what, l, s) in [
        ("wall time, median", lib50, svc50),
        ("wall time, p99", lib99, svc99),
    ] {
        println!(
            "| {what} | {} | {} | {:+.2} ms | {:.2}x |",
            ms(l),
            ms(s),
            (s.as_secs_f64() - l.as_secs_f64()) * 1000.0,
            s.as_secs_f64() / l.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "| CPU per invocation (the agent's process) | {:.0} us | {:.0} us | {:+.0} us | {:.2}x |",
        library_cpu.as_secs_f64() * 1e6,
        service_cpu.as_secs_f64() * 1e6,
        (service_cpu.as_secs_f64() - library_cpu.as_secs_f64()) * 1e6,
        service_cpu.as_secs_f64() / library_cpu.as_secs_f64().max(1e-9)
    );
    println!(
        "\ncold start, spawn to listening (5 runs): median {}, max {}\n",
        ms(cold[2]),
        ms(cold[4])
    );

    // Concurrent SSE streams, each its own session; then every session is read back.
    println!("## concurrent SSE streams (one invocation per stream)\n");
    println!(
        "| streams | wall | invocations/s | p50 | p99 | failed | sessions not exactly 4 messages | peak RSS - idle RSS per stream |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for streams in [100usize, 1000] {
        let idle = rss_of(pid);
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let peak = peak.clone();
            let sampling = sampling.clone();
            std::thread::spawn(move || {
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak.fetch_max(rss_of(pid), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let started = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let client = client.clone();
                let url = service.url.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    sse_invocation(&client, &url, &token, &format!("c{streams}-{i}")).await
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut failed = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(d)) => latencies.push(d),
                Ok(Err(e)) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("failed: {e}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("task: {e}");
                }
            }
        }
        let wall = started.elapsed();
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = sampler.join();
        latencies.sort();
        // Nothing lost or duplicated: each session holds its prompt, the tool call, the tool
        // result and the answer, once.
        let mut wrong = 0;
        for i in 0..streams {
            let r: Value = client
                .get(format!("{}/sessions/c{streams}-{i}/messages", service.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("read back: {e}"))
                .json()
                .await
                .unwrap_or(Value::Null);
            if r["messages"].as_array().map(Vec::len) != Some(4) {
                wrong += 1;
            }
        }
        let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "| {streams} | {} | {:.0} | {} | {} | {failed} | {wrong} | {:.1} KiB |",
            ms(wall),
            streams as f64 / wall.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            peak.saturating_sub(idle) as f64 / streams as f64 / 1024.0
        );
    }
}
