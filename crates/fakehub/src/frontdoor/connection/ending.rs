//! How a connection ends: who ended it, how on the wire, why — and closing the wire.

use std::time::Duration;

use fakehub_protocol::codec::ReadError;
use fakehub_protocol::ResultCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Io;
use crate::clock::VirtualClock;
use crate::events::{CloseCause, CloseHow, Closer, EventKind, Stamp};
use crate::sessions::{CloseRequest, WireClose};

/// How long the hub waits for its TLS close_notify to go out, and then for the device to close
/// its side, before letting go (virtual elapsed time).
const LINGER: Duration = Duration::from_millis(500);

/// How a connection ends.
#[derive(Debug)]
pub(super) struct Ending {
    pub by: Closer,
    pub how: CloseHow,
    pub cause: CloseCause,
    pub detail: Option<String>,
    /// For hub-side closes: what to do to the socket.
    pub wire: Option<WireClose>,
    /// When it happened, for ends caused by a deadline.
    pub at: Stamp,
    /// The IoT Hub code a fault-caused end logs, beyond the plain 404104.
    pub result: Option<ResultCode>,
}

impl Ending {
    /// The hub closes the connection.
    pub fn hub(wire: WireClose, cause: CloseCause, detail: impl Into<String>) -> Ending {
        Ending {
            by: Closer::Hub,
            how: wire.how(),
            cause,
            detail: Some(detail.into()),
            wire: Some(wire),
            at: Stamp::Now,
            result: None,
        }
    }

    /// The hub closes an idle or stalled connection.
    pub fn hub_timeout(cause: CloseCause, detail: impl Into<String>) -> Ending {
        Ending {
            how: CloseHow::Timeout,
            ..Ending::hub(WireClose::Fin, cause, detail)
        }
    }

    /// The device broke a protocol or hub rule.
    pub fn violation(detail: impl Into<String>) -> Ending {
        Ending::hub(WireClose::Fin, CloseCause::ProtocolViolation, detail)
    }

    /// The hub is shutting down.
    pub fn shutdown() -> Ending {
        Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down")
    }

    /// A close the hub was asked for (a fault, a takeover, a disable, the service API).
    pub fn requested(r: CloseRequest) -> Ending {
        Ending {
            result: r.result,
            ..Ending::hub(r.wire, r.cause, r.detail)
        }
    }

    /// The device's side ended the connection.
    pub fn device(how: CloseHow, cause: CloseCause, detail: Option<String>) -> Ending {
        Ending {
            by: Closer::Device,
            how,
            cause,
            detail,
            wire: None,
            at: Stamp::Now,
            result: None,
        }
    }

    /// The device sent DISCONNECT: it closes its side; the hub closes its own without more ado.
    pub fn disconnect() -> Ending {
        Ending {
            wire: Some(WireClose::Fin),
            ..Ending::device(CloseHow::Disconnect, CloseCause::DeviceDisconnect, None)
        }
    }

    /// The device's side ended: classify the read error.
    pub fn from_read(e: ReadError) -> Ending {
        let text = e.to_string();
        let detail = Some(text.clone());
        match e {
            ReadError::Eof | ReadError::EofInPacket(_) => {
                Ending::device(CloseHow::Fin, CloseCause::DeviceClosed, detail)
            }
            ReadError::Reset => Ending::device(CloseHow::Rst, CloseCause::DeviceClosed, detail),
            ReadError::Io(ref io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                Ending::device(CloseHow::Rst, CloseCause::DeviceClosed, detail)
            }
            ReadError::Io(_) => Ending::device(CloseHow::Fin, CloseCause::DeviceClosed, detail),
            ReadError::TooLarge(..) | ReadError::Malformed(_) | ReadError::Violation(_) => {
                Ending::violation(text)
            }
        }
    }

    /// Stamp it at a deadline instead of now.
    pub fn at(self, at: Stamp) -> Ending {
        Ending { at, ..self }
    }

    /// The `closed` event.
    pub fn event(&self) -> EventKind {
        EventKind::Closed {
            by: self.by,
            how: self.how,
            cause: self.cause,
            detail: self.detail.clone(),
            result: self.result,
        }
    }
}

/// The hub's side of a close, after the answers it queued (recorded as sent) go out. RST: zero
/// linger, so the drop sends a reset and no close_notify; the queued answers get one attempt that
/// does not wait. FIN: TLS close_notify and TCP FIN (bounded: a peer that does not read cannot
/// hold us).
pub(super) async fn shut_wire(mut io: Io, wire: WireClose, clock: &VirtualClock) -> Io {
    match wire {
        WireClose::Rst => {
            if io.has_queued() {
                let _ = super::poll_once(&mut std::pin::pin!(io.flush_queued())).await;
            }
            let _ = io.get_ref().stream().reset_on_close();
        }
        WireClose::Fin => {
            tokio::select! {
                biased;
                _ = async {
                    if io.flush_queued().await.is_ok() {
                        let _ = io.get_mut().shutdown().await;
                    }
                } => {}
                _ = clock.sleep(LINGER) => {}
            }
        }
    }
    io
}

/// After a FIN, wait (bounded) for the device to close its side before letting go. A device on
/// the shared clock reacts to the close (e.g. arms its reconnect timer) before it closes, so a
/// jump that made the hub close does not move on before the device has reacted.
pub(super) async fn linger(io: Io, wire: WireClose, clock: &VirtualClock) {
    if wire == WireClose::Fin {
        let mut stream = io.into_inner();
        let drain = async {
            let mut sink = [0u8; 512];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            biased;
            _ = drain => {}
            _ = clock.sleep(LINGER) => {}
        }
    }
}
