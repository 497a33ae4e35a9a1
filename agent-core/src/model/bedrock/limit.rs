//! Bounds on what a Bedrock endpoint may send: the SDK reads a reply body whole (`Converse`,
//! `InvokeModel`) and buffers each event-stream frame whole before decoding it, for as many
//! bytes as the peer declares (a frame's length is a `u32`: up to 4 GiB). This interceptor
//! wraps the reply body so that a body beyond its bound, or a frame that declares a length
//! beyond its bound, fails the call before it is buffered.

use std::pin::Pin;
use std::task::{Context, Poll};

use aws_sdk_bedrockruntime::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_bedrockruntime::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_bedrockruntime::error::BoxError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The bounds of one reply, by its kind.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// The most bytes the whole body may have (`None`: unbounded, for event streams whose length
    /// is bounded by time instead).
    body: Option<u64>,
    /// The most bytes one event-stream frame may declare (`None`: not an event stream).
    frame: Option<u32>,
}

/// The interceptor: an event stream (`application/vnd.amazon.eventstream`) gets the frame
/// bound, any other reply (JSON: an answer or an error) the body bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyLimit;

impl Intercept for ReplyLimit {
    fn name(&self) -> &'static str {
        "reply-limit"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        let event_stream = response.status().is_success()
            && response
                .headers()
                .get("content-type")
                .is_some_and(|t| t.starts_with("application/vnd.amazon.eventstream"));
        let limit = if event_stream {
            Bounds {
                body: None,
                frame: Some(super::MAX_FRAME),
            }
        } else {
            Bounds {
                body: Some(super::MAX_REPLY),
                frame: None,
            }
        };
        if let Some(max) = limit.body {
            let declared = response
                .headers()
                .get("content-length")
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > max) {
                return Err(
                    format!("the reply declares {n} bytes, beyond the bound of {max}").into(),
                );
            }
        }
        let body = std::mem::replace(response.body_mut(), SdkBody::taken());
        *response.body_mut() = SdkBody::from_body_1_x(Bounded {
            inner: body,
            limit,
            read: 0,
            prelude: [0; 4],
            have: 0,
            skip: 0,
        });
        Ok(())
    }
}

/// A body that fails once it passes its bounds.
struct Bounded {
    inner: SdkBody,
    limit: Bounds,
    /// Bytes read so far.
    read: u64,
    /// The length field of the frame being read, as far as it has arrived.
    prelude: [u8; 4],
    have: usize,
    /// Bytes of the current frame still to come after its length field.
    skip: u64,
}

impl Bounded {
    /// Follows the frame boundaries through `chunk`; an error names the bound passed.
    fn check(&mut self, chunk: &[u8]) -> Result<(), BoxError> {
        self.read = self.read.saturating_add(chunk.len() as u64);
        if let Some(max) = self.limit.body
            && self.read > max
        {
            return Err(format!("the reply passed the bound of {max} bytes").into());
        }
        let Some(max_frame) = self.limit.frame else {
            return Ok(());
        };
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.skip > 0 {
                let n = rest
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= n as u64;
                rest = &rest[n..];
                continue;
            }
            self.prelude[self.have] = rest[0];
            self.have += 1;
            rest = &rest[1..];
            if self.have == 4 {
                let total = u32::from_be_bytes(self.prelude);
                if total > max_frame {
                    return Err(format!(
                        "an event-stream frame declares {total} bytes, beyond the bound of {max_frame}"
                    )
                    .into());
                }
                self.have = 0;
                self.skip = u64::from(total.saturating_sub(4));
            }
        }
        Ok(())
    }
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(e) = self.check(data)
                {
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(body: Option<u64>, frame: Option<u32>) -> Bounded {
        Bounded {
            inner: SdkBody::empty(),
            limit: Bounds { body, frame },
            read: 0,
            prelude: [0; 4],
            have: 0,
            skip: 0,
        }
    }

    #[test]
    fn frames_are_followed_across_chunks() {
        let mut b = bounded(None, Some(100));
        // A 20-byte frame whose length field is split over two chunks, then a 4 GiB one.
        let mut frame = 20u32.to_be_bytes().to_vec();
        frame.resize(20, 0);
        assert!(b.check(&frame[..2]).is_ok());
        assert!(b.check(&frame[2..]).is_ok());
        assert!(b.check(&frame).is_ok());
        let err = b.check(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(err.to_string().contains("4294967295 bytes"), "{err}");
    }

    #[test]
    fn a_body_beyond_its_bound_fails() {
        let mut b = bounded(Some(10), None);
        assert!(b.check(&[0; 10]).is_ok());
        assert!(b.check(&[0]).is_err());
    }
}
