//! The server-sent-events decoder against `eventsource-stream` (what the provider used before),
//! decoding the same recorded vLLM streams in the same run.
//!
//! Streams: a 1,000-token answer and a tool call in vLLM's chunk format (as the test server
//! renders it), delivered one event per read and in 16 KiB reads; and one 1 MiB line delivered in
//! 1 KiB reads, the shape that made the old parser re-read a line from its start on every chunk.
//! Reported: nanoseconds per input byte for each decoder and their ratio.
//!
//! Run: `cargo run --release -p agent-tests --bin sse_bench`.

use std::time::{Duration, Instant};

use agent_core::model::sse::SseDecoder;
use agent_tests::{Turn, render_stream};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

/// The recorded stream: an answer of `tokens` streamed tokens, then a tool call.
fn recorded(tokens: usize) -> Vec<u8> {
    let words: Vec<String> = (0..tokens).map(|i| format!("w{i} ")).collect();
    let mut out = render_stream(
        &Turn::text(words.concat()).with_usage(900, tokens as u64),
        "chatcmpl-rec",
        true,
    )
    .to_vec();
    out.extend_from_slice(&render_stream(
        &Turn::tool_call(
            "search_flights",
            json!({"from_city": "Lisbon", "to_city": "Porto", "date": "2026-12-01"}),
        ),
        "chatcmpl-rec2",
        true,
    ));
    out
}

/// Splits after every blank line (one event per read), or into fixed-size reads.
fn chunks(stream: &[u8], size: Option<usize>) -> Vec<Bytes> {
    match size {
        Some(n) => stream.chunks(n).map(Bytes::copy_from_slice).collect(),
        None => {
            let mut out = Vec::new();
            let mut start = 0;
            for i in 1..stream.len() {
                if stream[i] == b'\n' && stream[i - 1] == b'\n' {
                    out.push(Bytes::copy_from_slice(&stream[start..=i]));
                    start = i + 1;
                }
            }
            if start < stream.len() {
                out.push(Bytes::copy_from_slice(&stream[start..]));
            }
            out
        }
    }
}

fn ours(chunks: &[Bytes]) -> (usize, usize) {
    let mut decoder = SseDecoder::new();
    let (mut events, mut bytes) = (0, 0);
    for chunk in chunks {
        decoder
            .feed(chunk)
            .unwrap_or_else(|e| panic!("decode: {e}"));
        while let Some(data) = decoder
            .next_event()
            .unwrap_or_else(|e| panic!("decode: {e}"))
        {
            events += 1;
            bytes += data.len();
        }
    }
    (events, bytes)
}

fn theirs(chunks: &[Bytes]) -> (usize, usize) {
    use eventsource_stream::Eventsource;
    let stream = futures::stream::iter(chunks.iter().cloned().map(Ok::<_, std::io::Error>));
    futures::executor::block_on(async {
        let mut events = stream.eventsource();
        let (mut n, mut bytes) = (0, 0);
        while let Some(event) = events.next().await {
            let event = event.unwrap_or_else(|e| panic!("decode: {e}"));
            n += 1;
            bytes += event.data.len();
        }
        (n, bytes)
    })
}

/// The least time of `rounds` runs of `f`, per input byte, in nanoseconds.
fn per_byte(input: usize, rounds: usize, f: impl Fn() -> (usize, usize)) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        std::hint::black_box(f());
        best = best.min(started.elapsed());
    }
    best.as_nanos() as f64 / input as f64
}

fn main() {
    let stream = recorded(1000);
    let long_line = {
        let mut s = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        s.extend(std::iter::repeat_n(b'x', 1 << 20));
        s.extend_from_slice(b"\"}}]}\n\ndata: [DONE]\n\n");
        s
    };
    let cases: [(&str, &[u8], Option<usize>, usize); 3] = [
        (
            "recorded vLLM stream, one event per read",
            &stream,
            None,
            200,
        ),
        (
            "recorded vLLM stream, 16 KiB reads",
            &stream,
            Some(16 * 1024),
            200,
        ),
        ("one 1 MiB line, 1 KiB reads", &long_line, Some(1024), 3),
    ];
    println!(
        "\nSSE decoding: agent-core's decoder against eventsource-stream 0.2, same input, same run (best of N)"
    );
    println!(
        "{:<44} {:>10} {:>16} {:>16} {:>8} {:>9}",
        "input", "bytes", "eventsource ns/B", "agent-core ns/B", "ratio", "speed-up"
    );
    for (name, input, size, rounds) in cases {
        let chunks = chunks(input, size);
        assert_eq!(ours(&chunks), theirs(&chunks), "both decode {name} alike");
        let t = per_byte(input.len(), rounds, || theirs(&chunks));
        let o = per_byte(input.len(), rounds, || ours(&chunks));
        println!(
            "{name:<44} {:>10} {t:>16.2} {o:>16.2} {:>7.4}x {:>8.0}x",
            input.len(),
            o / t,
            t / o
        );
    }
}
