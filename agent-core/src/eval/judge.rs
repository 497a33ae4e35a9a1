//! The judged metrics: a model reads the run and answers in JSON; Ragas' pipelines (goal and
//! end state then a verdict; statements then verdicts; generated questions then embeddings),
//! with prompts of our own.
//!
//! Every model call is bounded by [`Judge::timeout`] and tried up to [`Judge::attempts`] times;
//! a reply that does not parse, or breaks the answer's rules, is tried again (at
//! [`Judge::retry_temperature`], with twice the token bound when the reply was cut off at it),
//! and after the last attempt the metric is [`Outcome::Unscored`](super::Outcome::Unscored) with the reason. A judge never guesses.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::report::MetricResult;
use super::runner::Sample;
use crate::message::{ContentBlock, Message};
use crate::model::{Embedder, Model, ModelDescriptor, ModelRequest, ModelStopReason, ToolChoice};
use crate::tool::ToolSpec;

/// Ragas' default number of questions `answer_relevancy` generates.
const DEFAULT_STRICTNESS: usize = 3;

/// A model (and, for `answer_relevancy`, an embedder) that scores runs.
#[derive(Clone)]
pub struct Judge {
    model: Arc<dyn Model>,
    embedder: Option<Arc<dyn Embedder>>,
    timeout: Duration,
    attempts: u32,
    strictness: usize,
    max_tokens: u32,
    retry_temperature: f32,
}

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judge")
            .field("model", &self.model.descriptor())
            .field(
                "embedder",
                &self.embedder.as_ref().map(|e| e.model().to_owned()),
            )
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Judge {
    /// A judge on `model`: 60 s per call, 3 attempts, temperature 0.
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            model,
            embedder: None,
            timeout: Duration::from_secs(60),
            attempts: 3,
            strictness: DEFAULT_STRICTNESS,
            max_tokens: 1024,
            retry_temperature: 0.3,
        }
    }

    /// The embedder `answer_relevancy` compares questions with; without one that metric is
    /// not computed.
    pub fn embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// The bound on each judge call (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many times a judgement is tried before it is unscored (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// How many questions `answer_relevancy` generates (at least 1; Ragas' default 3).
    pub fn strictness(mut self, n: usize) -> Self {
        self.strictness = n.max(1);
        self
    }

    /// The temperature of the attempts after the first (default 0.3; the first is at 0): at
    /// temperature 0 a model repeats the reply that just failed.
    pub fn retry_temperature(mut self, temperature: f32) -> Self {
        self.retry_temperature = if temperature.is_finite() {
            temperature.clamp(0.0, 2.0)
        } else {
            0.0
        };
        self
    }

    /// The bound on each reply's tokens (default 1024); a reply cut off at it is tried again
    /// with twice the bound, up to four times it.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n.max(16);
        self
    }

    /// The judge model's description (recorded in reports).
    pub fn descriptor(&self) -> ModelDescriptor {
        self.model.descriptor()
    }

    /// Whether `answer_relevancy` can be computed.
    pub fn has_embedder(&self) -> bool {
        self.embedder.is_some()
    }

    /// One judgement: the reply as `T`, checked by `check`, within the attempts. `examples`
    /// are worked (input, judgement) pairs shown before the input: small judges follow an
    /// example far better than a description.
    async fn ask<T: DeserializeOwned>(
        &self,
        task: &str,
        examples: &[(&str, Value)],
        input: &str,
        schema: Value,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<T, String> {
        let tool = ToolSpec {
            name: "verdict".into(),
            description: "Your judgement.".into(),
            input_schema: schema,
        };
        let tools = [tool];
        let choice = ToolChoice::Tool("verdict".into());
        let mut system = format!("You are a strict evaluator of an AI assistant's work. {task}\n");
        for (i, (example, judgement)) in examples.iter().enumerate() {
            system.push_str(&format!(
                "\nExample {}.\nInput:\n{example}\nJudgement: {judgement}\n",
                i + 1
            ));
        }
        system.push_str("\nJudge the input you are given in the same way, as one JSON object.");
        let prompt = Message::user(input.to_owned());
        let mut last = String::new();
        let mut max_tokens = self.max_tokens;
        // A reply cut off at the bound is tried again with twice it, up to four times the first.
        let larger = |bound: u32| {
            bound
                .saturating_mul(2)
                .min(self.max_tokens.saturating_mul(4))
        };
        for attempt in 1..=self.attempts {
            let temperature = if attempt == 1 {
                0.0
            } else {
                self.retry_temperature
            };
            let request = ModelRequest::new(vec![&prompt], &tools, &choice)
                .system_prompt(&system)
                .max_tokens(max_tokens)
                .temperature(temperature)
                .structured_output();
            let reply =
                match tokio::time::timeout(self.timeout, self.model.complete(&request)).await {
                    Err(_) => Err(format!("no reply within {:?}", self.timeout)),
                    // Cut off at the bound, whether the provider says so in an error (a
                    // constrained reply that did not close) or in the stop reason: a larger
                    // bound may fix it.
                    Ok(Err(e)) if e.is_truncated_reply() => {
                        max_tokens = larger(max_tokens);
                        Err(format!("the judge failed: {e}"))
                    }
                    Ok(Err(e)) => Err(format!("the judge failed: {e}")),
                    Ok(Ok(response)) if response.stop_reason == ModelStopReason::MaxTokens => {
                        let cut_at = max_tokens;
                        max_tokens = larger(max_tokens);
                        Err(format!("the reply was cut off at {cut_at} tokens"))
                    }
                    Ok(Ok(response)) => reply_value(&response.content)
                        .and_then(|v| {
                            serde_json::from_value::<T>(v)
                                .map_err(|e| format!("the reply does not fit: {e}"))
                        })
                        .and_then(|t| check(&t).map(|()| t)),
                };
            match reply {
                Ok(t) => return Ok(t),
                Err(e) => last = format!("attempt {attempt}: {e}"),
            }
        }
        Err(format!(
            "no valid judgement in {} attempts (last: {last})",
            self.attempts
        ))
    }

    /// `agent_goal_accuracy_with_reference` (`reference` is the desired outcome) or
    /// `agent_goal_accuracy_without_reference` (the goal the judge infers): 1 when the run's
    /// end state reaches it, 0 when not.
    pub async fn goal_accuracy(&self, sample: &Sample, reference: Option<&str>) -> MetricResult {
        let name = if reference.is_some() {
            "agent_goal_accuracy_with_reference"
        } else {
            "agent_goal_accuracy_without_reference"
        };
        let workflow = transcript(&sample.messages);
        let inferred: Result<GoalOutcome, String> = self
            .ask(
                "Read the conversation between a user, an AI assistant and its tools. Write \
                 user_goal: what the user wanted, as one full sentence. Write end_state: what \
                 the user actually got by the end, as one full sentence with the specific facts \
                 the assistant gave (or saying that it gave none).",
                &[(
                    "Conversation:\nUser: Is it windy in Rome?\nAssistant calls tool get_weather \
                     with {\"city\":\"Rome\"}\nTool result: Rome: windy, 14 °C\nAssistant: Yes, it is \
                     windy in Rome today, 14 °C.",
                    json!({"user_goal": "Find out whether it is windy in Rome today.", "end_state": "The assistant told the user that Rome is windy today, at 14 °C."}),
                )],
                &format!("Conversation:\n{workflow}"),
                json!({"type": "object", "properties": {"user_goal": {"type": "string"}, "end_state": {"type": "string"}}, "required": ["user_goal", "end_state"]}),
                |g: &GoalOutcome| {
                    nonempty(&g.end_state, "end_state")?;
                    if reference.is_none() {
                        nonempty(&g.user_goal, "user_goal")?;
                    }
                    Ok(())
                },
            )
            .await;
        let inferred = match inferred {
            Ok(g) => g,
            Err(reason) => return MetricResult::unscored(name, reason),
        };
        let desired = reference.unwrap_or(&inferred.user_goal);
        let verdict: Result<Verdict, String> = self
            .ask(
                "Decide whether the achieved outcome gives the user what the desired outcome \
                 describes: the same facts, nothing contradicting them. The verdict is 1 when it \
                 does, 0 when it does not (wrong or missing facts, or no answer). Give the reason \
                 first.",
                &[
                    (
                        "Desired outcome: The user learns that Rome is windy at 14 °C.\nAchieved \
                         outcome: The assistant told the user that Rome is windy today, at 14 °C.",
                        json!({"reason": "The same facts were given.", "verdict": 1}),
                    ),
                    (
                        "Desired outcome: The user learns that Oslo is snowing at -2 °C.\nAchieved \
                         outcome: The assistant said that Oslo is sunny at 20 °C.",
                        json!({"reason": "The weather given contradicts the desired outcome.", "verdict": 0}),
                    ),
                ],
                &format!(
                    "Desired outcome: {desired}\nAchieved outcome: {}",
                    inferred.end_state
                ),
                verdict_schema(),
                Verdict::check,
            )
            .await;
        match verdict {
            Ok(v) => MetricResult::scored(
                name,
                f64::from(v.verdict.as_u8()),
                format!(
                    "goal: {desired}; end state: {}; {}",
                    inferred.end_state, v.reason
                ),
            ),
            Err(reason) => MetricResult::unscored(name, reason),
        }
    }

    /// `faithfulness`: the share of the answer's statements that the tool results support.
    /// Unscored when the answer makes no statement (Ragas' NaN).
    pub async fn faithfulness(&self, sample: &Sample) -> MetricResult {
        const NAME: &str = "faithfulness";
        let statements: Result<Statements, String> = self
            .ask(
                "Split the assistant's answer into short factual statements, each \
                 understandable on its own (replace pronouns with what they stand for). Use only \
                 what the answer says: not the question, not greetings, not offers of help.",
                &[(
                    "Question: How is the weather in Rome?\nAnswer: It is windy there today, \
                     14 °C. Have a nice trip!",
                    json!({"statements": ["Rome is windy today.", "It is 14 °C in Rome today."]}),
                )],
                &format!("Question: {}\nAnswer: {}", sample.prompt, sample.response),
                json!({"type": "object", "properties": {"statements": {"type": "array", "items": {"type": "string"}}}, "required": ["statements"]}),
                |_| Ok(()),
            )
            .await;
        let statements = match statements {
            Ok(s) => s.statements,
            Err(reason) => return MetricResult::unscored(NAME, reason),
        };
        if statements.is_empty() {
            return MetricResult::unscored(NAME, "the answer makes no statement to check".into());
        }
        let context = sample.contexts.join("\n");
        let list = statements
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {s}", i + 1))
            .collect::<Vec<_>>()
            .join("\n");
        let n = statements.len();
        let verdicts: Result<StatementVerdicts, String> = self
            .ask(
                "For each statement, decide whether the context supports it: verdict 1 when \
                 the context states it or it follows from the context; 0 when the context \
                 contradicts it or does not mention it. One entry per statement, in order, each \
                 with its reason.",
                &[(
                    "Context:\nRome: windy, 14 °C\n\nStatements:\n1. Rome is windy today.\n2. It is \
                     30 °C in Rome.",
                    json!({"statements": [
                        {"statement": "Rome is windy today.", "reason": "The context says windy.", "verdict": 1},
                        {"statement": "It is 30 °C in Rome.", "reason": "The context says 14 °C.", "verdict": 0}
                    ]}),
                )],
                &format!("Context:\n{context}\n\nStatements:\n{list}"),
                json!({"type": "object", "properties": {"statements": {"type": "array", "items": {"type": "object", "properties": {"statement": {"type": "string"}, "reason": {"type": "string"}, "verdict": {"type": "integer", "enum": [0, 1]}}, "required": ["statement", "reason", "verdict"]}}}, "required": ["statements"]}),
                |v: &StatementVerdicts| {
                    if v.statements.len() != n {
                        Err(format!("{} verdicts for {n} statements", v.statements.len()))
                    } else if v.statements.iter().any(|s| !s.verdict.valid()) {
                        Err("a verdict is neither 0 nor 1".into())
                    } else {
                        Ok(())
                    }
                },
            )
            .await;
        match verdicts {
            Ok(v) => {
                let supported = v
                    .statements
                    .iter()
                    .filter(|s| s.verdict.as_u8() == 1)
                    .count();
                let explanation = v
                    .statements
                    .iter()
                    .map(|s| format!("[{}] {} ({})", s.verdict.as_u8(), s.statement, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                MetricResult::scored(
                    NAME,
                    supported as f64 / v.statements.len() as f64,
                    explanation,
                )
            }
            Err(reason) => MetricResult::unscored(NAME, reason),
        }
    }

    /// `answer_relevancy`: the mean cosine similarity between the prompt and questions the
    /// judge writes for the answer; 0 when every generated question is marked noncommittal.
    /// Where Ragas skips an empty question (and scores 0 when all are empty), an empty
    /// question here is a reply that breaks the rules: tried again, then unscored.
    pub async fn answer_relevancy(&self, sample: &Sample) -> MetricResult {
        const NAME: &str = "answer_relevancy";
        let Some(embedder) = &self.embedder else {
            return MetricResult::unscored(NAME, "the judge has no embedder".into());
        };
        let mut questions = Vec::new();
        let mut noncommittal = Vec::new();
        for _ in 0..self.strictness {
            let generated: Result<GeneratedQuestion, String> = self
                .ask(
                    "Write the question the answer responds to. noncommittal is 1 when the \
                     answer is evasive or vague or says it does not know, 0 when it commits to \
                     an answer.",
                    &[
                        (
                            "Answer: Rome is windy today, 14 °C.",
                            json!({"question": "What is the weather in Rome today?", "noncommittal": 0}),
                        ),
                        (
                            "Answer: I'm not sure; please check a weather website.",
                            json!({"question": "What is the weather today?", "noncommittal": 1}),
                        ),
                    ],
                    &format!("Answer: {}", sample.response),
                    json!({"type": "object", "properties": {"question": {"type": "string"}, "noncommittal": {"type": "integer", "enum": [0, 1]}}, "required": ["question", "noncommittal"]}),
                    |g: &GeneratedQuestion| {
                        nonempty(&g.question, "question")?;
                        if g.noncommittal.valid() {
                            Ok(())
                        } else {
                            Err("noncommittal is neither 0 nor 1".into())
                        }
                    },
                )
                .await;
            match generated {
                Ok(g) => {
                    questions.push(g.question);
                    noncommittal.push(g.noncommittal.as_u8() == 1);
                }
                Err(reason) => return MetricResult::unscored(NAME, reason),
            }
        }
        if questions.is_empty() {
            return MetricResult::unscored(NAME, "no question was generated".into());
        }
        let mut texts: Vec<&str> = vec![sample.prompt.as_str()];
        texts.extend(questions.iter().map(String::as_str));
        let vectors = match tokio::time::timeout(self.timeout, embedder.embed(&texts)).await {
            Err(_) => {
                return MetricResult::unscored(
                    NAME,
                    format!("no embeddings within {:?}", self.timeout),
                );
            }
            Ok(Err(e)) => return MetricResult::unscored(NAME, format!("the embedder failed: {e}")),
            Ok(Ok(v)) if v.len() != texts.len() => {
                return MetricResult::unscored(
                    NAME,
                    format!("{} vectors for {} texts", v.len(), texts.len()),
                );
            }
            Ok(Ok(v)) => v,
        };
        let Some((prompt, rest)) = vectors.split_first() else {
            return MetricResult::unscored(NAME, "no vectors".into());
        };
        let mut total = 0.0;
        for v in rest {
            match cosine(&prompt.vector, &v.vector) {
                Some(c) => total += c,
                None => {
                    return MetricResult::unscored(
                        NAME,
                        "vectors of different sizes, or zero".into(),
                    );
                }
            }
        }
        let mean = total / rest.len() as f64;
        let all_noncommittal = noncommittal.iter().all(|n| *n);
        let score = if all_noncommittal { 0.0 } else { mean };
        MetricResult::scored(
            NAME,
            score,
            format!(
                "questions: {}{}",
                questions.join(" | "),
                if all_noncommittal {
                    " (all noncommittal)"
                } else {
                    ""
                }
            ),
        )
    }
}

fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let norm = na.sqrt() * nb.sqrt();
    (norm > 0.0).then(|| dot / norm)
}

fn nonempty(s: &str, field: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err(format!("`{field}` is empty"))
    } else {
        Ok(())
    }
}

/// The JSON value of a reply: the structured tool call's input, or the first JSON object in
/// its text (after a code fence, say).
fn reply_value(content: &[ContentBlock]) -> Result<Value, String> {
    for block in content {
        if let ContentBlock::ToolUse(u) = block {
            return Ok(u.input.clone());
        }
    }
    let text = crate::message::text_of(content);
    let start = text
        .find('{')
        .ok_or_else(|| format!("no JSON object in the reply: {}", clip(&text)))?;
    let end = text
        .rfind('}')
        .filter(|e| *e > start)
        .ok_or_else(|| format!("no JSON object in the reply: {}", clip(&text)))?;
    serde_json::from_str(&text[start..=end])
        .map_err(|e| format!("the reply is not JSON ({e}): {}", clip(&text)))
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The run as a transcript for the judge: who said what, which tools were called with what,
/// and what they returned.
pub(crate) fn transcript(messages: &[Message]) -> String {
    use crate::message::Role;
    let mut out = String::new();
    for m in messages {
        for block in &m.content {
            let line = match (m.role, block) {
                (Role::User, ContentBlock::Text(t)) => format!("User: {t}"),
                (Role::Assistant, ContentBlock::Text(t)) if !t.trim().is_empty() => {
                    format!("Assistant: {t}")
                }
                (_, ContentBlock::ToolUse(u)) => {
                    format!("Assistant calls tool {} with {}", u.name, u.input)
                }
                (_, ContentBlock::ToolResult(r)) => format!("Tool result: {}", r.text()),
                _ => continue,
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct GoalOutcome {
    user_goal: String,
    end_state: String,
}

/// A 0/1 verdict, as a number or a string (small models write either).
#[derive(serde::Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Bit {
    Number(i64),
    Text(BitText),
}

#[derive(serde::Deserialize, Clone, Copy)]
enum BitText {
    #[serde(rename = "0")]
    Zero,
    #[serde(rename = "1")]
    One,
}

impl Bit {
    fn as_u8(self) -> u8 {
        match self {
            Bit::Number(1) | Bit::Text(BitText::One) => 1,
            _ => 0,
        }
    }

    fn valid(self) -> bool {
        matches!(self, Bit::Number(0 | 1) | Bit::Text(_))
    }
}

#[derive(serde::Deserialize)]
struct Verdict {
    #[serde(default)]
    reason: String,
    verdict: Bit,
}

impl Verdict {
    fn check(&self) -> Result<(), String> {
        if self.verdict.valid() {
            Ok(())
        } else {
            Err("the verdict is neither 0 nor 1".into())
        }
    }
}

fn verdict_schema() -> Value {
    json!({"type": "object", "properties": {"reason": {"type": "string"}, "verdict": {"type": "integer", "enum": [0, 1]}}, "required": ["reason", "verdict"]})
}

#[derive(serde::Deserialize)]
struct Statements {
    statements: Vec<String>,
}

#[derive(serde::Deserialize)]
struct StatementVerdict {
    #[serde(default)]
    statement: String,
    #[serde(default)]
    reason: String,
    verdict: Bit,
}

#[derive(serde::Deserialize)]
struct StatementVerdicts {
    statements: Vec<StatementVerdict>,
}

#[derive(serde::Deserialize)]
struct GeneratedQuestion {
    question: String,
    noncommittal: Bit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Outcome;
    use crate::model::ScriptedModel;

    fn sample() -> Sample {
        let mut s = Sample::new("c", "Weather in Lisbon?");
        s.messages = vec![
            Message::user("Weather in Lisbon?"),
            Message::assistant("Sunny, 21 °C."),
        ];
        s.response = "Sunny, 21 °C.".into();
        s.contexts = vec!["Lisbon: sunny, 21 °C".into()];
        s
    }

    #[tokio::test]
    async fn goal_accuracy_records_the_reasoning() {
        let model = Arc::new(ScriptedModel::new([
            ScriptedModel::text(
                "```json\n{\"user_goal\": \"know the weather\", \"end_state\": \"told sunny 21\"}\n```",
            ),
            ScriptedModel::text("{\"reason\": \"the weather was given\", \"verdict\": \"1\"}"),
        ]));
        let judge = Judge::new(model.clone());
        let r = judge.goal_accuracy(&sample(), None).await;
        assert_eq!(r.outcome, Outcome::Value(1.0));
        assert_eq!(r.metric, "agent_goal_accuracy_without_reference");
        let why = r.explanation.unwrap_or_default();
        assert!(
            why.contains("know the weather") && why.contains("the weather was given"),
            "{why}"
        );
        assert_eq!(model.requests().len(), 2);
    }

    #[tokio::test]
    async fn garbage_is_retried_then_unscored() {
        let model = Arc::new(ScriptedModel::new([
            ScriptedModel::text("I think it went well."),
            ScriptedModel::text("{\"reason\": \"x\", \"verdict\": 7}"),
            ScriptedModel::text("{\"user_goal\": \"g\"}"),
        ]));
        let judge = Judge::new(model.clone()).attempts(3);
        let r = judge.goal_accuracy(&sample(), Some("weather given")).await;
        let Outcome::Unscored(reason) = &r.outcome else {
            panic!("scored garbage: {r:?}");
        };
        assert!(reason.contains("3 attempts"), "{reason}");
        assert_eq!(model.requests().len(), 3);
        // A verdict outside 0/1 is not a score either.
        let model = Arc::new(ScriptedModel::new([
            ScriptedModel::text("{\"user_goal\": \"g\", \"end_state\": \"e\"}"),
            ScriptedModel::text("{\"reason\": \"x\", \"verdict\": 7}"),
        ]));
        let r = Judge::new(model)
            .attempts(1)
            .goal_accuracy(&sample(), Some("w"))
            .await;
        assert!(
            matches!(r.outcome, Outcome::Unscored(ref m) if m.contains("neither 0 nor 1")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_retry_is_sampled_and_a_cut_off_reply_gets_a_larger_bound() {
        use crate::model::ModelResponse;
        let cut = ModelResponse::new(
            vec![ContentBlock::Text("{\"statements\": [\"Lisbon is".into())],
            ModelStopReason::MaxTokens,
        );
        let model = Arc::new(ScriptedModel::new([
            cut.clone(),
            ScriptedModel::text("{\"statements\": [\"Lisbon is sunny\"]}"),
            ScriptedModel::text(
                "{\"statements\": [{\"statement\": \"Lisbon is sunny\", \"reason\": \"r\", \"verdict\": 1}]}",
            ),
        ]));
        let r = Judge::new(model.clone()).faithfulness(&sample()).await;
        assert_eq!(r.outcome, Outcome::Value(1.0));
        let asked = model.requests();
        assert_eq!(
            (asked[0].temperature, asked[0].max_tokens),
            (Some(0.0), Some(1024))
        );
        assert_eq!(
            (asked[1].temperature, asked[1].max_tokens),
            (Some(0.3), Some(2048))
        );
        assert_eq!(
            asked[2].temperature,
            Some(0.0),
            "a new judgement starts at 0"
        );
        // A provider's error for a constrained reply cut off at the bound counts the same.
        let model = Arc::new(ScriptedModel::new([]));
        model.push_error(crate::model::ModelError::InvalidReply {
            message: format!("{} (EOF while parsing)", crate::model::TRUNCATED_REPLY),
        });
        model.push([
            ScriptedModel::text("{\"statements\": [\"Lisbon is sunny\"]}"),
            ScriptedModel::text("{\"statements\": [{\"statement\": \"Lisbon is sunny\", \"reason\": \"r\", \"verdict\": 0}]}"),
        ]);
        let r = Judge::new(model.clone()).faithfulness(&sample()).await;
        assert_eq!(r.outcome, Outcome::Value(0.0));
        assert_eq!(model.requests()[1].max_tokens, Some(2048));
        // Never past four times the bound, and still unscored when every reply is cut.
        let model = Arc::new(ScriptedModel::new(vec![cut; 4]));
        let r = Judge::new(model.clone())
            .attempts(4)
            .faithfulness(&sample())
            .await;
        assert!(
            matches!(r.outcome, Outcome::Unscored(ref m) if m.contains("cut off")),
            "{r:?}"
        );
        let bounds: Vec<_> = model.requests().iter().map(|q| q.max_tokens).collect();
        assert_eq!(bounds, [Some(1024), Some(2048), Some(4096), Some(4096)]);
    }

    #[tokio::test]
    async fn faithfulness_counts_supported_statements() {
        let model = Arc::new(ScriptedModel::new([
            ScriptedModel::text("{\"statements\": [\"Lisbon is sunny\", \"It is 30 °C\"]}"),
            ScriptedModel::text(
                "{\"statements\": [{\"statement\": \"Lisbon is sunny\", \"reason\": \"in context\", \"verdict\": 1}, {\"statement\": \"It is 30 °C\", \"reason\": \"context says 21\", \"verdict\": 0}]}",
            ),
        ]));
        let r = Judge::new(model).faithfulness(&sample()).await;
        assert_eq!(r.outcome, Outcome::Value(0.5));
        assert!(
            r.explanation
                .unwrap_or_default()
                .contains("context says 21")
        );
        let none = Arc::new(ScriptedModel::new([ScriptedModel::text(
            "{\"statements\": []}",
        )]));
        let r = Judge::new(none).faithfulness(&sample()).await;
        assert!(matches!(r.outcome, Outcome::Unscored(_)), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_judge_is_bounded() {
        struct Silent;
        impl Model for Silent {
            fn stream(&self, _: &ModelRequest<'_>) -> crate::model::ModelStream {
                Box::pin(futures::stream::pending())
            }
            fn descriptor(&self) -> ModelDescriptor {
                ModelDescriptor::new("test", "silent")
            }
        }
        let judge = Judge::new(Arc::new(Silent))
            .timeout(Duration::from_secs(5))
            .attempts(2);
        let r = judge.faithfulness(&sample()).await;
        assert!(
            matches!(r.outcome, Outcome::Unscored(ref m) if m.contains("no reply within")),
            "{r:?}"
        );
    }
}
