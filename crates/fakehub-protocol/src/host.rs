//! What an in-process device needs of the hub it runs beside: its connection string, the CA to
//! trust, the hub's clock, and a way in without a socket.

use crate::clock::VirtualClock;
use crate::transport::MemoryConnector;

/// A running hub, as an in-process device sees it.
pub trait InProcessHub {
    /// The connection string of a registered device (contains its key: never log it).
    fn connection_string(&self, device_id: &str) -> Option<String>;
    /// The CA certificate to trust, PEM.
    fn ca_pem(&self) -> String;
    /// The hub's clock.
    fn clock(&self) -> &VirtualClock;
    /// How to connect in memory.
    fn memory_connector(&self) -> MemoryConnector;
    /// Whether in-memory connections do a TLS handshake.
    fn memory_tls(&self) -> bool;
}

/// Wait for Ctrl-C, SIGTERM or SIGHUP: how a long-running hub (or device) knows to stop and flush.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    biased;
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
