//! Per-signal export settings and export failures, against a loopback OTLP receiver that plays a
//! traces-only backend (Arize Phoenix answers `POST /v1/metrics` with 405): the failure is
//! reported once through `tracing`, and `OTEL_METRICS_EXPORTER=none` turns metrics off.
//!
//! Its own test binary: it installs a global `tracing` subscriber and the global providers.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::prelude::*;
use agent_core::telemetry::Telemetry;
use agent_core::telemetry::otlp::{self, OtlpConfig};
use agent_tests::{MockVllm, OtlpReceiver, Turn, provider};
use axum::http::StatusCode;

/// Everything logged, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(endpoint: &str, extra: &[(&str, &str)]) -> OtlpConfig {
    let mut vars: HashMap<String, String> = HashMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            endpoint.to_owned(),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL".to_owned(), "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(), "2000".to_owned()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    OtlpConfig::from_lookup(|k| vars.get(k).cloned()).expect("config")
}

async fn one_run(telemetry: Telemetry) {
    let server = MockVllm::start([Turn::text("Sunny.").with_usage(10, 2)])
        .await
        .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .telemetry(telemetry)
        .build()
        .expect("agent");
    agent.session("s").invoke("Lisbon?").await.expect("invoke");
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_metrics_is_reported_once_and_metrics_can_be_turned_off() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // 1. Metrics refused with 405, many times over: one warning that names the signal, the
    // endpoint and the way out; the traces still arrive.
    let phoenix_like = OtlpReceiver::start_with_metrics_status(StatusCode::METHOD_NOT_ALLOWED);
    let guard = otlp::init(config(&phoenix_like.endpoint, &[])).expect("init");
    one_run(guard.telemetry()).await;
    let received = phoenix_like.received.clone();
    eventually("three refused metric exports", || {
        received.lock().unwrap().metric_requests >= 3
    })
    .await;
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("join")
        .ok();
    let text = logs.text();
    assert_eq!(
        text.matches("OTLP metrics export failed").count(),
        1,
        "one warning for {} refused exports:\n{text}",
        received.lock().unwrap().metric_requests
    );
    assert!(text.contains(" WARN "), "{text}");
    let endpoint = format!("endpoint={}/v1/metrics", phoenix_like.endpoint);
    assert!(text.contains(&endpoint), "the endpoint is named: {text}");
    assert!(text.contains("405"), "the status is in the warning: {text}");
    assert!(text.contains("OTEL_METRICS_EXPORTER=none"), "{text}");
    assert!(
        !text.contains("OTLP traces export"),
        "traces were accepted: {text}"
    );
    assert!(
        !text.contains("telemetry shutdown"),
        "the last refused export at shutdown is not reported twice: {text}"
    );
    assert!(!received.lock().unwrap().traces.is_empty());

    // 2. OTEL_METRICS_EXPORTER=none: not one metric request; traces as before.
    let traces_only = OtlpReceiver::start();
    let guard = otlp::init(config(
        &traces_only.endpoint,
        &[("OTEL_METRICS_EXPORTER", "none")],
    ))
    .expect("init");
    assert!(guard.is_enabled());
    one_run(guard.telemetry()).await;
    // Several metric intervals pass.
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("join")
        .expect("shutdown");
    {
        let received = traces_only.received.lock().unwrap();
        assert_eq!(received.metric_requests, 0);
        assert!(!received.traces.is_empty(), "traces are still exported");
    }

    // 3. OTEL_TRACES_EXPORTER=none: metrics only.
    let metrics_only = OtlpReceiver::start();
    let guard = otlp::init(config(
        &metrics_only.endpoint,
        &[("OTEL_TRACES_EXPORTER", "none")],
    ))
    .expect("init");
    one_run(guard.telemetry()).await;
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("join")
        .expect("shutdown");
    let received = metrics_only.received.lock().unwrap();
    assert!(received.traces.is_empty());
    assert!(!received.metrics.is_empty(), "metrics are still exported");
}
