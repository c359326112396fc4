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
//! The layout follows DESIGN.md: `clock` (virtual time), `tls` (certificates), `registry`
//! (identities), `sas` (tokens), `frontdoor` (the device-facing connection handling), `iothub` (the
//! Azure dialect), `core` (the embedded rumqttd router) and `events` (the event log, Connections
//! records and the connected-devices series).

pub use fakehub_protocol::{clock, clock_file, sas, tls, ResultCode};
pub mod core;
pub mod events;
pub mod faults;
pub mod frontdoor;
mod hub;
pub mod iothub;
pub mod registry;
pub mod testkit;

pub use clock::{DeviceClock, VirtualClock};
pub use events::records::ConnectionRecord;
pub use events::{
    CloseCause, CloseHow, Closer, Event, EventKind, EventLog, EventStream, TwinSection,
};
pub use frontdoor::WireClose;
pub use hub::{Hub, HubBuilder, HubError, HubHandle};
pub use iothub::c2d::CloudMessage;
pub use iothub::methods::{MethodError, MethodResponse};
pub use iothub::services::{C2dError, TwinError};
pub use iothub::twin::Twin;
pub use registry::{IdentityRef, SymmetricKeys, X509Auth};

/// Wait for Ctrl-C or SIGTERM: how a long-running hub (or device) knows to stop and flush.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
