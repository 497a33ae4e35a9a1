//! Where the model comes from: `OPENAI_BASE_URL`, or a local model started for this run; and the
//! agent built on it.

use agent_core::model::Fallback;
use agent_core::model::bedrock::{BedrockConverse, PromptCache};
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

/// The model endpoint of this run: an OpenAI-compatible server (vLLM; optionally with Bedrock as
/// the fallback), or Bedrock itself.
pub(crate) enum Endpoint {
    /// `OPENAI_BASE_URL`, or the local model started for this run (`local`).
    OpenAi {
        base_url: String,
        local: Option<LocalModel>,
    },
    /// `MODEL_PROVIDER=bedrock`: Bedrock's Converse API, model `BEDROCK_MODEL_ID`.
    Bedrock { model_id: String },
}

impl Endpoint {
    /// `MODEL_PROVIDER=bedrock` with `BEDROCK_MODEL_ID`; otherwise `OPENAI_BASE_URL` if set,
    /// otherwise a local model started now. The error says how to configure an endpoint.
    pub(crate) fn resolve() -> Result<Self, String> {
        match std::env::var("MODEL_PROVIDER")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            None | Some("" | "openai" | "vllm") => {}
            Some("bedrock") => {
                let model_id = std::env::var("BEDROCK_MODEL_ID").map_err(|_| {
                    "MODEL_PROVIDER=bedrock needs BEDROCK_MODEL_ID: a model id such as \
                     amazon.nova-lite-v1:0, or an inference-profile id or ARN (credentials and \
                     region come from the standard AWS chain: AWS_REGION, AWS_PROFILE, the pod's \
                     role)"
                        .to_owned()
                })?;
                return Ok(Self::Bedrock { model_id });
            }
            Some(other) => {
                return Err(format!(
                    "MODEL_PROVIDER=`{other}`: use openai (an OpenAI-compatible server such as \
                     vLLM, the default) or bedrock"
                ));
            }
        }
        match std::env::var("OPENAI_BASE_URL") {
            Ok(base_url) => Ok(Self::OpenAi {
                base_url,
                local: None,
            }),
            Err(_) => {
                let local = LocalModel::start()?;
                Ok(Self::OpenAi {
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
        let builder = Agent::builder()
            .name("travel-agent")
            .system_prompt(SYSTEM_PROMPT)
            .tools(tools)
            .limits(Limits::default().max_turns(8));
        match self {
            Self::Bedrock { model_id } => {
                crate::say(
                    tracing::Level::INFO,
                    &format!("model `{model_id}` on Amazon Bedrock (Converse)"),
                );
                Ok(builder.model(bedrock(model_id).await?))
            }
            Self::OpenAi { base_url, local } => {
                let model_name = match std::env::var("OPENAI_MODEL") {
                    Ok(m) => m,
                    Err(_) => discover_model(base_url).await?,
                };
                let mut model = OpenAiCompatible::builder()
                    .base_url(base_url)
                    .model(&model_name);
                if let Ok(t) = std::env::var("OPENAI_TEMPERATURE") {
                    let t: f32 = t
                        .trim()
                        .parse()
                        .map_err(|e| format!("OPENAI_TEMPERATURE=`{t}`: {e}"))?;
                    model = model.temperature(t);
                }
                if local.is_some() {
                    // Small local models only call tools reliably when a grammar constrains
                    // their replies; temperature 0 makes runs repeatable.
                    model = model
                        .tool_calling(ToolCalling::Constrained { parallel: false })
                        .temperature(0.0);
                }
                let model = model.build()?;
                // A CPU model reads a long conversation slowly: the final answer after a tool
                // loop gets more than the default 30 s (the invocation's own limit still bounds
                // it).
                let builder = if local.is_some() {
                    builder.final_answer_timeout(Some(std::time::Duration::from_secs(90)))
                } else {
                    builder
                };
                crate::say(
                    tracing::Level::INFO,
                    &format!("model `{model_name}` at {base_url}"),
                );
                // Bedrock as the fallback while the self-hosted endpoint is throttled or down.
                match std::env::var("BEDROCK_FALLBACK_MODEL_ID") {
                    Ok(id) if !id.trim().is_empty() => {
                        crate::say(
                            tracing::Level::INFO,
                            &format!("fallback: model `{id}` on Amazon Bedrock"),
                        );
                        Ok(builder.model(Fallback::new(model, bedrock(&id).await?)))
                    }
                    _ => Ok(builder.model(model)),
                }
            }
        }
    }
}

impl Endpoint {
    /// The model that judges `eval --judge`: `EVAL_JUDGE_BASE_URL` (with `EVAL_JUDGE_MODEL`, or
    /// the first model it lists) if set, otherwise this endpoint's model; at temperature 0.
    pub(crate) async fn judge_model(
        &self,
    ) -> Result<std::sync::Arc<dyn Model>, Box<dyn std::error::Error>> {
        let base_url = match (std::env::var("EVAL_JUDGE_BASE_URL"), self) {
            (Ok(url), _) => url,
            (Err(_), Self::OpenAi { base_url, .. }) => base_url.clone(),
            (Err(_), Self::Bedrock { model_id }) => {
                let id = std::env::var("EVAL_JUDGE_MODEL").unwrap_or_else(|_| model_id.clone());
                return Ok(std::sync::Arc::new(bedrock(&id).await?));
            }
        };
        let model = match std::env::var("EVAL_JUDGE_MODEL") {
            Ok(m) => m,
            Err(_) => discover_model(&base_url).await?,
        };
        crate::say(
            tracing::Level::INFO,
            &format!("judge: model `{model}` at {base_url}"),
        );
        Ok(std::sync::Arc::new(
            OpenAiCompatible::builder()
                .base_url(&base_url)
                .model(&model)
                .temperature(0.0)
                .build()?,
        ))
    }
}

/// The Bedrock Converse provider for `model_id`, with the standard AWS configuration.
async fn bedrock(model_id: &str) -> Result<BedrockConverse, Box<dyn std::error::Error>> {
    let config = aws_config::load_from_env().await;
    if config.region().is_none() {
        return Err("Bedrock needs a region: set AWS_REGION (e.g. us-east-1)".into());
    }
    let mut model =
        BedrockConverse::builder(aws_sdk_bedrockruntime::Client::new(&config)).model_id(model_id);
    if let Ok(t) = std::env::var("BEDROCK_TEMPERATURE") {
        let t: f32 = t
            .trim()
            .parse()
            .map_err(|e| format!("BEDROCK_TEMPERATURE=`{t}`: {e}"))?;
        model = model.temperature(t);
    }
    if std::env::var("BEDROCK_PROMPT_CACHE").is_ok_and(|v| v == "1") {
        model = model.prompt_cache(PromptCache::automatic());
    }
    Ok(model.build()?)
}

/// The zero-configuration endpoint: `scripts/local-model.sh` (llama.cpp + Qwen2.5-Coder-1.5B on
/// the CPU), stopped again when the run ends unless `AGENT_KEEP_LOCAL_MODEL=1`.
pub(crate) struct LocalModel {
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
