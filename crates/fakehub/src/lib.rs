//! fakehub: a fake Azure IoT Hub (MQTT 3.1.1 over TLS) for device tests, with a virtual clock and
//! fault injection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fakehub::HubError> {
//! let hub = fakehub::Hub::builder().device("sensor-1").build()?.start().await?;
//! let conn = hub.connection_string("sensor-1").unwrap(); // give this and hub.ca_pem() to the device
//! # let _ = conn;
//! hub.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The API: [`Hub`] / [`HubBuilder`] / [`HubHandle`] (building, running and driving a hub, its
//! service side included), [`dps`] (the Device Provisioning Service a hub can serve, shared by
//! several hubs), [`faults`] (the fault catalogue), [`events`] (the event log, the
//! connection lifecycle, Connections records, the connected-devices series), [`registry`]
//! (identities), [`descriptors`] (the file-descriptor limit), [`LiveThread`] (a thread for live
//! connections), [`process_time`] (device processes on the hub's clock), and from the shared
//! protocol crate [`clock`], [`sas`], [`tls`].
//!
//! The machinery stays inside: `frontdoor` (accepting connections; one state machine per
//! connection), `sessions` (the message core: live links, sessions, C2D queues), `services`
//! (twins, methods, C2D), `shared` (what they all share).

pub use fakehub_protocol::{clock, sas, tls, transport, ResultCode};

pub mod descriptors;
pub mod dps;
pub mod events;
pub mod faults;
mod frontdoor;
mod hub;
mod live_thread;
pub mod process_time;
pub mod registry;
pub mod service_api;
pub mod services;
mod sessions;
mod shared;
#[cfg(feature = "testkit")]
pub mod testkit;

/// The IoT Hub dialect of MQTT: usernames, the topic space, property bags (from the protocol
/// crate), and the service side's message types.
pub mod iothub {
    pub use crate::services::{c2d, methods, twin};
    pub use fakehub_protocol::{properties, topics, username};
}

pub use clock::{DeviceClock, VirtualClock};
pub use dps::{Dps, DpsConfig};
pub use events::records::ConnectionRecord;
pub use events::{
    CloseCause, CloseHow, Closer, Event, EventKind, EventLog, EventStream, TwinSection,
};
pub use hub::{listen_tcp, Hub, HubBuilder, HubError, HubHandle, OWNER_POLICY};
pub use live_thread::{LiveRuntime, LiveThread};
pub use registry::{IdentityRef, Right, Rights, SymmetricKeys, X509Auth};
pub use services::c2d::CloudMessage;
pub use services::methods::{MethodError, MethodResponse};
pub use services::twin::Twin;
pub use services::{C2dError, IdentitySpec, RegistryError, TwinError};
pub use sessions::WireClose;

pub use fakehub_protocol::{shutdown_signal, InProcessHub};
