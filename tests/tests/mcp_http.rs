//! agent-mcp over streamable HTTP against the reference server
//! `@modelcontextprotocol/server-everything` (npm, pinned; `MCP_EVERYTHING`), started by each
//! test on a free 127.0.0.1 port (`scripts/loopback.cjs` keeps it off other interfaces) and
//! stopped when the test ends. Covers every tool it offers to a client with sampling,
//! elicitation and roots, its resources and prompts, and a server restart under a session.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::async_trait;
use agent_core::message::{ToolResultContent, ToolResultStatus};
use agent_core::tool::{Tool, ToolContext, ToolOutput};
use agent_mcp::rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};
use agent_mcp::{ElicitationHandler, McpServer, ModelSampling};
use agent_tests::{MockVllm, Turn, provider};
use serde_json::{Value, json};

/// server-everything in streamable HTTP mode on 127.0.0.1.
struct EverythingHttp {
    child: tokio::process::Child,
    port: u16,
}

impl EverythingHttp {
    async fn start_on(port: u16) -> Self {
        let entry = std::env::var("MCP_EVERYTHING").unwrap_or_else(|_| {
            panic!("MCP_EVERYTHING is not set: run scripts/test.sh, or export MCP_EVERYTHING=$(scripts/mcp-servers.sh)")
        });
        let preload = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/loopback.cjs");
        let child = tokio::process::Command::new("node")
            .args(["--require", preload, &entry, "streamableHttp"])
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "server-everything did not listen on 127.0.0.1:{port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, port }
    }

    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(port).await
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    async fn stop(mut self) -> u16 {
        self.child.kill().await.expect("kill");
        self.port
    }
}

/// Fills the form with defaults and a name; accepts URL requests; remembers what it saw.
#[derive(Default)]
struct FormFiller {
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl ElicitationHandler for FormFiller {
    async fn elicit(
        &self,
        request: ElicitRequestParams,
    ) -> Result<ElicitResult, agent_mcp::HandlerError> {
        match request {
            ElicitRequestParams::FormElicitationParams {
                message,
                requested_schema,
                ..
            } => {
                self.seen.lock().unwrap().push(format!("form: {message}"));
                let schema = serde_json::to_value(&requested_schema).unwrap();
                let mut content = serde_json::Map::new();
                for (k, v) in schema["properties"].as_object().unwrap() {
                    if let Some(d) = v.get("default") {
                        content.insert(k.clone(), d.clone());
                    }
                }
                content.insert("name".into(), json!("Ada Lovelace"));
                Ok(ElicitResult::new(ElicitationAction::Accept)
                    .with_content(Value::Object(content)))
            }
            ElicitRequestParams::UrlElicitationParams { url, .. } => {
                self.seen.lock().unwrap().push(format!("url: {url}"));
                Ok(ElicitResult::new(ElicitationAction::Accept))
            }
            _ => Ok(ElicitResult::new(ElicitationAction::Decline)),
        }
    }
}

fn text(out: &ToolOutput) -> String {
    out.content
        .iter()
        .filter_map(|c| match c {
            ToolResultContent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn call(tools: &[Arc<dyn Tool>], name: &str, args: Value) -> ToolOutput {
    let tool = tools
        .iter()
        .find(|t| t.spec().name == name)
        .unwrap_or_else(|| panic!("no tool {name}"));
    tool.call(args, ToolContext::new("t", "s"))
        .await
        .unwrap_or_else(|e| panic!("{name} failed: {e}"))
}

#[tokio::test]
async fn every_tool_resource_and_prompt_over_streamable_http() {
    let server = EverythingHttp::start().await;
    let model = MockVllm::start([Turn::text("Sampled: the sky is blue.")])
        .await
        .expect("model server");
    let elicitation = Arc::new(FormFiller::default());
    let client = McpServer::http("everything", server.url())
        .header("X-Request-Source", "agent-tests")
        .sampling(Arc::new(ModelSampling::new(Arc::new(provider(&model)))))
        .elicitation(elicitation.clone())
        .root("file:///srv/travel", "travel data")
        .call_timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("connect over HTTP");
    assert_eq!(client.protocol_version().as_deref(), Some("2025-11-25"));

    // The capability-dependent tools are registered once the session is initialised.
    let expected = [
        "echo",
        "get-annotated-message",
        "get-env",
        "get-resource-links",
        "get-resource-reference",
        "get-roots-list",
        "get-structured-content",
        "get-sum",
        "get-tiny-image",
        "gzip-file-as-resource",
        "simulate-research-query",
        "toggle-simulated-logging",
        "toggle-subscriber-updates",
        "trigger-elicitation-request",
        "trigger-long-running-operation",
        "trigger-sampling-request",
        "trigger-url-elicitation",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let tools = loop {
        let tools = client.tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.iter().map(|t| t.spec().name).collect();
        names.sort();
        if names == expected {
            break tools;
        }
        assert!(Instant::now() < deadline, "tools offered: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(
        text(&call(&tools, "echo", json!({"message": "over http"})).await),
        "Echo: over http"
    );
    assert!(text(&call(&tools, "get-sum", json!({"a": 2, "b": 40})).await).contains("is 42"));
    let structured = call(
        &tools,
        "get-structured-content",
        json!({"location": "Chicago"}),
    )
    .await;
    assert!(
        matches!(&structured.content[0], ToolResultContent::Json(v) if v["temperature"].is_number())
    );
    let image = call(&tools, "get-tiny-image", json!({})).await;
    assert!(
        image
            .content
            .iter()
            .any(|c| matches!(c, ToolResultContent::Image(_)))
    );
    let links = text(&call(&tools, "get-resource-links", json!({"count": 2})).await);
    assert_eq!(links.matches("[resource link ").count(), 2, "{links}");
    let reference = text(&call(&tools, "get-resource-reference", json!({"resourceId": 3})).await);
    assert!(
        reference.contains("[resource demo://resource/dynamic/text/3]"),
        "{reference}"
    );
    let annotated = call(
        &tools,
        "get-annotated-message",
        json!({"messageType": "error", "includeImage": true}),
    )
    .await;
    assert!(
        annotated
            .content
            .iter()
            .any(|c| matches!(c, ToolResultContent::Image(_)))
    );
    assert!(text(&call(&tools, "get-env", json!({})).await).contains("PORT"));
    let gz = text(
        &call(
            &tools,
            "gzip-file-as-resource",
            json!({"name": "hello.txt.gz", "data": "data:text/plain;base64,aGVsbG8gd29ybGQ=", "outputType": "resource"}),
        )
        .await,
    );
    assert!(gz.contains("hello.txt.gz") && gz.contains("binary"), "{gz}");
    for toggle in ["toggle-simulated-logging", "toggle-subscriber-updates"] {
        let out = call(&tools, toggle, json!({})).await;
        assert_eq!(out.status, ToolResultStatus::Success);
        assert!(!text(&out).is_empty());
    }
    let roots = text(&call(&tools, "get-roots-list", json!({})).await);
    assert!(roots.contains("file:///srv/travel"), "{roots}");
    let elicited = text(&call(&tools, "trigger-elicitation-request", json!({})).await);
    assert!(elicited.contains("Name: Ada Lovelace"), "{elicited}");
    let url = text(
        &call(
            &tools,
            "trigger-url-elicitation",
            json!({"url": "https://example.com/consent"}),
        )
        .await,
    );
    assert!(url.contains("completed the URL elicitation"), "{url}");
    assert_eq!(
        elicitation.seen.lock().unwrap().len(),
        2,
        "{:?}",
        elicitation.seen.lock().unwrap()
    );
    // Sampling goes to the agent-core model (the test model server).
    let sampled = text(
        &call(
            &tools,
            "trigger-sampling-request",
            json!({"prompt": "What colour is the sky?", "maxTokens": 50}),
        )
        .await,
    );
    assert!(sampled.contains("Sampled: the sky is blue."), "{sampled}");
    let sent = &model.received()[0].body;
    assert!(
        sent["messages"]
            .to_string()
            .contains("What colour is the sky?"),
        "{sent}"
    );
    let long = call(
        &tools,
        "trigger-long-running-operation",
        json!({"duration": 0.3, "steps": 3}),
    )
    .await;
    assert!(text(&long).contains("completed"), "{}", text(&long));

    // A task-only tool (the tasks extension is not supported): a clear error, no hang.
    let task_only = tools
        .iter()
        .find(|t| t.spec().name == "simulate-research-query")
        .unwrap()
        .call(json!({"topic": "tides"}), ToolContext::new("t", "s"))
        .await;
    match task_only {
        Err(e) => assert!(e.to_string().contains("simulate-research-query"), "{e}"),
        Ok(out) => assert_eq!(out.status, ToolResultStatus::Error, "{}", text(&out)),
    }

    // Resources.
    let resources = client.list_resources().await.expect("resources/list");
    assert!(resources.len() >= 7, "{resources:?}");
    let templates = client
        .list_resource_templates()
        .await
        .expect("resources/templates/list");
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template.contains("dynamic/text"))
    );
    let read = client
        .read_resource("demo://resource/dynamic/text/7")
        .await
        .expect("resources/read");
    assert!(serde_json::to_string(&read.contents).unwrap().contains("7"));
    let missing = client.read_resource("demo://nothing/here").await;
    assert!(missing.is_err(), "{missing:?}");

    // Prompts.
    let prompts = client.list_prompts().await.expect("prompts/list");
    let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert!(
        names.contains(&"simple-prompt") && names.contains(&"args-prompt"),
        "{names:?}"
    );
    let prompt = client
        .get_prompt("args-prompt", json!({"city": "Lisbon", "state": "Lisboa"}))
        .await
        .expect("prompts/get");
    assert!(
        serde_json::to_string(&prompt.messages)
            .unwrap()
            .contains("Lisbon")
    );
    let bad = client.get_prompt("args-prompt", json!({})).await;
    assert!(
        bad.is_err(),
        "a prompt without its required argument: {bad:?}"
    );
}

#[tokio::test]
async fn a_restarted_http_server_is_reached_again() {
    let server = EverythingHttp::start().await;
    let client = McpServer::http("everything", server.url())
        .call_timeout(Duration::from_secs(15))
        .connect()
        .await
        .expect("connect");
    let tools = client.tools().await.expect("tools");
    assert_eq!(
        text(&call(&tools, "echo", json!({"message": "one"})).await),
        "Echo: one"
    );

    // The server restarts: its sessions are gone.
    let port = server.stop().await;
    let down = tools
        .iter()
        .find(|t| t.spec().name == "echo")
        .unwrap()
        .call(json!({"message": "down"}), ToolContext::new("t", "s"))
        .await;
    let down = down.expect_err("a call while the server is down must fail");
    assert!(down.to_string().contains("could not be reached"), "{down}");
    let server = EverythingHttp::start_on(port).await;
    let started = Instant::now();
    let again = text(&call(&tools, "echo", json!({"message": "two"})).await);
    assert_eq!(again, "Echo: two");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(client.list_prompts().await.is_ok());

    // A restart between two calls: server-everything answers the forgotten session with a
    // 400 that names no request, so the call times out; the client then finds the session
    // dead (a ping) and the following calls start a new one.
    let port = server.stop().await;
    let server = EverythingHttp::start_on(port).await;
    let client = McpServer::http("everything", format!("http://127.0.0.1:{port}/mcp"))
        .call_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    let tools = client.tools().await.expect("tools");
    let port = server.stop().await;
    let _server = EverythingHttp::start_on(port).await;
    let echo = tools.iter().find(|t| t.spec().name == "echo").unwrap();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    loop {
        match echo
            .call(json!({"message": "three"}), ToolContext::new("t", "s"))
            .await
        {
            Ok(out) => {
                assert_eq!(text(&out), "Echo: three");
                break;
            }
            Err(e) => outcomes.push(e.to_string()),
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{outcomes:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(client.connections() >= 2, "{outcomes:?}");
}
