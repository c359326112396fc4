//! The typed event log: the single source of truth of what the hub saw.
//!
//! Every packet and state change of every connection is one [`Event`], stamped with virtual wall time
//! and virtual elapsed time. Assertions, reports and the Connections records read only this log. It is
//! kept in memory (for assertions and [`EventStream`]s that start from the beginning) and, when the hub
//! has an output directory, written as JSON Lines as it happens, with the Connections records derived
//! alongside.

pub mod dps_records;
mod lifecycle;
mod line;
mod line_read;
pub mod log;
pub mod records;
pub mod series;

pub use lifecycle::{Connection, DpsClient, Lifecycle};
pub use log::{EventLog, EventStream};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fakehub_protocol::properties::PropertyBag;
use fakehub_protocol::ResultCode;
use serde::{Deserialize, Serialize};

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Closer {
    Device,
    Hub,
}

/// How the connection ended on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseHow {
    /// An MQTT DISCONNECT packet, then the close.
    Disconnect,
    /// An orderly close (TCP FIN, with a TLS close_notify when the hub closed).
    Fin,
    /// A TCP reset.
    Rst,
    /// The hub closed an idle connection (keep-alive or handshake/CONNECT timeout).
    Timeout,
}

/// Why a connection ended. Records derive their result codes from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseCause {
    /// The device sent DISCONNECT.
    DeviceDisconnect,
    /// The device closed or reset the socket without DISCONNECT (or its process died).
    DeviceClosed,
    /// No inbound packet within the keep-alive window.
    KeepAliveTimeout,
    /// The SAS token the connection authenticated with expired (plus grace).
    TokenExpired,
    /// Another connection with the same identity took over.
    Takeover,
    /// The device broke a protocol or hub rule (malformed packet, forbidden topic, QoS 2, …).
    ProtocolViolation,
    /// The TLS handshake failed or timed out.
    TlsFailed,
    /// No CONNECT arrived in time, or the first packet was not CONNECT.
    NoConnect,
    /// The CONNECT was refused (CONNACK ≠ 0), then the hub closed.
    Refused,
    /// A fault closed it.
    Fault,
    /// The hub shut down.
    HubShutdown,
    /// The hub's session core ended the session.
    CoreClosed,
    /// The connection's task failed (a bug in the hub): it was closed and counted out.
    Internal,
    /// The identity was disabled in the registry (service API).
    Disabled,
    /// The identity was deleted from the registry (service API).
    Deleted,
    /// The provisioning service moved the device to another hub (it left this one).
    Reprovisioned,
}

/// Whether a fault started or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    Started,
    Ended,
}

/// Direction of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Device to hub.
    In,
    /// Hub to device.
    Out,
}

/// How a device authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Sas,
    X509,
    None,
}

/// A device's request to the Device Provisioning Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpsOp {
    /// `iotdps-register`: start a registration.
    Register,
    /// `iotdps-get-operationstatus`: how is the registration going.
    Poll,
}

/// How a device keeps time in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// An in-process device in a simulated run: discrete-event virtual time.
    Simulated,
    /// On the hub's clock: an in-process device in a run with processes, or a device process under
    /// the time preload (its wall and monotonic clocks, sleeps and timeouts follow the hub).
    Hub,
    /// Real time: the device keeps its own clock and the hub runs at real speed.
    Real,
}

impl ClockMode {
    /// For people: what the mode means.
    pub fn describe(self) -> &'static str {
        match self {
            ClockMode::Simulated => "simulated (discrete-event virtual time)",
            ClockMode::Hub => "the hub's clock (time preload for a process)",
            ClockMode::Real => "real time",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The hub started listening.
    HubStarted {
        listen: SocketAddr,
        host_name: String,
    },
    /// The hub stopped.
    HubStopped,
    /// A TCP connection was accepted.
    Accepted {
        peer: SocketAddr,
    },
    /// The TLS handshake finished.
    Tls {
        version: String,
    },
    /// A CONNECT arrived. Never carries the password.
    Connect {
        client_id: String,
        username: String,
        keep_alive: u16,
        clean_session: bool,
        auth: AuthKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdk: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
        token_expiry: Option<SystemTime>,
        #[serde(default)]
        will: bool,
    },
    /// The hub answered a CONNECT. `result` is the IoT Hub error code of a refusal (e.g. 401003).
    Connack {
        code: u8,
        session_present: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<ResultCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A PUBLISH in either direction.
    Publish {
        dir: Direction,
        topic: String,
        qos: u8,
        pkid: u16,
        dup: bool,
        #[serde(default)]
        retain: bool,
        size: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// Boxed: most events are not messages, and an event's size is its largest kind's.
        #[serde(default, skip_serializing_if = "is_empty_bag")]
        properties: Box<PropertyBag>,
    },
    /// A PUBACK in either direction.
    Puback {
        dir: Direction,
        pkid: u16,
    },
    /// A SUBSCRIBE from the device: filters with requested QoS.
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    /// The SUBACK: granted QoS per filter, 128 for failure.
    Suback {
        pkid: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    Unsuback {
        pkid: u16,
    },
    /// PINGREQ from the device.
    Ping,
    /// PINGRESP from the hub.
    Pingresp,
    /// The device sent DISCONNECT.
    DisconnectPacket,
    /// The connection ended. `result` is the IoT Hub code the hub logs for a fault-caused end
    /// (e.g. 429001, 500008), when it is not the plain 404104.
    Closed {
        by: Closer,
        how: CloseHow,
        cause: CloseCause,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<ResultCode>,
    },
    /// A fault started or ended.
    Fault {
        id: u64,
        action: FaultAction,
        fault: String,
        /// Boxed: a JSON value is the size of a map, and every event in memory takes the size of
        /// the largest kind (a fleet's log holds millions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Box<serde_json::Value>>,
    },
    /// The runner started, stopped, crashed or saw the exit of a device process (`code`/`signal` on
    /// exit). A crash of the device under test is an observed event, not a harness failure.
    DeviceProcess {
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// The runner started a device and says how it keeps time (the clock its verdicts are judged in).
    DeviceClock {
        mode: ClockMode,
    },
    /// The scenario's timeline ended: what follows is the runner stopping the devices. Rules that
    /// judge "the end of the run" (e.g. `connected`) judge it here.
    TimelineEnded,
    /// A packet the hub withheld because of a fault.
    Withheld {
        packet: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pkid: Option<u16>,
    },
    /// The number of connected (CONNACK 0, not yet closed) identities changed.
    ConnectedDevices {
        count: usize,
    },
    /// The service side queued a cloud-to-device message; `queue_depth` counts it and every other
    /// message the device has not acknowledged yet.
    C2dQueued {
        message_id: String,
        size: usize,
        queue_depth: usize,
    },
    /// The hub refused a cloud-to-device message (e.g. 403004: the device's queue is full).
    C2dRefused {
        message_id: String,
        result: ResultCode,
        reason: String,
    },
    /// The device acknowledged a cloud-to-device message (its PUBACK, or delivery at QoS 0).
    C2dCompleted {
        message_id: String,
    },
    /// The service side invoked a direct method.
    MethodInvoked {
        name: String,
        rid: String,
        size: usize,
    },
    /// A direct method call ended: with the device's `status`, or with the hub's error `result`
    /// (404103 device not online, 504101 timeout).
    MethodResult {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<ResultCode>,
        duration_ms: u64,
    },
    /// A twin section changed: `desired` by the service side, `reported` by the device. A reported
    /// patch that acknowledges desired properties (IoT Plug and Play: `"av"`, the desired `$version`
    /// it applied) says which desired version it acknowledges.
    TwinUpdated {
        section: TwinSection,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledges: Option<u64>,
    },
    /// The service side enabled or disabled an identity.
    IdentityStatus {
        enabled: bool,
    },
    /// The service side registered, replaced or deleted an identity (service API).
    IdentityChanged {
        change: IdentityChange,
    },
    /// The hub's virtual wall time jumped forward by `by_ms` (an `advance` of the control API);
    /// the deadlines inside fired at their own instants, before this event.
    ClockAdvanced {
        by_ms: u64,
    },
    /// The service side purged a device's cloud-to-device queue.
    C2dPurged {
        count: usize,
    },
    /// A CONNECT to the Device Provisioning Service (boxed, as the largest kind but one: every
    /// event in memory takes the size of the largest kind).
    DpsConnect(Box<DpsConnect>),
    /// DPS answered the CONNECT: 0, or a refusal (`status`/`error_code` as DPS logs it, and why).
    DpsConnack {
        code: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A SUBSCRIBE to DPS and what was granted (128: refused).
    DpsSubscribe {
        filters: Vec<(String, u8)>,
        granted: Vec<u8>,
    },
    /// A register or operation-status request from the device.
    DpsRequest {
        op: DpsOp,
        rid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation_id: Option<String>,
        size: usize,
    },
    /// DPS's answer to a request (boxed: it is the largest kind, and every event in memory takes
    /// the size of the largest kind — a fleet's log holds millions).
    DpsResponse(Box<DpsResponse>),
}

/// A CONNECT to the Device Provisioning Service (a DPS username). Never carries the password. The
/// event's device is the registration id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpsConnect {
    pub client_id: String,
    pub id_scope: String,
    pub registration_id: String,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub auth: AuthKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
}

/// DPS's answer to a request: the status of the answer topic, its `retry-after`, and what the
/// body says (the registration's `registration` status, the hub it was assigned — `assigned_hub`
/// as the device was told, `hub_name` the hub's name — or the error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpsResponse {
    pub op: DpsOp,
    pub rid: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the service side did to an identity in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityChange {
    Created,
    Replaced,
    Deleted,
}

/// The two sections of a twin a device sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwinSection {
    Desired,
    Reported,
}

fn is_empty_bag(b: &PropertyBag) -> bool {
    b.system.is_empty() && b.application.is_empty()
}

mod opt_time {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        t.map(fakehub_protocol::clock::rfc3339_millis).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod time_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&fakehub_protocol::clock::Rfc3339Millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

mod elapsed_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(millis(*d))
    }

    /// Whole milliseconds, saturating (past 584 million years).
    pub fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Virtual wall time.
    #[serde(with = "time_ms")]
    pub time: SystemTime,
    /// Virtual elapsed time since the hub's clock started, in milliseconds.
    #[serde(rename = "elapsed_ms", with = "elapsed_ms")]
    pub elapsed: Duration,
    /// The connection, when the event belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    /// The device id, once known (shared: a device's events name it thousands of times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Arc<str>>,
    /// The module id, for module connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<Arc<str>>,
    /// The hub (its host name) when several hubs write one log; absent with a single hub (shared:
    /// every event of a hub names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<Arc<str>>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// When an event happened: now, or at a deadline that fired (so the stamp does not depend on how
/// quickly the task that handles the deadline got to run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    Now,
    /// A virtual wall-time deadline.
    Wall(SystemTime),
    /// A virtual elapsed-time deadline (keep-alive).
    Elapsed(Duration),
}

/// Who an event is about.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub conn: Option<u64>,
    pub device: Option<Arc<str>>,
    pub module: Option<Arc<str>>,
}
