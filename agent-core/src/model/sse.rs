//! A bounded, linear decoder of server-sent events (`text/event-stream`), for model streams.
//!
//! Bytes are appended once to a buffer and searched for line ends once each: a line that
//! arrives in many chunks is never re-parsed from its start, so decoding is linear in the input.
//! A line longer than the line cap, or an event whose data grows past the event cap, is an error
//! at the moment the cap is passed, so a peer that never sends a newline cannot make the decoder
//! buffer without bound. A UTF-8 byte-order mark at the start is skipped; lines may end with LF
//! or CRLF; comments (`: ping`), `event`, `id` and `retry` fields are ignored; multi-line `data`
//! is joined with `\n`, as the specification says. An incomplete event at the end of the stream
//! is dropped, as the specification says.

/// The longest line accepted (bytes, without its line end).
pub const MAX_LINE: usize = 4 * 1024 * 1024;
/// The most data one event may carry (bytes).
pub const MAX_EVENT: usize = 8 * 1024 * 1024;

/// Why a stream cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line passed the line cap before it ended.
    #[error("a server-sent event line exceeds {limit} bytes")]
    LineTooLong {
        /// The cap.
        limit: usize,
    },
    /// An event's data passed the event cap.
    #[error("a server-sent event exceeds {limit} bytes of data")]
    EventTooLarge {
        /// The cap.
        limit: usize,
    },
    /// An event's data is not UTF-8.
    #[error("a server-sent event's data is not valid UTF-8")]
    InvalidUtf8,
}

/// The decoder. Feed it bytes as they arrive, then take events until it has none.
///
/// The OpenAI-compatible provider decodes its streams with it; a provider for another
/// server-sent-events API can too:
///
/// ```
/// use agent_core::model::sse::SseDecoder;
///
/// let mut decoder = SseDecoder::new();
/// let mut events = Vec::new();
/// for chunk in [&b"\xEF\xBB\xBFdata: {\"a\""[..], b":1}\r\n\r\n: ping\n\ndata: [DONE]\n\n"] {
///     decoder.feed(chunk)?;
///     while let Some(data) = decoder.next_event()? {
///         events.push(data.to_owned());
///     }
/// }
/// assert_eq!(events, ["{\"a\":1}", "[DONE]"]);
/// # Ok::<(), agent_core::model::sse::SseError>(())
/// ```
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes received and not yet consumed start at `start`.
    buf: Vec<u8>,
    start: usize,
    /// `buf[start..scanned]` holds no line end: the next search starts at `scanned`.
    scanned: usize,
    /// The data of the event being assembled (data lines joined with `\n`).
    data: Vec<u8>,
    has_data: bool,
    /// The event handed out last, kept so its text can be borrowed without a copy.
    out: String,
    at_start: bool,
    max_line: usize,
    max_event: usize,
    /// Bytes searched for line ends so far, to show that decoding is linear.
    #[cfg(test)]
    searched: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::with_limits(MAX_LINE, MAX_EVENT)
    }
}

impl SseDecoder {
    /// A decoder with the default caps ([`MAX_LINE`], [`MAX_EVENT`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with its own caps: the longest line and the most data of one event, in bytes.
    pub fn with_limits(max_line: usize, max_event: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            data: Vec::new(),
            has_data: false,
            out: String::new(),
            at_start: true,
            max_line,
            max_event,
            #[cfg(test)]
            searched: 0,
        }
    }

    /// Adds received bytes. Fails when the line in progress passes the line cap.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        // Consumed bytes are dropped before the buffer grows, so it holds at most one partial
        // line plus one chunk.
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.scanned = 0;
            self.start = 0;
        } else if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        if self.at_start {
            // Undecided until three bytes are in: a mark may arrive split across chunks.
            let head = &self.buf[self.start..];
            if head.len() >= 3 || !b"\xEF\xBB\xBF".starts_with(head) {
                self.at_start = false;
                if head.starts_with(b"\xEF\xBB\xBF") {
                    self.start += 3;
                    self.scanned = self.scanned.max(self.start);
                }
            }
        }
        // The line in progress (no line end yet) must stay within the cap.
        #[cfg(test)]
        {
            self.searched += self.buf.len() - self.scanned;
        }
        if !self.buf[self.scanned..].contains(&b'\n') {
            if self.buf.len() - self.start > self.max_line.saturating_add(1) {
                return Err(SseError::LineTooLong {
                    limit: self.max_line,
                });
            }
            self.scanned = self.buf.len();
        }
        Ok(())
    }

    /// The next complete event's data, if one is buffered. The text is valid until the next
    /// call.
    pub fn next_event(&mut self) -> Result<Option<&str>, SseError> {
        if self.at_start {
            return Ok(None);
        }
        loop {
            let found = memchr::memchr(b'\n', &self.buf[self.scanned..]);
            #[cfg(test)]
            {
                self.searched += found.map_or(self.buf.len() - self.scanned, |o| o + 1);
            }
            let Some(offset) = found else {
                self.scanned = self.buf.len();
                if self.buf.len() - self.start > self.max_line.saturating_add(1) {
                    return Err(SseError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                return Ok(None);
            };
            let end = self.scanned + offset;
            let mut line = &self.buf[self.start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.len() > self.max_line {
                return Err(SseError::LineTooLong {
                    limit: self.max_line,
                });
            }
            let dispatch = line.is_empty();
            if !dispatch && !line.starts_with(b":") {
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(colon) => {
                        let value = &line[colon + 1..];
                        (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &b""[..]),
                };
                if field == b"data" {
                    let grown = self.data.len() + value.len() + usize::from(self.has_data);
                    if grown > self.max_event {
                        return Err(SseError::EventTooLarge {
                            limit: self.max_event,
                        });
                    }
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
            }
            self.start = end + 1;
            self.scanned = self.start;
            if dispatch && self.has_data {
                self.has_data = false;
                // The event's bytes move into `out`, reusing both allocations.
                let mut bytes = std::mem::take(&mut self.out).into_bytes();
                bytes.clear();
                std::mem::swap(&mut bytes, &mut self.data);
                self.out = String::from_utf8(bytes).map_err(|e| {
                    self.data = e.into_bytes();
                    self.data.clear();
                    SseError::InvalidUtf8
                })?;
                return Ok(Some(&self.out));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut SseDecoder, input: &[u8], chunk: usize) -> Result<Vec<String>, SseError> {
        let mut out = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            decoder.feed(part)?;
            while let Some(data) = decoder.next_event()? {
                out.push(data.to_owned());
            }
        }
        Ok(out)
    }

    #[test]
    fn decodes_events_split_anywhere() {
        let input = "\u{feff}: ping\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: x\nid: 7\ndata:one\ndata:  two\n\ndata: [DONE]\n\ndata: cut";
        let want = vec!["{\"a\":1}", "one\n two", "[DONE]"];
        for chunk in 1..input.len() {
            let got = all(&mut SseDecoder::default(), input.as_bytes(), chunk).expect("decodes");
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_mark_that_is_not_a_bom_is_kept_and_only_the_first_bom_is_skipped() {
        let got = all(
            &mut SseDecoder::default(),
            "data: \u{feff}x\n\n".as_bytes(),
            1,
        )
        .expect("decodes");
        assert_eq!(got, vec!["\u{feff}x"]);
    }

    #[test]
    fn caps_hold_at_once() {
        let mut d = SseDecoder::with_limits(16, 32);
        assert_eq!(
            all(&mut d, &[b'x'; 100], 7),
            Err(SseError::LineTooLong { limit: 16 })
        );
        let mut d = SseDecoder::with_limits(16, 32);
        let many = "data: 0123456789\n".repeat(4);
        assert_eq!(
            all(&mut d, many.as_bytes(), 5),
            Err(SseError::EventTooLarge { limit: 32 })
        );
        let mut d = SseDecoder::default();
        assert_eq!(
            all(&mut d, b"data: \xff\xfe\n\n", 3),
            Err(SseError::InvalidUtf8)
        );
    }

    #[test]
    fn long_lines_in_small_chunks_are_linear() {
        // 8 MiB of data in 1 KiB chunks: rescanning the line from its start on every chunk
        // would search about 32 GiB.
        let mut d = SseDecoder::with_limits(16 * 1024 * 1024, 16 * 1024 * 1024);
        let mut input = b"data: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 8 * 1024 * 1024));
        input.extend_from_slice(b"\n\n");
        let got = all(&mut d, &input, 1024).expect("decodes");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 8 * 1024 * 1024);
        // Each byte is searched at most twice (once by feed, once by next_event).
        assert!(
            d.searched <= 2 * input.len(),
            "{} for {}",
            d.searched,
            input.len()
        );
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: no panic, the same events as in one piece, and the caps hold.
        #[test]
        fn fuzz_any_bytes_any_chunking(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::u8::ANY,
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b':'),
                    proptest::strategy::Just(b'\r'),
                ],
                0..2048,
            ),
            prefix in proptest::prop_oneof![
                proptest::strategy::Just(&b""[..]),
                proptest::strategy::Just(&b"\xEF\xBB\xBF"[..]),
                proptest::strategy::Just(&b"data: "[..]),
            ],
            chunk in 1usize..64,
        ) {
            let mut bytes = prefix.to_vec();
            bytes.extend(input);
            let whole = all(&mut SseDecoder::with_limits(64, 128), &bytes, bytes.len());
            let cut = all(&mut SseDecoder::with_limits(64, 128), &bytes, chunk);
            match (&whole, &cut) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                // An error may come at another point, but it is the same error.
                (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                (a, b) => proptest::prop_assert!(false, "{a:?} vs {b:?}"),
            }
            if let Ok(events) = cut {
                for e in events {
                    proptest::prop_assert!(e.len() <= 128);
                }
            }
        }
    }
}
