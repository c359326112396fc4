//! The front door: everything device-facing.
//!
//! Accept loops take TCP connections (and in-memory ones from in-process devices); each
//! connection gets its own task (see [`connection`]), so a peer that stalls or misbehaves only
//! ever holds up itself.

pub mod auth;
mod connection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fakehub_protocol::transport::{MemoryListener, Stream};
use tokio::net::TcpListener;

use crate::events::{CloseCause, CloseHow, Closer, EventKind, Subject};
use crate::shared::Shared;

/// Accept TCP connections until shutdown.
pub async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut warn = Warnings::default();
    let mut reserve = crate::descriptors::Reserve::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                admit(&shared, Stream::Tcp(tcp), peer);
                reserve.refill();
            }
            Err(e) if crate::descriptors::exhausted(&e) && reserve.release() => {
                // Out of descriptors: use the one held back to take the waiting connection and
                // reset it, so the device sees a refusal rather than a handshake that never ends.
                if let Ok(Ok((tcp, _))) =
                    tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                {
                    let _ = tcp.set_zero_linger();
                    drop(tcp);
                    warn.refused += 1;
                }
                reserve.refill();
                warn.say(&e);
            }
            Err(e) => {
                // Other accept errors: say so at most once a second, and back off briefly.
                warn.say(&e);
                tokio::select! {
                    biased;
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// Accept failures, logged at most once a second.
#[derive(Default)]
struct Warnings {
    last: Option<std::time::Instant>,
    /// Connections refused for want of descriptors since the last line.
    refused: u64,
}

impl Warnings {
    fn say(&mut self, e: &std::io::Error) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            if crate::descriptors::exhausted(e) {
                let limit = crate::descriptors::limits().map_or(0, |(soft, _)| soft);
                tracing::warn!(
                    refused = self.refused,
                    limit,
                    "out of file descriptors: refusing new connections"
                );
            } else {
                tracing::warn!(error = %e, "accept failed");
            }
            self.last = Some(now);
            self.refused = 0;
        }
    }
}

/// Accept in-memory connections until shutdown (or until every connector is gone).
pub async fn accept_memory(mut listener: MemoryListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Some((stream, peer)) => admit(&shared, Stream::Memory(stream), peer),
            None => break,
        }
    }
}

fn admit(shared: &Arc<Shared>, stream: Stream, peer: SocketAddr) {
    let id = shared.next_conn();
    if shared.faults.refuse_tcp() {
        refuse(shared, stream, peer, id);
        return;
    }
    shared
        .tasks
        .spawn(connection::run(shared.clone(), stream, peer, id));
}

/// An outage that refuses TCP: reset the connection before anything is read from it.
fn refuse(shared: &Shared, stream: Stream, peer: SocketAddr, id: u64) {
    let subject = Subject {
        conn: Some(id),
        ..Default::default()
    };
    shared.events.emit(&subject, EventKind::Accepted { peer });
    let _ = stream.reset_on_close();
    drop(stream);
    shared.events.emit(
        &subject,
        EventKind::Closed {
            by: Closer::Hub,
            how: CloseHow::Rst,
            cause: CloseCause::Fault,
            detail: Some("outage: the hub refuses connections".into()),
            result: None,
        },
    );
}
