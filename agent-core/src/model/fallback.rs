//! [`Fallback`]: a model that uses a second model while the first is throttled or down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Model, ModelDescriptor, ModelError, ModelRequest, ModelStream};

/// Two models as one: calls go to the primary (say a self-hosted vLLM) and, when it is
/// throttled or unreachable, to the fallback (say Bedrock); after such a failure the primary is
/// left alone for a cool-down (default 30 s), so a run does not pay for a dead endpoint on every
/// turn.
///
/// What counts as an outage: [`ModelError::Throttled`], [`ModelError::Transient`] and
/// [`ModelError::Connection`]. A failure before the primary's first event switches the same
/// call to the fallback; one after it (a stream cut halfway) ends the call with the error, the
/// loop retries it, and the retry goes to the fallback. Other errors (a context overflow, a
/// refused request) are the caller's to handle and pass through unchanged.
///
/// Costs: the fallback's request is prepared together with the primary's (a provider encodes
/// the request before its stream starts, and the request is borrowed only for that call), so a
/// call pays for encoding it twice, and sends it only when needed. Telemetry's chat span names
/// the primary as the provider; `gen_ai.response.model` names the model that answered when the
/// provider reports it (Bedrock does).
///
/// ```
/// # use agent_core::model::{Fallback, Model};
/// # fn demo(vllm: impl Model, bedrock: impl Model) {
/// let model = Fallback::new(vllm, bedrock);
/// # let _ = model; }
/// ```
#[derive(Debug)]
pub struct Fallback<P, S> {
    primary: P,
    fallback: S,
    cool_down: Duration,
    /// Until when the primary is left alone.
    down_until: Arc<Mutex<Option<Instant>>>,
}

impl<P: Model, S: Model> Fallback<P, S> {
    /// `primary`, then `fallback` while the primary is out.
    pub fn new(primary: P, fallback: S) -> Self {
        Self {
            primary,
            fallback,
            cool_down: Duration::from_secs(30),
            down_until: Arc::new(Mutex::new(None)),
        }
    }

    /// How long the primary is left alone after an outage (default 30 s; zero retries it on
    /// every call).
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    fn primary_down(&self) -> bool {
        let mut until = self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }
}

fn is_outage(e: &ModelError) -> bool {
    matches!(
        e,
        ModelError::Throttled { .. } | ModelError::Transient { .. } | ModelError::Connection { .. }
    )
}

/// Marks the primary down for `cool_down` from now.
fn mark_down(down_until: &Mutex<Option<Instant>>, cool_down: Duration, error: &ModelError) {
    tracing::warn!(error = %error, "the primary model is out; using the fallback model for {cool_down:?}");
    *down_until
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + cool_down);
}

enum State {
    Start {
        primary: ModelStream,
        fallback: ModelStream,
    },
    Primary(ModelStream),
    Fallback(ModelStream),
}

impl<P: Model, S: Model> Model for Fallback<P, S> {
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream {
        if self.primary_down() {
            return self.fallback.stream(request);
        }
        let state = State::Start {
            primary: self.primary.stream(request),
            fallback: self.fallback.stream(request),
        };
        let down_until = self.down_until.clone();
        let cool_down = self.cool_down;
        Box::pin(futures::stream::unfold(state, move |state| {
            let down_until = down_until.clone();
            async move {
                match state {
                    State::Start {
                        mut primary,
                        mut fallback,
                    } => match primary.next().await {
                        Some(Err(e)) if is_outage(&e) => {
                            mark_down(&down_until, cool_down, &e);
                            let item = fallback.next().await?;
                            Some((item, State::Fallback(fallback)))
                        }
                        Some(item) => Some((item, State::Primary(primary))),
                        None => None,
                    },
                    State::Primary(mut primary) => {
                        let item = primary.next().await?;
                        if let Err(e) = &item
                            && is_outage(e)
                        {
                            mark_down(&down_until, cool_down, e);
                        }
                        Some((item, State::Primary(primary)))
                    }
                    State::Fallback(mut fallback) => {
                        let item = fallback.next().await?;
                        Some((item, State::Fallback(fallback)))
                    }
                }
            }
        }))
    }

    /// The primary's descriptor (telemetry's `gen_ai.response.model` names the model that
    /// answered, when the provider reports it).
    fn descriptor(&self) -> ModelDescriptor {
        self.primary.descriptor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::model::{ModelEvent, ModelResponse, ModelStopReason, ToolChoice, Usage};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A model that answers `text`, or fails with its errors first; counts the calls it serves.
    struct Scripted {
        errors: Mutex<Vec<ModelError>>,
        text: &'static str,
        served: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn new(text: &'static str, errors: Vec<ModelError>) -> (Self, Arc<AtomicUsize>) {
            let served = Arc::new(AtomicUsize::new(0));
            (
                Self {
                    errors: Mutex::new(errors),
                    text,
                    served: served.clone(),
                },
                served,
            )
        }
    }

    impl Model for Scripted {
        fn stream(&self, _request: &ModelRequest<'_>) -> ModelStream {
            let error = {
                let mut errors = self.errors.lock().unwrap();
                (!errors.is_empty()).then(|| errors.remove(0))
            };
            let served = self.served.clone();
            let text = self.text;
            Box::pin(futures::stream::once(async move {
                served.fetch_add(1, Ordering::SeqCst);
                match error {
                    Some(e) => Err(e),
                    None => Ok(ModelEvent::Completed(ModelResponse {
                        content: vec![crate::message::ContentBlock::Text(text.into())],
                        stop_reason: ModelStopReason::EndTurn,
                        finish_reason: None,
                        usage: Usage::default(),
                        response_id: None,
                        response_model: None,
                    })),
                }
            }))
        }

        fn descriptor(&self) -> ModelDescriptor {
            ModelDescriptor::new("test", self.text)
        }
    }

    fn throttled() -> ModelError {
        ModelError::Throttled {
            status: 429,
            message: "busy".into(),
            retry_after: None,
        }
    }

    async fn answer(model: &impl Model) -> Result<String, ModelError> {
        let prompt = Message::user("hi");
        let response = model
            .complete(&ModelRequest::new(vec![&prompt], &[], &ToolChoice::Auto))
            .await?;
        Ok(crate::message::Message::new(crate::message::Role::Assistant, response.content).text())
    }

    #[tokio::test]
    async fn an_outage_switches_the_call_and_the_cool_down_keeps_it_switched() {
        let (primary, primary_served) = Scripted::new("vllm", vec![throttled()]);
        let (fallback, fallback_served) = Scripted::new("bedrock", vec![]);
        let model = Fallback::new(primary, fallback).cool_down(Duration::from_millis(200));
        assert_eq!(answer(&model).await.unwrap(), "bedrock");
        // Within the cool-down the primary is not asked.
        assert_eq!(answer(&model).await.unwrap(), "bedrock");
        assert_eq!(primary_served.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(answer(&model).await.unwrap(), "vllm");
        assert_eq!(fallback_served.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn errors_that_are_not_outages_pass_through() {
        let overflow = ModelError::ContextOverflow {
            message: "too long".into(),
        };
        let (primary, _) = Scripted::new("vllm", vec![overflow.clone()]);
        let (fallback, fallback_served) = Scripted::new("bedrock", vec![]);
        let model = Fallback::new(primary, fallback);
        assert_eq!(answer(&model).await.unwrap_err(), overflow);
        assert_eq!(fallback_served.load(Ordering::SeqCst), 0);
        assert_eq!(answer(&model).await.unwrap(), "vllm");
    }
}
