//! What every part of a running hub shares: its settings, registry, clock, event log, sessions,
//! services and active faults.

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::VirtualClock;
use crate::dps::Dps;
use crate::events::EventLog;
use crate::faults::{self, inband::Triggers, ActiveFaults};
use crate::registry::Registry;
use crate::services::Services;
use crate::sessions::Sessions;

/// Front-door settings.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    pub host_name: String,
    /// Other names devices may call the hub by in usernames and SAS audiences: the address the
    /// provisioning service assigns, when it is not the host name.
    pub aliases: Vec<String>,
    /// Extra time after a token's `se` before the hub closes the connection.
    pub token_grace: Duration,
    /// The longest idle window the hub allows, whatever the keep-alive (IoT Hub: 1767 s).
    pub keepalive_cap: Duration,
    /// How long a TLS handshake may take (virtual elapsed time).
    pub tls_handshake_timeout: Duration,
    /// How long between the handshake and the CONNECT (virtual elapsed time).
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted (remaining length), bytes.
    pub max_packet_size: usize,
    /// Whether in-memory connections use TLS too (TCP ones always do).
    pub memory_tls: bool,
    /// How long an in-memory connection takes to establish (a network round trip).
    pub memory_rtt: Duration,
    /// The runtime live connections are served on, when not the one that accepts them (see
    /// [`crate::HubBuilder::live_runtime`]).
    pub live_runtime: Option<crate::LiveRuntime>,
    /// Test only: a PUBLISH to a topic containing this makes the connection task panic.
    #[cfg(feature = "testkit")]
    pub panic_on_topic: Option<String>,
}

/// The running hub's parts.
pub struct Shared {
    pub config: FrontDoorConfig,
    pub registry: Registry,
    pub clock: VirtualClock,
    pub events: EventLog,
    pub sessions: Arc<Sessions>,
    pub services: Arc<Services>,
    pub faults: Arc<ActiveFaults>,
    pub triggers: Triggers,
    pub tls: TlsAcceptor,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// The run's seed (fault selection by percentage, generated ids).
    pub seed: u64,
    /// The provisioning service this hub serves on its listener, if any.
    pub dps: Option<Dps>,
}

impl Shared {
    pub fn new(
        config: FrontDoorConfig,
        registry: Registry,
        clock: VirtualClock,
        events: EventLog,
        tls: TlsAcceptor,
        seed: u64,
        dps: Option<Dps>,
    ) -> Shared {
        let sessions = Arc::new(Sessions::new(events.clone(), clock.clone()));
        let services = Arc::new(Services::new(
            registry.clone(),
            sessions.clone(),
            events.clone(),
            clock.clone(),
            seed,
        ));
        Shared {
            config,
            registry,
            clock,
            events,
            sessions,
            services,
            faults: Arc::new(ActiveFaults::default()),
            triggers: Triggers::default(),
            tls,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            seed,
            dps,
        }
    }

    /// A new connection id (unique in the event log, which several hubs may share).
    pub fn next_conn(&self) -> u64 {
        self.events.next_conn()
    }

    /// What faults reach.
    pub fn fault_ctx(&self) -> faults::Context {
        faults::Context {
            active: self.faults.clone(),
            sessions: self.sessions.clone(),
            services: self.services.clone(),
            registry: self.registry.clone(),
            events: self.events.clone(),
            clock: self.clock.clone(),
            seed: self.seed,
            tasks: self.tasks.clone(),
            shutdown: self.shutdown.clone(),
            dps: self.dps.clone(),
        }
    }
}
