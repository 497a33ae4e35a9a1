//! [`ScriptedModel`]: a model that plays back responses you give it, for unit tests of agents,
//! tools, hooks and conversation managers without a model server. (Integration tests should
//! still talk to a real server; this is for the fast, in-process layer underneath.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::message::{ContentBlock, Message, ToolUse};
use crate::model::{
    Model, ModelDescriptor, ModelError, ModelEvent, ModelRequest, ModelResponse, ModelStopReason,
    ModelStream, ToolChoice,
};

/// What a [`ScriptedModel`] was asked: an owned copy of one [`ModelRequest`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The messages sent, oldest first.
    pub messages: Vec<Message>,
    /// The system prompt sent.
    pub system_prompt: Option<String>,
    /// The names of the tools offered, in order.
    pub tools: Vec<String>,
    /// The tool choice.
    pub tool_choice: ToolChoice,
    /// The call's own temperature, when it set one.
    pub temperature: Option<f32>,
    /// The call's own output bound, when it set one.
    pub max_tokens: Option<u32>,
}

/// A model that answers each call with the next scripted response (or error), and records
/// what it was asked. A call after the script ran out fails with [`ModelError::Fatal`], so a
/// test that makes more calls than it expected fails loudly. Cheap to clone: clones share the
/// script and the record.
///
/// ```
/// use agent_core::model::{ScriptedModel, ModelResponse};
/// use agent_core::prelude::*;
/// use serde_json::json;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let model = ScriptedModel::new([
///     ScriptedModel::tool_call("get_weather", json!({"city": "Lisbon"})),
///     ScriptedModel::text("Sunny."),
/// ]);
/// # let weather = FnTool::new("get_weather", "Weather.", json!({"type": "object"}), |_, _| async { Ok(ToolOutput::text("sunny")) });
/// let agent = Agent::builder().model(model.clone()).tool(weather).build()?;
/// let answer = agent.session("s").invoke("Weather in Lisbon?").await?;
/// assert_eq!(answer.text(), "Sunny.");
/// assert_eq!(model.requests().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ScriptedModel {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    script: Mutex<VecDeque<Result<ModelResponse, ModelError>>>,
    requests: Mutex<Vec<RecordedRequest>>,
    calls: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScriptedModel {
    /// A model that answers with `responses`, in order.
    pub fn new(responses: impl IntoIterator<Item = ModelResponse>) -> Self {
        let model = Self::default();
        model.push(responses);
        model
    }

    /// Appends responses to the script.
    pub fn push(&self, responses: impl IntoIterator<Item = ModelResponse>) {
        lock(&self.inner.script).extend(responses.into_iter().map(Ok));
    }

    /// Appends an error: the call that reaches it fails with `error` (the loop retries what
    /// is retryable, so a transient error is followed by the retry's response).
    pub fn push_error(&self, error: ModelError) {
        lock(&self.inner.script).push_back(Err(error));
    }

    /// A final answer with this text.
    pub fn text(text: impl Into<String>) -> ModelResponse {
        ModelResponse::new(
            vec![ContentBlock::Text(text.into())],
            ModelStopReason::EndTurn,
        )
    }

    /// A call of tool `name` with `input` (ids `call-1`, `call-2`, ... per response).
    pub fn tool_call(name: impl Into<String>, input: serde_json::Value) -> ModelResponse {
        Self::tool_calls([(name.into(), input)])
    }

    /// Several tool calls in one response, run as one batch.
    pub fn tool_calls(
        calls: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> ModelResponse {
        let content = calls
            .into_iter()
            .enumerate()
            .map(|(i, (name, input))| {
                ContentBlock::ToolUse(ToolUse {
                    tool_use_id: format!("call-{}", i + 1),
                    name,
                    input,
                })
            })
            .collect();
        ModelResponse::new(content, ModelStopReason::ToolUse)
    }

    /// What the model was asked so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Responses and errors not played yet.
    pub fn remaining(&self) -> usize {
        lock(&self.inner.script).len()
    }
}

impl Model for ScriptedModel {
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream {
        lock(&self.inner.requests).push(RecordedRequest {
            messages: request.messages.iter().map(|m| (*m).clone()).collect(),
            system_prompt: request.system_prompt.map(str::to_owned),
            tools: request.tools.iter().map(|t| t.name.clone()).collect(),
            tool_choice: request.tool_choice.clone(),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
        });
        let call = {
            let mut calls = lock(&self.inner.calls);
            *calls += 1;
            *calls
        };
        let next = lock(&self.inner.script).pop_front().unwrap_or_else(|| {
            Err(ModelError::Fatal {
                status: None,
                message: format!("the scripted model has no response left for call {call}"),
            })
        });
        let event = next.map(|mut response| {
            // Tool use ids unique across the run, as a real model's are.
            for block in &mut response.content {
                if let ContentBlock::ToolUse(u) = block {
                    u.tool_use_id = format!("{}-{call}", u.tool_use_id);
                }
            }
            ModelEvent::Completed(response)
        });
        Box::pin(futures::stream::once(async move { event }))
    }

    fn descriptor(&self) -> ModelDescriptor {
        ModelDescriptor {
            provider: "scripted".into(),
            model: "scripted".into(),
            ..ModelDescriptor::default()
        }
    }
}
