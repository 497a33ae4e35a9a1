//! OTLP/HTTP (protobuf) export of traces and metrics, configured from the standard `OTEL_*`
//! variables with one call:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let _telemetry = agent_core::telemetry::otlp::init_from_env()?; // keep it alive; flushes on drop
//! // Agents built from here on record spans and metrics.
//! # Ok(()) }
//! ```
//!
//! | variable | use |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; `/v1/traces` and `/v1/metrics` are appended (Langfuse: `https://<host>/api/public/otel`) |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | full URLs, used as they are |
//! | `OTEL_EXPORTER_OTLP_HEADERS` (+ `_TRACES_HEADERS`, `_METRICS_HEADERS`) | `key=value,key2=value2`, values URL-decoded (Langfuse: `Authorization=Basic%20<base64 pk:sk>`) |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | export timeout in ms (default 10000) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default `agent-runtime`) |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | metric export interval in ms (default 60000) |
//! | `OTEL_SDK_DISABLED=true` | export nothing |
//!
//! With no endpoint variable set, nothing is exported and agents keep telemetry disabled. Export
//! runs on the SDK's own threads with bounded queues: it never blocks the agent loop (a full queue
//! drops spans rather than waiting).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::{Telemetry, mark_global_installed};

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Whether to export at all.
    pub enabled: bool,
    /// Traces URL (with `/v1/traces`).
    pub traces_endpoint: String,
    /// Metrics URL (with `/v1/metrics`).
    pub metrics_endpoint: String,
    /// Headers of trace exports.
    pub traces_headers: HashMap<String, String>,
    /// Headers of metric exports.
    pub metrics_headers: HashMap<String, String>,
    /// `service.name`.
    pub service_name: String,
    /// Bound on one export request.
    pub timeout: Duration,
    /// How often metrics are exported.
    pub metric_interval: Duration,
}

impl OtlpConfig {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (for tests and for configuration systems).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let base = non_empty("OTEL_EXPORTER_OTLP_ENDPOINT");
        let traces = non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let metrics = non_empty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        let disabled =
            non_empty("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let enabled = !disabled && (base.is_some() || traces.is_some() || metrics.is_some());
        let base = base.unwrap_or_else(|| "http://localhost:4318".to_owned());
        let base = base.trim_end_matches('/');
        let general = parse_headers(&non_empty("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default());
        let mut traces_headers = general.clone();
        traces_headers.extend(parse_headers(
            &non_empty("OTEL_EXPORTER_OTLP_TRACES_HEADERS").unwrap_or_default(),
        ));
        let mut metrics_headers = general;
        metrics_headers.extend(parse_headers(
            &non_empty("OTEL_EXPORTER_OTLP_METRICS_HEADERS").unwrap_or_default(),
        ));
        let millis = |k: &str, default: u64| {
            Duration::from_millis(non_empty(k).and_then(|v| v.parse().ok()).unwrap_or(default))
        };
        Self {
            enabled,
            traces_endpoint: traces.unwrap_or_else(|| format!("{base}/v1/traces")),
            metrics_endpoint: metrics.unwrap_or_else(|| format!("{base}/v1/metrics")),
            traces_headers,
            metrics_headers,
            service_name: non_empty("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| "agent-runtime".to_owned()),
            timeout: millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000),
            metric_interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000),
        }
    }
}

/// `key=value,key2=value2` with URL-encoded values; malformed entries are skipped.
fn parse_headers(raw: &str) -> HashMap<String, String> {
    raw.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = percent_decode(k.trim());
            (!k.is_empty()).then(|| (k, percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// An exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// Flushing or shutting down failed.
    #[error("telemetry shutdown failed: {0}")]
    Shutdown(String),
}

/// Keeps export running; flushes and shuts the providers down when dropped (or on
/// [`TelemetryGuard::shutdown`]). Dropping it blocks until the last export finished or timed
/// out, so do it on the way out, not inside a latency-sensitive task.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    telemetry: Telemetry,
}

impl TelemetryGuard {
    /// The instrumentation handle for agents (also their default once this guard exists).
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// Whether anything is exported.
    pub fn is_enabled(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes everything recorded so far.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        if let Some(t) = &self.tracer_provider {
            t.force_flush()
                .map_err(|e| TelemetryError::Shutdown(e.to_string()))?;
        }
        if let Some(m) = &self.meter_provider {
            m.force_flush()
                .map_err(|e| TelemetryError::Shutdown(e.to_string()))?;
        }
        Ok(())
    }

    /// Flushes and stops export.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), TelemetryError> {
        let mut first_error = None;
        if let Some(t) = self.tracer_provider.take()
            && let Err(e) = t.shutdown()
        {
            first_error.get_or_insert(TelemetryError::Shutdown(e.to_string()));
        }
        if let Some(m) = self.meter_provider.take()
            && let Err(e) = m.shutdown()
        {
            first_error.get_or_insert(TelemetryError::Shutdown(e.to_string()));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "telemetry shutdown");
        }
    }
}

/// Sets up export from the environment (see the module docs).
pub fn init_from_env() -> Result<TelemetryGuard, TelemetryError> {
    init(OtlpConfig::from_env())
}

/// Sets up export as configured, installs the global tracer and meter providers, and makes
/// agents built afterwards record to them.
pub fn init(config: OtlpConfig) -> Result<TelemetryGuard, TelemetryError> {
    if !config.enabled {
        return Ok(TelemetryGuard {
            tracer_provider: None,
            meter_provider: None,
            telemetry: Telemetry::disabled(),
        });
    }
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.traces_endpoint.clone())
        .with_headers(config.traces_headers.clone())
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.metrics_endpoint.clone())
        .with_headers(config.metrics_headers.clone())
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let reader = PeriodicReader::builder(metrics)
        .with_interval(config.metric_interval)
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    mark_global_installed();
    let telemetry = Telemetry::new(&tracer_provider, &meter_provider);
    Ok(TelemetryGuard {
        tracer_provider: Some(tracer_provider),
        meter_provider: Some(meter_provider),
        telemetry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> OtlpConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_configured_means_disabled() {
        let c = config(&[]);
        assert!(!c.enabled);
        assert!(
            !config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .enabled
        );
    }

    #[test]
    fn langfuse_style_configuration() {
        let c = config(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://langfuse.example/api/public/otel/",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Basic%20cGstbGYtMTpzay1sZi0y, x-langfuse-ingestion-version=4",
            ),
            ("OTEL_SERVICE_NAME", "travel-agent"),
        ]);
        assert!(c.enabled);
        assert_eq!(
            c.traces_endpoint,
            "https://langfuse.example/api/public/otel/v1/traces"
        );
        assert_eq!(
            c.metrics_endpoint,
            "https://langfuse.example/api/public/otel/v1/metrics"
        );
        assert_eq!(
            c.traces_headers["Authorization"],
            "Basic cGstbGYtMTpzay1sZi0y"
        );
        assert_eq!(c.traces_headers["x-langfuse-ingestion-version"], "4");
        assert_eq!(c.service_name, "travel-agent");
    }

    #[test]
    fn signal_specific_settings_win() {
        let c = config(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/custom/traces",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=2,b=%zz"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        assert!(c.enabled);
        assert_eq!(c.traces_endpoint, "http://collector:4318/custom/traces");
        assert_eq!(c.metrics_endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(c.traces_headers["a"], "2");
        assert_eq!(c.traces_headers["b"], "%zz");
        assert_eq!(c.metrics_headers["a"], "1");
        assert_eq!(c.timeout, Duration::from_millis(2500));
    }
}
