//! Where the model comes from: `OPENAI_BASE_URL`, or a local model started for this run; and the
//! agent built on it.

use agent_core::model::openai::ToolCalling;
use agent_core::prelude::*;

const SYSTEM_PROMPT: &str = "You are a travel assistant. You know only what your tools return: \
today's weather per city (get_weather), direct flights from one city to another on a date \
(search_flights) and hotels per city (search_hotels); book_trip books a flight, only when the \
user asks to book. Call a tool for every fact the user asks about: a question about weather and \
flights needs both tools, one call each, before you answer. Tools take English city names \
(Lisbon, not Lisboa). Then answer briefly, in the user's language, repeating the exact words and \
numbers of the tool results: conditions, temperatures, flight numbers, times and prices. Never \
state weather, flights or prices that no tool returned. If a tool says it has no data, tell the \
user so. If the question needs no tool, answer without one.";

/// The model endpoint of this run.
pub(crate) struct Endpoint {
    base_url: String,
    local: Option<LocalModel>,
}

impl Endpoint {
    /// `OPENAI_BASE_URL` if set, otherwise a local model started now. The error says how to
    /// configure an endpoint.
    pub(crate) fn resolve() -> Result<Self, String> {
        match std::env::var("OPENAI_BASE_URL") {
            Ok(base_url) => Ok(Self {
                base_url,
                local: None,
            }),
            Err(_) => {
                let local = LocalModel::start()?;
                Ok(Self {
                    base_url: local.base_url.clone(),
                    local: Some(local),
                })
            }
        }
    }

    /// The travel agent on this endpoint, with `tools`.
    pub(crate) async fn agent(
        &self,
        tools: Vec<std::sync::Arc<dyn Tool>>,
    ) -> Result<Agent, Box<dyn std::error::Error>> {
        Ok(self.builder(tools).await?.build()?)
    }

    /// The travel agent on this endpoint, before it is built (a service adds its stores).
    pub(crate) async fn builder(
        &self,
        tools: Vec<std::sync::Arc<dyn Tool>>,
    ) -> Result<agent_core::agent::AgentBuilder, Box<dyn std::error::Error>> {
        let model_name = match std::env::var("OPENAI_MODEL") {
            Ok(m) => m,
            Err(_) => discover_model(&self.base_url).await?,
        };
        let mut model = OpenAiCompatible::builder()
            .base_url(&self.base_url)
            .model(&model_name);
        if let Ok(t) = std::env::var("OPENAI_TEMPERATURE") {
            let t: f32 = t
                .trim()
                .parse()
                .map_err(|e| format!("OPENAI_TEMPERATURE=`{t}`: {e}"))?;
            model = model.temperature(t);
        }
        if self.local.is_some() {
            // Small local models only call tools reliably when a grammar constrains their
            // replies; temperature 0 makes runs repeatable.
            model = model
                .tool_calling(ToolCalling::Constrained { parallel: false })
                .temperature(0.0);
        }
        let builder = Agent::builder()
            .name("travel-agent")
            .model(model.build()?)
            .system_prompt(SYSTEM_PROMPT)
            .tools(tools)
            .limits(Limits::default().max_turns(8));
        crate::say(
            tracing::Level::INFO,
            &format!("model `{model_name}` at {}", self.base_url),
        );
        Ok(builder)
    }
}

/// The zero-configuration endpoint: `scripts/local-model.sh` (llama.cpp + Qwen2.5-Coder-1.5B on
/// the CPU), stopped again when the run ends unless `AGENT_KEEP_LOCAL_MODEL=1`.
struct LocalModel {
    base_url: String,
    script: std::path::PathBuf,
}

impl LocalModel {
    fn start() -> Result<Self, String> {
        let script = match std::env::var_os("AGENT_LOCAL_MODEL_SCRIPT") {
            Some(path) => std::path::PathBuf::from(path),
            None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/local-model.sh"),
        };
        if !script.exists() {
            return Err(format!(
                "No model endpoint is configured and the local-model script is not at {}.\n\
                 Set OPENAI_BASE_URL to an OpenAI-compatible server, for example a vLLM server:\n\
                 \n    OPENAI_BASE_URL=http://localhost:8000/v1 cargo run -p travel-agent -- \"A weekend in Lisbon?\"\n\
                 \nOptional: OPENAI_MODEL (default: the first model the server lists), OPENAI_API_KEY,\n\
                 OPENAI_TOOL_CALLING=constrained for a vLLM server started without --enable-auto-tool-choice.",
                script.display()
            ));
        }
        // The script says so itself when this run has to build or download anything.
        eprintln!(
            "[travel-agent] OPENAI_BASE_URL is not set: starting a local model (llama.cpp's \
             llama-server with Qwen2.5-Coder-1.5B-Instruct on the CPU, constrained tool calling)."
        );
        let output = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "the local model did not start ({}); see the messages above",
                output.status
            ));
        }
        let base_url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(Self { base_url, script })
    }
}

impl Drop for LocalModel {
    fn drop(&mut self) {
        if std::env::var("AGENT_KEEP_LOCAL_MODEL").is_ok_and(|v| v == "1") {
            eprintln!(
                "[travel-agent] the local model keeps running at {} (stop: scripts/local-model.sh stop)",
                self.base_url
            );
            return;
        }
        // Best effort: the script stops only the server it started, by its PID.
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .status();
    }
}

async fn discover_model(base_url: &str) -> Result<String, Box<dyn std::error::Error>> {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let body: serde_json::Value = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{url} lists no model; set OPENAI_MODEL").into())
}
