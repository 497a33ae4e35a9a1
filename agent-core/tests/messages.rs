//! Messages round-trip through the Bedrock Converse JSON shape Strands stores.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::history::History;
use agent_core::message::{
    Bytes, ContentBlock, ImageFormat, Message, ReasoningContent, Role, ToolResultContent,
    ToolResultStatus,
};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/strands_messages.json")).expect("fixture is JSON")
}

#[test]
fn strands_fixture_round_trips_exactly() {
    let original = fixture();
    let messages: Vec<Message> = serde_json::from_value(original.clone()).expect("parses");
    assert_eq!(
        serde_json::to_value(&messages).expect("serialises"),
        original
    );
    assert!(
        History::restore(messages).is_ok(),
        "the fixture is a valid history"
    );
}

#[test]
fn fixture_maps_to_typed_blocks() {
    let messages: Vec<Message> = serde_json::from_value(fixture()).expect("parses");
    match &messages[0].content[1] {
        ContentBlock::Image(img) => {
            assert_eq!(img.format, ImageFormat::Png);
            assert_eq!(img.source.bytes, Bytes(b"\x89PNG\r\n\x1a\n".to_vec()));
        }
        other => panic!("image expected, got {other:?}"),
    }
    match &messages[1].content[0] {
        ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(r)) => {
            assert_eq!(r.signature.as_deref(), Some("sig-abc"))
        }
        other => panic!("reasoning expected, got {other:?}"),
    }
    let uses: Vec<_> = messages[1].tool_uses().collect();
    assert_eq!(uses[0].input["days"], 2);
    let results: Vec<_> = messages[2].tool_results().collect();
    assert_eq!(results[0].status, ToolResultStatus::Success);
    assert!(matches!(results[0].content[0], ToolResultContent::Json(_)));
    assert_eq!(results[1].status, ToolResultStatus::Error);
    assert_eq!(messages[3].role, Role::Assistant);
    assert!(messages[3].metadata.is_some());
}

#[test]
fn bare_base64_bytes_are_accepted_and_bad_input_is_an_error() {
    let m: Message = serde_json::from_str(
        r#"{"role":"user","content":[{"image":{"format":"jpeg","source":{"bytes":"AAEC"}}}]}"#,
    )
    .expect("parses");
    match &m.content[0] {
        ContentBlock::Image(img) => assert_eq!(img.source.bytes.0, vec![0, 1, 2]),
        other => panic!("{other:?}"),
    }
    let bad = serde_json::from_str::<Message>(
        r#"{"role":"user","content":[{"image":{"format":"jpeg","source":{"bytes":"%%%"}}}]}"#,
    );
    assert!(bad.is_err());
    let unknown_role =
        serde_json::from_str::<Message>(r#"{"role":"system","content":[{"text":"x"}]}"#);
    assert!(unknown_role.is_err());
    let unknown_block =
        serde_json::from_str::<Message>(r#"{"role":"user","content":[{"video":{}}]}"#);
    assert!(unknown_block.is_err());
}

/// Strands writes prompt-cache points into messages (`{"cachePoint": {"type": "default"}}`): a
/// session holding one loads, and is written back unchanged.
#[test]
fn cache_points_round_trip() {
    let json = serde_json::json!({
        "role": "user",
        "content": [{"text": "Long context..."}, {"cachePoint": {"type": "default"}}]
    });
    let message: Message = serde_json::from_value(json.clone()).expect("a cache point loads");
    assert!(matches!(
        &message.content[1],
        ContentBlock::CachePoint(p) if p.kind == "default"
    ));
    assert_eq!(message.text(), "Long context...");
    assert_eq!(serde_json::to_value(&message).expect("serialises"), json);
}
