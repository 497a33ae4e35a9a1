//! The accept loop: HTTP/1.1 on hyper, with a bound on every wait a client controls.
//!
//! `axum::serve` gives hyper no timer, so a client that sends half a request head, or opens a
//! connection and sends nothing, holds it (and its buffers) for ever; and hyper waits without end
//! for a client that stops reading a response. Here:
//! - the request head must arrive within `stall` (hyper's `header_read_timeout`, which also
//!   bounds an idle keep-alive connection);
//! - a response the client leaves unread for `stall` closes the connection (a write timeout on
//!   the socket; the run behind an SSE stream goes on, see `serve::invocation`);
//! - the whole body must arrive within `stall` too (where the handler reads it, 408);
//! - at most `connections` connections are open at once; beyond that, new ones wait in the
//!   listen backlog;
//! - `TCP_NODELAY`: events are small writes, and without it each one can wait for the client's
//!   delayed ACK (40 ms on Linux).

use std::time::Duration;

use agent_core::prelude::CancellationToken;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long open connections get to end after `stop` before they are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The bounds of one listener.
pub(crate) struct Bounds {
    /// How long a client may take to send a request head, or leave a response unread.
    pub(crate) stall: Duration,
    /// Connections open at once.
    pub(crate) connections: usize,
}

/// Serves `router` on `listener` until `stop`, then lets open connections end (at most
/// [`CLOSE_GRACE`]).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    stop: CancellationToken,
) {
    let Bounds { stall, connections } = bounds;
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(router);
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(connections));
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let mut io = tokio_io_timeout::TimeoutStream::new(tcp);
        io.set_write_timeout(Some(stall));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(stall)
            .serve_connection(TokioIo::new(Box::pin(io)), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            target: "travel_agent::lifecycle",
            "connections still open {} s after the drain; the process exits with them",
            CLOSE_GRACE.as_secs()
        );
    }
}
