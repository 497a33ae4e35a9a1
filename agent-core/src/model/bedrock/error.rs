//! Bedrock errors as [`ModelError`]s, classified by the service's error code, the same way for
//! every operation (`Converse`, `ConverseStream`, its mid-stream exception events, `InvokeModel`).

use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;

use crate::model::ModelError;

/// The texts of Bedrock's context-window overflow (a `ValidationException`), as Strands matches
/// them, and the stop reason Converse uses for it.
const OVERFLOW: [&str; 5] = [
    "input is too long for requested model",
    "input length and `max_tokens` exceed context limit",
    "too many total text bytes",
    "prompt is too long",
    "model_context_window_exceeded",
];

/// Whether a validation message says the prompt does not fit the model's context window.
pub(super) fn is_overflow(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    OVERFLOW.iter().any(|m| lower.contains(m))
}

/// A service error, by its code and message.
pub(super) fn classify(model_id: &str, code: Option<&str>, message: &str) -> ModelError {
    let message = message.to_owned();
    match code.unwrap_or_default() {
        "ThrottlingException" | "throttlingException" | "ServiceQuotaExceededException" => {
            ModelError::Throttled {
                status: 429,
                message,
                retry_after: None,
            }
        }
        "ServiceUnavailableException" | "serviceUnavailableException" => ModelError::Throttled {
            status: 503,
            message,
            retry_after: None,
        },
        // AWS documents a model that is not ready (an imported or on-demand model being loaded)
        // as retryable: the SDK itself retries it. The loop's backoff does so here instead.
        "ModelNotReadyException" => ModelError::Throttled {
            status: 429,
            message: format!(
                "{model_id} is not ready to serve yet; Bedrock is loading it ({message})"
            ),
            retry_after: None,
        },
        "InternalServerException"
        | "internalServerException"
        | "ModelStreamErrorException"
        | "modelStreamErrorException"
        | "ModelTimeoutException"
        | "modelTimeoutException"
        | "ModelErrorException" => ModelError::Transient { message },
        "AccessDeniedException" => ModelError::Fatal {
            status: Some(403),
            message: format!(
                "access denied to {model_id}: allow bedrock:InvokeModel and \
                 bedrock:InvokeModelWithResponseStream on it for this role (and, for an \
                 inference profile, on the models it routes to), and enable the model in the \
                 account's Bedrock console ({message})"
            ),
        },
        "ResourceNotFoundException" => ModelError::Fatal {
            status: Some(404),
            message: format!(
                "no model {model_id} in this region: check the model id or inference-profile \
                 ARN and AWS_REGION ({message})"
            ),
        },
        "ValidationException" | "validationException" if is_overflow(&message) => {
            ModelError::ContextOverflow { message }
        }
        "ValidationException" | "validationException" => ModelError::Fatal {
            status: Some(400),
            message: format!("Bedrock refused the request for {model_id}: {message}"),
        },
        other => ModelError::Fatal {
            status: None,
            message: if other.is_empty() {
                message
            } else {
                format!("{other}: {message}")
            },
        },
    }
}

/// The HTTP status of a raw reply: an HTTP response's, or 0 for an event of a stream.
pub(super) trait RawStatus {
    fn status(&self) -> u16;
}

impl RawStatus for aws_sdk_bedrockruntime::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

impl RawStatus for aws_smithy_types::event_stream::RawMessage {
    fn status(&self) -> u16 {
        0
    }
}

/// An error without a code, by its HTTP status (0 for an exception event, which has none).
fn by_status(status: u16, message: String) -> ModelError {
    match status {
        429 | 503 => ModelError::Throttled {
            status,
            message,
            retry_after: None,
        },
        408 | 500..=599 => ModelError::Transient {
            message: format!("HTTP {status}: {message}"),
        },
        0 => ModelError::Fatal {
            status: None,
            message,
        },
        _ => ModelError::Fatal {
            status: Some(status),
            message,
        },
    }
}

/// The code of an exception event in a `ConverseStream` reply: the SDK names these by their
/// variant, not in the error metadata.
pub(super) fn stream_code(e: &ConverseStreamOutputError) -> Option<&'static str> {
    Some(match e {
        ConverseStreamOutputError::InternalServerException(_) => "InternalServerException",
        ConverseStreamOutputError::ModelStreamErrorException(_) => "ModelStreamErrorException",
        ConverseStreamOutputError::ValidationException(_) => "ValidationException",
        ConverseStreamOutputError::ThrottlingException(_) => "ThrottlingException",
        ConverseStreamOutputError::ServiceUnavailableException(_) => "ServiceUnavailableException",
        _ => return None,
    })
}

/// A failed call, service errors by their code (the metadata's, or `code_of`'s when the
/// metadata has none), the rest by what failed.
pub(super) fn sdk_error<E, R>(
    model_id: &str,
    what: &str,
    e: SdkError<E, R>,
    code_of: impl Fn(&E) -> Option<&'static str>,
) -> ModelError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: RawStatus + std::fmt::Debug + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&e).to_string();
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status();
            let err = s.into_err();
            let message = err.message().map(str::to_owned).unwrap_or(detail);
            match err.code().or_else(|| code_of(&err)) {
                Some(code) => classify(model_id, Some(code), &message),
                // No code Bedrock defines (a proxy or gateway in between, say): by the status,
                // as the OpenAI provider does.
                None => by_status(status, message),
            }
        }
        SdkError::ConstructionFailure(_) => {
            ModelError::Config(format!("cannot build the Bedrock request: {detail}"))
        }
        SdkError::TimeoutError(_) => ModelError::Transient {
            message: format!("{what} timed out: {detail}"),
        },
        other => ModelError::Connection {
            message: format!("{what} failed: {detail}"),
            source: crate::error::Cause::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_what_the_loop_does() {
        let c = |code, msg| classify("m", Some(code), msg);
        assert!(matches!(
            c("ThrottlingException", "slow down"),
            ModelError::Throttled { status: 429, .. }
        ));
        assert!(matches!(
            c("serviceUnavailableException", "x"),
            ModelError::Throttled { status: 503, .. }
        ));
        assert!(matches!(
            c("modelStreamErrorException", "x"),
            ModelError::Transient { .. }
        ));
        assert!(matches!(
            c(
                "ValidationException",
                "Input is too long for requested model."
            ),
            ModelError::ContextOverflow { .. }
        ));
        assert!(matches!(
            c("ValidationException", "messages: bad role"),
            ModelError::Fatal {
                status: Some(400),
                ..
            }
        ));
        let denied = c("AccessDeniedException", "no");
        assert!(!denied.is_retryable());
        assert!(denied.to_string().contains("bedrock:InvokeModel"));
        assert!(c("ModelNotReadyException", "loading").is_retryable());
    }
}
