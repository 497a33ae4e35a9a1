//! The macro resolves the renamed crate.

#![allow(clippy::expect_used)]

use renamed_core::greet;
use runtime::tool::{Tool, ToolContext, ToolOutput};

#[tokio::test]
async fn works_with_a_renamed_dependency() {
    assert_eq!(greet.spec().name, "greet");
    let ctx = ToolContext::new("t", "s");
    let out = greet
        .call(serde_json::json!({"name": "Ana"}), ctx)
        .await
        .expect("ok");
    assert_eq!(out, ToolOutput::text("Hello, Ana!"));
}
