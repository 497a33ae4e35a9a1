//! `GET /metrics`: the replica's invocation counts in the Prometheus text format (version
//! 0.0.4), for KEDA's Prometheus scaler (`sum(travel_agent_invocations_in_flight)`) and for
//! dashboards. The model calls, tokens and tool calls themselves go out over OTLP (agent-core's
//! GenAI metrics); these are the service's own.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Service;

/// Why an invocation was refused admission.
#[derive(Clone, Copy)]
pub(super) enum Refused {
    /// Every slot of the replica was taken (503).
    Busy,
    /// The user had as many invocations running as one user may (429).
    UserBusy,
    /// The replica was draining (503).
    Draining,
}

/// The service's counters.
#[derive(Default)]
pub(super) struct Counts {
    admitted: AtomicU64,
    refused: [AtomicU64; 3],
}

impl Counts {
    pub(super) fn admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One metric family: its help line, type line and samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

pub(super) async fn render(State(service): State<Arc<Service>>) -> Response {
    let counts = &service.counts;
    let refused = |why: Refused| counts.refused[why as usize].load(Ordering::Relaxed);
    let mut out = String::with_capacity(1024);
    family(
        &mut out,
        "travel_agent_invocations_in_flight",
        "gauge",
        "Invocations running on this replica.",
        &[("", service.in_flight() as u64)],
    );
    family(
        &mut out,
        "travel_agent_invocation_slots",
        "gauge",
        "Invocations this replica runs at once (--max-concurrent).",
        &[("", service.args.max_concurrent as u64)],
    );
    family(
        &mut out,
        "travel_agent_draining",
        "gauge",
        "1 once the replica has been told to stop and takes no new invocations.",
        &[("", u64::from(service.draining.load(Ordering::SeqCst)))],
    );
    family(
        &mut out,
        "travel_agent_invocations_admitted_total",
        "counter",
        "Invocations admitted (each runs to its end, or to the drain's cancellation).",
        &[("", counts.admitted.load(Ordering::Relaxed))],
    );
    family(
        &mut out,
        "travel_agent_invocations_refused_total",
        "counter",
        "Invocations refused admission, by reason.",
        &[
            ("{reason=\"busy\"}", refused(Refused::Busy)),
            ("{reason=\"user_busy\"}", refused(Refused::UserBusy)),
            ("{reason=\"draining\"}", refused(Refused::Draining)),
        ],
    );
    if let Some(memory) = service.agent.memory() {
        let stats = memory.stats();
        family(
            &mut out,
            "travel_agent_memory_extractions_pending",
            "gauge",
            "Finished invocations waiting to be mined for long-term memory, or being mined.",
            &[("", memory.pending_extractions() as u64)],
        );
        family(
            &mut out,
            "travel_agent_memory_extractions_total",
            "counter",
            "Memory extraction model calls, by outcome (one call may mine several invocations).",
            &[
                ("{outcome=\"done\"}", stats.extractions),
                ("{outcome=\"failed\"}", stats.failed),
            ],
        );
        family(
            &mut out,
            "travel_agent_memory_invocations_total",
            "counter",
            "Finished invocations for memory extraction: mined, or skipped because the queue was full.",
            &[
                ("{result=\"mined\"}", stats.invocations),
                ("{result=\"skipped\"}", stats.skipped),
            ],
        );
        family(
            &mut out,
            "travel_agent_memory_records_total",
            "counter",
            "Memory candidates the extractions wrote or refused.",
            &[
                ("{result=\"written\"}", stats.written),
                ("{result=\"refused\"}", stats.refused),
            ],
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
