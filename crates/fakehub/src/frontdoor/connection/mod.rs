//! One device connection, from accept to close, as explicit states:
//!
//! ```text
//! handshaking ──▶ awaiting CONNECT ──▶ authenticating ──▶ live ──▶ closing
//!      │                 │                   │  └──▶ provisioning ─▶ ▲
//!      └─────────────────┴───────────────────┴──────────────────────┘
//! ```
//!
//! A CONNECT with a Device Provisioning Service username (on a hub that serves DPS) leaves the
//! hub's path at authentication: [`dps`] attests and serves it.
//!
//! Each state is one small function that returns the next. Every path ends in [`closing`]: the
//! wire is closed, the `closed` event recorded (stamped when the hub closed, or at the deadline
//! that caused it), the connected count and the session released. If the task ever fails, the
//! [`Guard`] still records the close and releases what the connection held.

mod connect;
mod dps;
mod ending;
mod handshake;
mod live;

use std::net::SocketAddr;
use std::sync::Arc;

use fakehub_protocol::codec::MqttIo;
use fakehub_protocol::transport::{Secured, Stream};
use fakehub_protocol::IdentityRef;
use rumqttc::mqttbytes::v4 as mq;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;

use crate::clock::Fired;
use crate::events::{CloseCause, CloseHow, Closer, EventKind, Stamp, Subject};
use crate::shared::Shared;
use ending::Ending;

/// The framed device stream.
/// The TLS session on the heap: a connection's state moves from phase to phase, and the session
/// (about a kilobyte) then moves as a pointer.
type Io = MqttIo<Secured<Box<TlsStream<Stream>>>>;

/// Where a connection is in its life.
enum State {
    Handshaking(Stream),
    AwaitingConnect(Io, Vec<CertificateDer<'static>>),
    Authenticating(Io, Box<mq::Connect>, Vec<CertificateDer<'static>>),
    Live(Box<live::Live>),
    /// Close the wire (if the hub still holds it) the way the ending says; a deadline guard, if
    /// any, is held until the records are written.
    Closing(Option<Io>, Ending, Option<Fired>),
    Done,
}

/// What one connection's task knows about itself, and what it must release whatever happens.
struct Guard {
    shared: Arc<Shared>,
    conn: u64,
    subject: Subject,
    /// Counted in the connected-devices count.
    connected: bool,
    /// Attached to its session under this client id.
    attached: Option<String>,
    /// The `closed` event is written.
    closed: bool,
}

impl Guard {
    fn emit(&self, kind: EventKind) {
        self.shared.events.emit(&self.subject, kind);
    }

    fn identify(&mut self, who: &IdentityRef) {
        self.subject.device = Some(who.device_id.as_str().into());
        self.subject.module = who.module_id.as_deref().map(Arc::from);
    }

    /// Record the close, then release the count (stamped alike).
    fn record_close(&mut self, ending: &Ending) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.shared
            .events
            .emit_stamped(&self.subject, ending.event(), ending.at);
        if std::mem::take(&mut self.connected) {
            self.shared.sessions.set_connected(false, ending.at);
        }
    }

    fn release_session(&mut self) {
        if let Some(client) = self.attached.take() {
            self.shared.sessions.detach(&client, self.conn);
        }
    }
}

impl Drop for Guard {
    /// A task that ended without closing (a panic, or the runtime dropping it) still records its
    /// close and gives back what it held, so the counts stay right.
    fn drop(&mut self) {
        if !self.closed {
            let (cause, detail) = if self.shared.shutdown.is_cancelled() {
                (CloseCause::HubShutdown, "hub shutting down")
            } else {
                (
                    CloseCause::Internal,
                    "the connection's task ended unexpectedly",
                )
            };
            let ending = Ending {
                by: Closer::Hub,
                how: CloseHow::Fin,
                cause,
                detail: Some(detail.to_owned()),
                wire: None,
                at: Stamp::Now,
                result: None,
            };
            self.record_close(&ending);
        }
        self.release_session();
    }
}

/// Run one connection to its end.
pub async fn run(shared: Arc<Shared>, stream: Stream, peer: SocketAddr, conn: u64) {
    let mut guard = Guard {
        shared,
        conn,
        subject: Subject {
            conn: Some(conn),
            ..Default::default()
        },
        connected: false,
        attached: None,
        closed: false,
    };
    guard.emit(EventKind::Accepted { peer });
    let elsewhere = elsewhere(&guard);
    let state = State::Handshaking(stream);
    let Some(mut live) = drive(&mut guard, state, elsewhere.is_some()).await else {
        return;
    };
    let Some(runtime) = elsewhere else {
        return;
    };
    // Live: handed over to the hub's runtime for live connections, where its socket is
    // registered first; this task ends here.
    let tasks = guard.shared.tasks.clone();
    runtime.hand_over(
        &tasks,
        Box::pin(async move {
            if let Err(e) = live.rehome() {
                // Out of descriptors for the duplicate, say: the socket is untouched and stays
                // registered where it was accepted, whose poller still wakes this task (across
                // threads, at some cost). Serving it beats dropping a device that got CONNACK 0.
                tracing::warn!(conn = guard.conn, error = %e, "live connection left on the accepting runtime's poller");
            }
            drive(&mut guard, State::Live(live), false).await;
        }),
    );
}

/// Take a connection from `state` to its end, or (`hand_over`) until it is live.
async fn drive(guard: &mut Guard, mut state: State, hand_over: bool) -> Option<Box<live::Live>> {
    loop {
        state = match state {
            // Each phase on the heap while it runs: the task then costs the phase it is in (a
            // held connection: the live one), not the largest of them all.
            State::Handshaking(stream) => Box::pin(handshake::run(guard, stream)).await,
            State::AwaitingConnect(io, certs) => {
                Box::pin(connect::await_connect(guard, io, certs)).await
            }
            State::Authenticating(io, connect, certs) => {
                Box::pin(connect::authenticate(guard, io, *connect, certs)).await
            }
            State::Live(live) if hand_over => return Some(live),
            State::Live(live) => Box::pin(live.serve(guard)).await,
            State::Closing(io, ending, fired) => {
                Box::pin(closing(guard, io, ending)).await;
                drop(fired);
                State::Done
            }
            State::Done => return None,
        };
    }
}

/// The hub's runtime for live connections, when it has one and this task runs on another.
fn elsewhere(guard: &Guard) -> Option<crate::LiveRuntime> {
    let live = guard.shared.config.live_runtime.as_ref()?;
    (!live.is_current()).then(|| live.clone())
}

/// Close the wire the way `ending` says, record the close at that moment, linger for the device's
/// side, then give up the session (a successor taking over waits until now).
async fn closing(guard: &mut Guard, io: Option<Io>, ending: Ending) {
    let clock = guard.shared.clock.clone();
    let io = match (io, ending.wire) {
        (Some(io), Some(wire)) => Some((ending::shut_wire(io, wire, &clock).await, wire)),
        _ => None,
    };
    guard.record_close(&ending);
    if let Some((io, wire)) = io {
        ending::linger(io, wire, &clock).await;
    }
    guard.release_session();
}

/// The name of a packet, for details and `withheld` events.
/// Poll a future once, without waiting: its output if it is ready at once (a write the socket has
/// room for), else `Pending` with the future left to await or drop.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
}

fn packet_name(p: &mq::Packet) -> &'static str {
    fakehub_protocol::codec::packet_name(p)
}
