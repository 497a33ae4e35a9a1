//! Errors: HTTP statuses and error bodies classified into [`ModelError`]s.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use serde::Deserialize;
use serde_json::Value;

use super::super::ModelError;

#[derive(Deserialize)]
pub(super) struct WireError {
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) param: Option<Value>,
    #[serde(default)]
    pub(super) code: Option<Value>,
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
}

pub(super) fn transport_error(e: reqwest::Error) -> ModelError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ModelError::Connection {
        message: format!("{what}: {e}"),
        source: crate::error::Cause::new(e),
    }
}

/// The largest whole (non-streamed) response body read.
pub(crate) const MAX_BODY: usize = 32 * 1024 * 1024;
/// The most of an error body read; the rest is not needed to classify it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Reads a body of at most `limit` bytes; a longer one is an invalid reply, found without
/// reading past the limit.
pub(super) async fn read_capped(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ModelError> {
    use futures::StreamExt as _;
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(transport_error)?;
        if body.len() + chunk.len() > limit {
            return Err(ModelError::InvalidReply {
                message: format!("the response body exceeds {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads at most `limit` bytes of a body and drops the rest.
async fn read_prefix(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    use futures::StreamExt as _;
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

pub(super) async fn error_from_response(response: reqwest::Response) -> ModelError {
    let status = response.status().as_u16();
    if (300..400).contains(&status) {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(300)
                    .collect()
            })
            .unwrap_or_else(|| "no Location header".to_owned());
        return ModelError::Redirected { status, location };
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = match read_prefix(response, MAX_ERROR_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ModelError::Connection {
                message: format!("HTTP {status}, body unreadable: {e}"),
                source: crate::error::Cause::new(e),
            };
        }
    };
    #[derive(Deserialize)]
    struct Envelope {
        error: WireError,
    }
    let err = serde_json::from_slice::<Envelope>(&body)
        .map(|e| e.error)
        .or_else(|_| serde_json::from_slice::<WireError>(&body))
        .unwrap_or(WireError {
            message: None,
            param: None,
            code: None,
            kind: None,
        });
    let err = if err.message.is_none() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(500).collect();
        WireError {
            message: Some(if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text
            }),
            ..err
        }
    } else {
        err
    };
    classify(status, &err, retry_after)
}

pub(super) fn classify(status: u16, err: &WireError, retry_after: Option<Duration>) -> ModelError {
    let message = err
        .message
        .clone()
        .unwrap_or_else(|| format!("HTTP {status}"));
    let lower = message.to_ascii_lowercase();
    let overflow = lower.contains("maximum context length")
        || lower.contains("context length")
        || lower.contains("context size")
        || err.param.as_ref().and_then(Value::as_str) == Some("input_tokens")
        || err.code.as_ref().and_then(Value::as_str) == Some("context_length_exceeded")
        || err.kind.as_deref() == Some("exceed_context_size_error");
    match status {
        400 | 413 if overflow => ModelError::ContextOverflow { message },
        429 | 503 => ModelError::Throttled {
            status,
            message,
            retry_after,
        },
        408 | 500..=599 => ModelError::Transient {
            message: format!("HTTP {status}: {message}"),
        },
        _ => ModelError::Fatal {
            status: Some(status),
            message,
        },
    }
}

pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_errors() {
        let e = |m: &str| WireError {
            message: Some(m.into()),
            param: None,
            code: Some(json!(400)),
            kind: None,
        };
        assert!(matches!(
            classify(
                400,
                &e("This model's maximum context length is 32768 tokens."),
                None
            ),
            ModelError::ContextOverflow { .. }
        ));
        // The variant older vLLM releases sent when `max_tokens` was omitted, and llama.cpp's.
        assert!(matches!(
            classify(
                400,
                &e("Input length (40000) exceeds model's maximum context length (32768)."),
                None
            ),
            ModelError::ContextOverflow { .. }
        ));
        let llama = WireError {
            message: Some(
                "the request exceeds the available context size, try increasing it".into(),
            ),
            param: None,
            code: Some(json!(400)),
            kind: Some("exceed_context_size_error".into()),
        };
        assert!(matches!(
            classify(400, &llama, None),
            ModelError::ContextOverflow { .. }
        ));
        assert!(matches!(
            classify(400, &e("bad"), None),
            ModelError::Fatal {
                status: Some(400),
                ..
            }
        ));
        assert!(matches!(
            classify(429, &e("slow"), Some(Duration::from_secs(2))),
            ModelError::Throttled {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(502, &e("gw"), None),
            ModelError::Transient { .. }
        ));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
