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
//! | `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` | `otlp` (default) or `none`; `none` turns that signal off (a traces-only backend such as Arize Phoenix answers metrics with 405) |
//! | `OTEL_SDK_DISABLED=true` | export nothing |
//!
//! With no endpoint variable set, nothing is exported and agents keep telemetry disabled. Export
//! runs on the SDK's own threads with bounded queues: it never blocks the agent loop (a full queue
//! drops spans rather than waiting).
//!
//! A failed export is reported through `tracing` at `warn` (target `agent_core::telemetry`):
//! once when a signal starts failing, with the endpoint and the error, and once at `info` when it
//! works again; the failures in between are counted, not repeated. Install a `tracing`
//! subscriber to see them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::metrics::NoopMeterProvider;
use opentelemetry::trace::noop::NoopTracerProvider;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

use super::{Telemetry, mark_global_installed};

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Whether to export at all (`traces || metrics`).
    pub enabled: bool,
    /// Whether spans are exported (`OTEL_TRACES_EXPORTER` is not `none`).
    pub traces: bool,
    /// Whether metrics are exported (`OTEL_METRICS_EXPORTER` is not `none`).
    pub metrics: bool,
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
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (for tests and for configuration systems). An exporter name
    /// other than `otlp` or `none` is an error, not a silent default.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
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
        let configured = !disabled && (base.is_some() || traces.is_some() || metrics.is_some());
        let traces_on = configured && exporter(&non_empty, "OTEL_TRACES_EXPORTER")?;
        let metrics_on = configured && exporter(&non_empty, "OTEL_METRICS_EXPORTER")?;
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
        Ok(Self {
            enabled: traces_on || metrics_on,
            traces: traces_on,
            metrics: metrics_on,
            traces_endpoint: traces.unwrap_or_else(|| format!("{base}/v1/traces")),
            metrics_endpoint: metrics.unwrap_or_else(|| format!("{base}/v1/metrics")),
            traces_headers,
            metrics_headers,
            service_name: non_empty("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| "agent-runtime".to_owned()),
            timeout: millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000),
            metric_interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000),
        })
    }
}

/// Whether `variable` (`OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`) asks for OTLP export:
/// unset or `otlp` is yes, `none` is no, anything else is an error that names it.
fn exporter(
    non_empty: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<bool, TelemetryError> {
    let Some(value) = non_empty(variable) else {
        return Ok(true);
    };
    // A list is allowed by the specification; `none` anywhere in it means none.
    let names: Vec<String> = value
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect();
    if names.iter().any(|n| n == "none") {
        return Ok(false);
    }
    match names.iter().find(|n| n.as_str() != "otlp") {
        None => Ok(true),
        Some(other) => Err(TelemetryError::UnsupportedExporter {
            variable,
            value: other.clone(),
        }),
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
    /// `OTEL_TRACES_EXPORTER` or `OTEL_METRICS_EXPORTER` names an exporter this build lacks.
    #[error("{variable}={value} is not supported: use `otlp` or `none`")]
    UnsupportedExporter {
        /// The variable.
        variable: &'static str,
        /// The exporter it named.
        value: String,
    },
}

/// Keeps export running; flushes and shuts the providers down when dropped (or on
/// [`TelemetryGuard::shutdown`]). Dropping it blocks until the last export finished or timed
/// out, so do it on the way out, not inside a latency-sensitive task.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    telemetry: Telemetry,
    /// Traces', then metrics' export health.
    health: [Arc<ExportHealth>; 2],
}

impl TelemetryGuard {
    /// The instrumentation handle for agents (also their default once this guard exists).
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// Whether anything is exported (traces, metrics or both).
    pub fn is_enabled(&self) -> bool {
        self.tracer_provider.is_some() || self.meter_provider.is_some()
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
        // A failing signal was reported when it started failing; its last export failing at
        // shutdown is the same failure.
        if let Err(e) = self.stop()
            && !self.health.iter().any(|h| h.failing())
        {
            tracing::warn!(target: "agent_core::telemetry", error = %e, "telemetry shutdown");
        }
    }
}

/// Sets up export from the environment (see the module docs).
pub fn init_from_env() -> Result<TelemetryGuard, TelemetryError> {
    init(OtlpConfig::from_env()?)
}

/// Sets up export as configured, installs the global tracer and meter providers, and makes
/// agents built afterwards record to them.
pub fn init(config: OtlpConfig) -> Result<TelemetryGuard, TelemetryError> {
    if !config.enabled {
        return Ok(TelemetryGuard {
            tracer_provider: None,
            meter_provider: None,
            telemetry: Telemetry::disabled(),
            health: [
                ExportHealth::new("traces", &config.traces_endpoint),
                ExportHealth::new("metrics", &config.metrics_endpoint),
            ],
        });
    }
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let traces_health = ExportHealth::new("traces", &config.traces_endpoint);
    let metrics_health = ExportHealth::new("metrics", &config.metrics_endpoint);
    let tracer_provider = if config.traces {
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_endpoint.clone())
            .with_headers(config.traces_headers.clone())
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let spans = Reported {
            inner: spans,
            health: traces_health.clone(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    let meter_provider = if config.metrics {
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.metrics_endpoint.clone())
            .with_headers(config.metrics_headers.clone())
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let metrics = Reported {
            inner: metrics,
            health: metrics_health.clone(),
        };
        let reader = PeriodicReader::builder(metrics)
            .with_interval(config.metric_interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    mark_global_installed();
    let telemetry = match (&tracer_provider, &meter_provider) {
        (Some(t), Some(m)) => Telemetry::new(t, m),
        (Some(t), None) => Telemetry::new(t, &NoopMeterProvider::new()),
        (None, Some(m)) => Telemetry::new(&NoopTracerProvider::new(), m),
        (None, None) => Telemetry::disabled(),
    };
    Ok(TelemetryGuard {
        tracer_provider,
        meter_provider,
        telemetry,
        health: [traces_health, metrics_health],
    })
}

/// An exporter whose failures are reported through `tracing`: once when its signal starts
/// failing, once when it works again.
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    health: Arc<ExportHealth>,
}

/// Whether a signal's exports are failing, shared by its exporter and the guard (which then
/// does not report the same failure again when the last export at shutdown fails too).
#[derive(Debug)]
struct ExportHealth {
    signal: &'static str,
    endpoint: String,
    /// Failed exports since the last success.
    failures: AtomicU64,
}

impl ExportHealth {
    fn new(signal: &'static str, endpoint: &str) -> Arc<Self> {
        Arc::new(Self {
            signal,
            endpoint: endpoint.to_owned(),
            failures: AtomicU64::new(0),
        })
    }

    fn failing(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    fn record(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                let failed = self.failures.swap(0, Ordering::Relaxed);
                if failed > 0 {
                    tracing::info!(
                        target: "agent_core::telemetry",
                        endpoint = %self.endpoint,
                        failed_exports = failed,
                        "OTLP {} export works again",
                        self.signal
                    );
                }
            }
            Err(e) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        target: "agent_core::telemetry",
                        endpoint = %self.endpoint,
                        error = %e,
                        "OTLP {} export failed; later failures are not logged until one \
                         succeeds (OTEL_{}_EXPORTER=none turns this signal off for a backend \
                         that does not take it)",
                        self.signal,
                        self.signal.to_ascii_uppercase(),
                    );
                }
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.health.record(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Reported<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.health.record(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> OtlpConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpConfig::from_lookup(|k| map.get(k).cloned()).expect("valid configuration")
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
    fn each_signal_can_be_turned_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://phoenix:6006");
        let c = config(&[endpoint]);
        assert!(c.enabled && c.traces && c.metrics);
        let c = config(&[endpoint, ("OTEL_METRICS_EXPORTER", "none")]);
        assert!(c.enabled && c.traces && !c.metrics);
        let c = config(&[endpoint, ("OTEL_TRACES_EXPORTER", " None ")]);
        assert!(c.enabled && !c.traces && c.metrics);
        let c = config(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "otlp,none"),
        ]);
        assert!(!c.enabled && !c.traces && !c.metrics);
        let c = config(&[endpoint, ("OTEL_TRACES_EXPORTER", "OTLP")]);
        assert!(c.traces);
    }

    #[test]
    fn an_unknown_exporter_is_an_error_that_names_it() {
        let err = OtlpConfig::from_lookup(|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://x:4318".to_owned()),
            "OTEL_METRICS_EXPORTER" => Some("prometheus".to_owned()),
            _ => None,
        })
        .expect_err("unsupported");
        assert_eq!(
            err.to_string(),
            "OTEL_METRICS_EXPORTER=prometheus is not supported: use `otlp` or `none`"
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
