//! The one interface every fault implements: hooks at the few points where a fault can act.
//!
//! A fault is consulted when it starts and ends, at TCP accept, at CONNECT, at each request to the
//! provisioning service, when the provisioning service allocates hubs, and — through a
//! [`ConnectionHook`] it attaches to each matching live connection, owning that connection's
//! state — on every packet in each direction. Every hook has a default that does nothing, so a
//! fault implements only the points it acts at.

use std::time::Duration;

use fakehub_protocol::ResultCode;
use rumqttc::mqttbytes::v4 as mq;

use super::{Context, Started};
use crate::events::DpsOp;
use crate::sessions::WireClose;

/// What to do with a new CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConnectVerdict {
    Proceed,
    /// Answer after this long (virtual elapsed time).
    Delay(Duration),
    /// Answer with this CONNACK code and close; `result` for the record.
    Refuse {
        code: u8,
        result: ResultCode,
        reason: String,
    },
    /// Never answer; when the device gives up, record `result`.
    Hang {
        result: ResultCode,
        reason: String,
    },
}

/// The CONNECT a fault is asked about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectAttempt<'a> {
    pub client_id: &'a str,
    pub elapsed: Duration,
}

/// What a connection hook does to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketVerdict {
    Pass,
    /// Handle it after this long (virtual elapsed time).
    Delay(Duration),
    /// Withhold it: the peer never gets it (recorded as `withheld`).
    Withhold,
}

/// A request to the provisioning service a fault is asked about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DpsAttempt<'a> {
    pub registration_id: &'a str,
    pub op: DpsOp,
    pub elapsed: Duration,
}

/// What to do with a request to the provisioning service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DpsVerdict {
    Proceed,
    /// Answer with this error (429 throttling, 5xx, …) instead.
    Refuse {
        status: u16,
        error_code: u32,
        message: String,
        retry_after: Option<u32>,
    },
    /// A poll: the registration stays `assigning` until it is `until` old (elapsed since its
    /// register), answered with this `retry-after`.
    Assigning {
        until: Duration,
        retry_after: u32,
    },
    /// A poll: the enrollment is disabled, the registration ends `disabled`.
    Disabled,
    /// Close the connection without answering.
    Drop {
        wire: WireClose,
    },
}

/// A fault's per-connection state and packet hooks.
pub(crate) trait ConnectionHook: Send {
    /// Whether the hub reads from the device at all (a blackhole or half-open connection does not).
    fn reads(&self) -> bool {
        true
    }

    /// Whether the hub writes to the device at all (a blackhole does not).
    fn writes(&self) -> bool {
        true
    }

    /// A packet from the device, before the hub handles it.
    fn inbound(&mut self, _packet: &mq::Packet) -> PacketVerdict {
        PacketVerdict::Pass
    }

    /// A packet the hub is about to send.
    fn outbound(&mut self, _packet: &mq::Packet) -> PacketVerdict {
        PacketVerdict::Pass
    }
}

/// One fault of the catalogue, as it acts on a running hub. `matches` says whether a client id is
/// one the fault selected.
pub(crate) trait FaultUnit: Send + Sync {
    /// It has started (and is already consulted by new connections): act on what is live now.
    fn started(&self, _ctx: &Context, _fault: &Started<'_>, _matches: &dyn Fn(&str) -> bool) {}

    /// It has ended: undo what it did, and only that.
    fn ended(&self, _ctx: &Context) {}

    /// Its work is done when it starts: it ends at once unless given a duration.
    fn one_shot(&self) -> bool {
        false
    }

    /// A new TCP connection: true to reset it before anything is read.
    fn refuses_tcp(&self) -> bool {
        false
    }

    /// A CONNECT from a selected identity.
    fn on_connect(&self, _attempt: &ConnectAttempt<'_>) -> ConnectVerdict {
        ConnectVerdict::Proceed
    }

    /// How far behind the hub a selected device's clock is, for its token checks (negative:
    /// ahead).
    fn clock_behind(&self) -> Option<Duration> {
        None
    }

    /// Whether a selected CONNECT must start a clean session, whatever it asks for.
    fn forces_clean_session(&self) -> bool {
        false
    }

    /// A request of a selected registration to the provisioning service.
    fn on_dps(&self, _attempt: &DpsAttempt<'_>) -> DpsVerdict {
        DpsVerdict::Proceed
    }

    /// Whether the hub is out of the provisioning service's rotation (it is down).
    fn unlinks_hub(&self) -> bool {
        false
    }

    /// Per-connection state for a selected live connection, if the fault acts on packets.
    fn attach(&self, _client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        None
    }
}
