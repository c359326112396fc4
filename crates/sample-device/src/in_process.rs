//! The sample device running in-process on a hub's shared clock: what tests, benchmarks, the
//! assertion examples and the scenario runner all start the same way.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_rustls::rustls::ClientConfig;

use fakehub_protocol::clock::DeviceClock;
use fakehub_protocol::transport::MemoryRoutes;
use fakehub_protocol::InProcessHub;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{ConnectionString, Device, DeviceError, DeviceOptions, Dial, Provisioning};

/// The TLS configuration of in-process devices that connect without TLS (never used for a
/// handshake), made once.
fn unused_client_config() -> Result<Arc<ClientConfig>, DeviceError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let c = fakehub_protocol::tls::client_config_trusting(&[])
        .map_err(|e| DeviceError::Ca(e.to_string()))?;
    Ok(CONFIG.get_or_init(|| c).clone())
}

/// A running in-process sample device.
pub struct InProcess {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    connected: watch::Receiver<bool>,
}

impl InProcess {
    /// Start device `id` of `hub`, with the hub's connection string, CA and clock, connected in
    /// memory (no socket).
    pub fn spawn(
        hub: &impl InProcessHub,
        id: &str,
        opts: DeviceOptions,
    ) -> Result<InProcess, DeviceError> {
        let conn = hub
            .connection_string(id)
            .ok_or_else(|| DeviceError::Unknown(id.to_owned()))
            .and_then(|c| {
                ConnectionString::parse(&c).map_err(|e| DeviceError::Unknown(e.to_string()))
            })?;
        let clock = DeviceClock::Shared(hub.clock().clone());
        let device = if hub.memory_tls() || opts.certificate.is_some() {
            Device::new(conn, &hub.ca_pem(), clock, opts)?
        } else {
            // No TLS in memory: the device never uses a TLS configuration, and a fleet of 100,000
            // shares one rather than parsing the CA 100,000 times.
            Device::with_client_config(conn, unused_client_config()?, clock, opts)?
        }
        .with_dial(Dial::Memory {
            connector: hub.memory_connector(),
            tls: hub.memory_tls(),
        });
        Ok(Self::start(device))
    }

    /// Start a device that registers with the provisioning service first, then connects to the
    /// hub it is assigned — in memory, by `routes` (the provisioning host and each hub's device
    /// host lead to its hub), with `hub`'s CA and clock.
    pub fn provisioned(
        hub: &impl InProcessHub,
        routes: MemoryRoutes,
        provisioning: Provisioning,
        opts: DeviceOptions,
    ) -> Result<InProcess, DeviceError> {
        let device = Device::provisioned(
            provisioning,
            &hub.ca_pem(),
            DeviceClock::Shared(hub.clock().clone()),
            opts,
        )?
        .with_dial(Dial::Routed {
            routes,
            tls: hub.memory_tls(),
        });
        Ok(Self::start(device))
    }

    fn start(device: Device) -> InProcess {
        // Raised when `Connected` is emitted, once the device's timers are armed: time may move
        // after it.
        let (up, connected) = watch::channel(false);
        let device = device.with_connected_flag(up);
        let stop = CancellationToken::new();
        let task = tokio::spawn(device.run(stop.clone()));
        InProcess {
            stop,
            task,
            connected,
        }
    }

    /// Wait (real time, at most `within`) until the device has connected once. False on timeout.
    pub async fn connected(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.connected.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stop the device (DISCONNECT, unless it has that bug) and wait (bounded) for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
