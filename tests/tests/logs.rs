//! The library's `tracing` output as a service sees it. Its own test binary: it installs the
//! global subscriber (a scoped one races with other tests' threads over callsite interest).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::prelude::*;
use agent_tests::{MockVllm, Turn, provider_builder};
use serde_json::json;

/// The library's log lines during a run carry the invocation's request id and session.
#[tokio::test]
async fn log_lines_during_a_run_carry_the_request_id() {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let server = MockVllm::start([Turn::tool_call("noisy", json!({})), Turn::text("done")])
        .await
        .expect("server");
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    let agent = Agent::builder()
        .telemetry(agent_core::telemetry::Telemetry::new(&provider, &meters))
        .model(provider_builder(&server).build().expect("model"))
        .tool(FnTool::new(
            "noisy",
            "Logs a warning.",
            json!({"type": "object"}),
            |_, _| async {
                tracing::warn!("the noisy tool ran");
                Ok(ToolOutput::text("ok"))
            },
        ))
        .build()
        .expect("agent");
    agent
        .session("logged")
        .request_id("req-7")
        .invoke("go")
        .await
        .expect("invoke");
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("the noisy tool ran"))
        .unwrap_or_else(|| panic!("no log line: {text}"));
    assert!(line.contains("request_id=\"req-7\""), "{line}");
    assert!(line.contains("session_id=logged"), "{line}");
    // And the trace of the run, as the trace backend has it.
    let spans = exporter.get_finished_spans().expect("spans");
    let invoke = spans
        .iter()
        .find(|s| s.name.starts_with("invoke_agent"))
        .expect("invoke_agent");
    let trace_id = invoke.span_context.trace_id().to_string();
    let span_id = invoke.span_context.span_id().to_string();
    assert!(line.contains(&format!("trace_id={trace_id}")), "{line}");
    assert!(line.contains(&format!("span_id={span_id}")), "{line}");
}
