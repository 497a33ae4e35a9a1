//! `travel-agent mcp`, the travel MCP server, as a real process reached through agent-mcp: over
//! stdio on the current protocol (booking confirmed through an `input_required` round) and on
//! 2025-11-25 (through an elicitation request), and over streamable HTTP.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_core::async_trait;
use agent_mcp::rmcp::model::{
    CallToolResult, ElicitRequestParams, ElicitResult, ElicitationAction,
};
use agent_mcp::{ElicitationHandler, McpServer};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_travel-agent");

/// Answers every confirmation with `confirm` and remembers the questions.
struct Answer {
    confirm: bool,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
}

#[async_trait]
impl ElicitationHandler for Answer {
    async fn elicit(
        &self,
        request: ElicitRequestParams,
    ) -> Result<ElicitResult, agent_mcp::HandlerError> {
        self.count.fetch_add(1, Ordering::SeqCst);
        if let ElicitRequestParams::FormElicitationParams { message, .. } = request {
            self.asked.lock().unwrap().push(message);
        }
        Ok(ElicitResult::new(ElicitationAction::Accept)
            .with_content(json!({"confirm": self.confirm})))
    }
}

fn answer(confirm: bool) -> (Arc<Answer>, Arc<std::sync::Mutex<Vec<String>>>) {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    (
        Arc::new(Answer {
            confirm,
            asked: asked.clone(),
            count: Arc::default(),
        }),
        asked,
    )
}

fn text(result: &CallToolResult) -> String {
    serde_json::to_value(&result.content)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n")
}

const BOOKING: fn() -> Value = || json!({"from_city": "London", "to_city": "Lisbon", "date": "2026-12-05", "flight_number": "TA999"});

#[tokio::test]
async fn the_tools_answer_from_the_dataset_and_bookings_are_confirmed_first() {
    for legacy in [false, true] {
        let (yes, asked) = answer(true);
        let mut server = McpServer::stdio("travel", BIN, ["mcp"]).elicitation(yes);
        if legacy {
            server = server.protocol_version("2025-11-25").expect("version");
        }
        let client = server.connect().await.expect("connect");
        let mut names: Vec<String> = client
            .tools()
            .await
            .expect("tools")
            .iter()
            .map(|t| t.spec().name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "book_trip",
                "get_weather",
                "search_flights",
                "search_hotels"
            ]
        );
        let weather = client
            .call_tool("get_weather", json!({"city": "Lisboa"}))
            .await
            .expect("call");
        assert_eq!(
            text(&weather),
            "Weather in Lisbon today: sunny, high 21 °C, low 14 °C."
        );
        let hotels = client
            .call_tool("search_hotels", json!({"city": "Porto"}))
            .await
            .expect("call");
        assert!(
            text(&hotels).starts_with("4 hotels in Porto"),
            "{}",
            text(&hotels)
        );
        let unknown = client
            .call_tool("get_weather", json!({"city": "Tokyo"}))
            .await
            .expect("call");
        assert_eq!(unknown.is_error, Some(true));
        // Arguments of the wrong type from a client are an error result, not a crash.
        let wrong_type = client
            .call_tool("get_weather", json!({"city": 42}))
            .await
            .expect("call");
        assert_eq!(wrong_type.is_error, Some(true), "{}", text(&wrong_type));

        let booked = client
            .call_tool("book_trip", BOOKING())
            .await
            .expect("book");
        let booked = text(&booked);
        assert!(
            booked.starts_with(
                "Booked flight TA999 on 2026-12-05 for 116 EUR. Booking reference TRV-"
            ),
            "legacy {legacy}: {booked}"
        );
        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            [
                "Book flight TA999 from London to Lisbon on 2026-12-05, departing 13:15, for 116 EUR?"
            ],
            "legacy {legacy}"
        );
        // A flight that does not exist is refused before anyone is asked.
        let mut wrong = BOOKING();
        wrong["flight_number"] = json!("TA1");
        let refused = client.call_tool("book_trip", wrong).await.expect("call");
        assert_eq!(refused.is_error, Some(true));
    }

    // Declined: nothing is booked.
    let (no, _) = answer(false);
    let client = McpServer::stdio("travel", BIN, ["mcp"])
        .elicitation(no)
        .connect()
        .await
        .expect("connect");
    let declined = client
        .call_tool("book_trip", BOOKING())
        .await
        .expect("book");
    assert_eq!(
        text(&declined),
        "The traveller declined: flight TA999 was not booked."
    );
}

#[tokio::test]
async fn it_serves_streamable_http() {
    let (mut child, url) = start_http();
    let (yes, _) = answer(true);
    let client = McpServer::http("travel", url)
        .elicitation(yes)
        .connect()
        .await
        .expect("connect");
    let flights = client
        .call_tool(
            "search_flights",
            json!({"from_city": "London", "to_city": "Lisbon", "date": "2026-12-05"}),
        )
        .await
        .expect("call");
    assert!(text(&flights).contains("Cheapest: TA999 at 116 EUR"));
    let booked = client
        .call_tool("book_trip", BOOKING())
        .await
        .expect("book");
    assert!(
        text(&booked).contains("Booking reference TRV-0001"),
        "{}",
        text(&booked)
    );
    drop(client);
    // SIGTERM stops it cleanly.
    let child = &mut child.0;
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a process id this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped (a failed assertion leaves nothing running).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `travel-agent mcp --http 127.0.0.1:0`; the child and its URL.
fn start_http() -> (Killed, String) {
    start_http_with(&[])
}

/// [`start_http`] with more arguments.
fn start_http_with(args: &[&str]) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .args(["mcp", "--http", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("[travel-mcp] listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("listening");
    (Killed(child), url)
}

/// The official conformance suite's server scenarios that hold for any server (the others
/// call the suite's own fixture tools, resources and prompts, which a travel server does not
/// have): a peer nobody here wrote.
#[test]
fn the_conformance_suite_s_protocol_scenarios_pass() {
    let cli = std::env::var("MCP_CONFORMANCE").unwrap_or_else(|_| {
        panic!("MCP_CONFORMANCE is not set: run scripts/test.sh, or export MCP_CONFORMANCE=$(scripts/mcp-servers.sh conformance)")
    });
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts");
    let node = Command::new("bash")
        .arg(format!("{scripts}/mcp-servers.sh"))
        .arg("node22")
        .output()
        .expect("node22");
    let node = String::from_utf8_lossy(&node.stdout).trim().to_owned();
    let (_child, url) = start_http();
    for scenario in [
        "server-initialize",
        "server-session-lifecycle",
        "ping",
        "tools-list",
        "server-sse-multiple-streams",
        "dns-rebinding-protection",
    ] {
        let run = Command::new(&node)
            .arg(&cli)
            .args(["server", "--url", &url, "--scenario", scenario])
            .env(
                "NODE_OPTIONS",
                format!("--require \"{scripts}/loopback.cjs\" --no-deprecation"),
            )
            .output()
            .expect("run the suite");
        let stdout = String::from_utf8_lossy(&run.stdout);
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("Passed: "))
            .unwrap_or_else(|| panic!("{scenario}: no summary\n{stdout}"));
        assert!(
            run.status.success() && summary.contains(", 0 failed"),
            "{scenario}: {summary}\n{stdout}"
        );
    }
}

/// In a cluster the server is reached by its Service name: `--allowed-host` admits that `Host`
/// (with any port, or only the one given) and still refuses others (DNS-rebinding protection).
#[tokio::test]
async fn the_http_server_answers_the_hosts_it_is_told_and_no_other() {
    let (_child, url) = start_http_with(&["--allowed-host", "travel-mcp"]);
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "host-check", "version": "0"}}});
    let client = reqwest::Client::new();
    let status_for = |host: &'static str| {
        let request = client
            .post(&url)
            .header("host", host)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        async move { request.send().await.expect("send").status().as_u16() }
    };
    assert_eq!(status_for("travel-mcp:3001").await, 200);
    assert_eq!(status_for("travel-mcp").await, 200);
    assert_eq!(status_for("evil.example:3001").await, 403);
    assert_eq!(
        status_for("localhost").await,
        403,
        "the list replaces the loopback default"
    );
}
