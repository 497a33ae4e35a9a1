//! Conversation messages in the Bedrock Converse JSON shape that Strands stores.
//!
//! A [`Message`] serialises exactly as Strands persists it, for example
//! `{"role":"assistant","content":[{"text":"..."},{"toolUse":{"toolUseId":"t1","name":"f","input":{}}}]}`,
//! so histories move between a Rust agent and a Python Strands agent unchanged. Binary payloads
//! (images, documents, redacted reasoning) serialise in Strands' session encoding
//! `{"__bytes_encoded__": true, "data": "<base64>"}`; a plain base64 string is accepted on input.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Who wrote a message. Tool results travel in user messages, as in Bedrock Converse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user, or the runtime answering tool calls on the user's side.
    User,
    /// What the model said: text, reasoning and tool calls.
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its content blocks, in order.
    pub content: Vec<ContentBlock>,
    /// Optional metadata (Strands stores usage and metrics here); never sent to a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: Role, content: Vec<ContentBlock>) -> Self {
        Self {
            role,
            content,
            metadata: None,
        }
    }

    /// A user message holding one text block.
    pub fn user(text: impl Into<String>) -> Self {
        Self::new(Role::User, vec![ContentBlock::Text(text.into())])
    }

    /// An assistant message holding one text block.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::new(Role::Assistant, vec![ContentBlock::Text(text.into())])
    }

    /// The concatenation of the message's text blocks.
    pub fn text(&self) -> String {
        text_of(&self.content)
    }

    /// The tool uses of this message, in order.
    pub fn tool_uses(&self) -> impl Iterator<Item = &ToolUse> {
        tool_uses(&self.content)
    }

    /// The tool results of this message, in order.
    pub fn tool_results(&self) -> impl Iterator<Item = &ToolResult> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolResult(r) => Some(r),
            _ => None,
        })
    }

    /// Whether this is a user message that carries no tool result (a prompt).
    pub fn is_prompt(&self) -> bool {
        self.role == Role::User && self.tool_results().next().is_none()
    }
}

/// The concatenation of the text blocks among `content` (a message's, or a model response's).
pub(crate) fn text_of(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// The tool uses among `content`, in order (a message's, or a model response's before it is one).
pub fn tool_uses(content: &[ContentBlock]) -> impl Iterator<Item = &ToolUse> {
    content.iter().filter_map(|b| match b {
        ContentBlock::ToolUse(u) => Some(u),
        _ => None,
    })
}

/// One block of message content. Serialised as a single-key object, as in Bedrock Converse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ContentBlock {
    /// Plain text: `{"text": "..."}`.
    Text(String),
    /// A tool call made by the model: `{"toolUse": {...}}`.
    ToolUse(ToolUse),
    /// The answer to a tool call: `{"toolResult": {...}}`.
    ToolResult(ToolResult),
    /// Model reasoning: `{"reasoningContent": {...}}`.
    ReasoningContent(ReasoningContent),
    /// An image: `{"image": {"format": "png", "source": {"bytes": ...}}}`.
    Image(Image),
    /// A document: `{"document": {"format": "pdf", "name": "...", "source": {"bytes": ...}}}`.
    Document(Document),
    /// A prompt-cache point: `{"cachePoint": {"type": "default"}}`. The conversation up to here
    /// may be cached by providers that support it (Bedrock); others ignore it.
    CachePoint(CachePoint),
}

/// A prompt-cache point, as Bedrock Converse and Strands write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePoint {
    /// The kind of cache point; `default` is the only one Bedrock defines.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Default for CachePoint {
    fn default() -> Self {
        Self {
            kind: "default".into(),
        }
    }
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolUse {
    /// The id the provider gave the call; echoed unchanged in the result.
    pub tool_use_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments. An object when the model produced valid JSON; when it did not, the raw
    /// argument text as a JSON string, which the executor answers with an error result.
    pub input: Value,
}

/// Whether a tool call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolResultStatus {
    /// The tool ran and returned its result.
    Success,
    /// The call failed; the content says why, in words the model can act on.
    Error,
}

/// The answer to one tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolResult {
    /// The id of the [`ToolUse`] this answers.
    pub tool_use_id: String,
    /// Success or error.
    pub status: ToolResultStatus,
    /// The result's content.
    pub content: Vec<ToolResultContent>,
}

impl ToolResult {
    /// A successful result with one text block.
    pub fn success(tool_use_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            tool_use_id: tool_use_id.into(),
            status: ToolResultStatus::Success,
            content: vec![ToolResultContent::Text(text.into())],
        }
    }

    /// An error result with one text block.
    pub fn error(tool_use_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            tool_use_id: tool_use_id.into(),
            status: ToolResultStatus::Error,
            content: vec![ToolResultContent::Text(text.into())],
        }
    }

    /// The concatenation of the result's text blocks, with JSON blocks rendered as JSON.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.content {
            match c {
                ToolResultContent::Text(t) => out.push_str(t),
                ToolResultContent::Json(v) => out.push_str(&v.to_string()),
                ToolResultContent::Image(_) | ToolResultContent::Document(_) => {}
            }
        }
        out
    }
}

/// One block of a tool result's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ToolResultContent {
    /// `{"text": "..."}`.
    Text(String),
    /// `{"json": {...}}`.
    Json(Value),
    /// `{"image": {...}}`.
    Image(Image),
    /// `{"document": {...}}`.
    Document(Document),
}

/// Reasoning produced by a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ReasoningContent {
    /// `{"reasoningText": {"text": "...", "signature": "..."}}`.
    ReasoningText(ReasoningText),
    /// `{"redactedContent": <bytes>}`: reasoning the provider returned encrypted.
    RedactedContent(Bytes),
}

/// Reasoning text with its optional provider signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningText {
    /// The reasoning text.
    pub text: String,
    /// The provider's signature over it, to be sent back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// An image in a message or a tool result: its format and where its bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// `png`, `jpeg`, `gif` or `webp`.
    pub format: ImageFormat,
    /// Where its bytes are.
    pub source: MediaSource,
}

/// Image formats of Bedrock Converse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// GIF.
    Gif,
    /// WebP.
    Webp,
}

impl ImageFormat {
    /// The MIME type of the format.
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }
}

/// A document (PDF, spreadsheet, text, ...) in a message or tool result: its format, a name
/// the model sees, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// `pdf`, `csv`, `doc`, `docx`, `xls`, `xlsx`, `html`, `txt` or `md`.
    pub format: String,
    /// A name for the document.
    pub name: String,
    /// Where its bytes are.
    pub source: MediaSource,
}

/// The source of an image or document: its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaSource {
    /// The raw bytes.
    pub bytes: Bytes,
}

/// Binary data, serialised as Strands does in session files:
/// `{"__bytes_encoded__": true, "data": "<base64>"}`. A bare base64 string is accepted too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("__bytes_encoded__", &true)?;
        map.serialize_entry(
            "data",
            &base64::engine::general_purpose::STANDARD.encode(&self.0),
        )?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Plain(String),
            Encoded {
                #[serde(rename = "__bytes_encoded__")]
                _marker: bool,
                data: String,
            },
        }
        let text = match Repr::deserialize(deserializer)? {
            Repr::Plain(s) => s,
            Repr::Encoded { data, .. } => data,
        };
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64 bytes: {e}")))
    }
}
