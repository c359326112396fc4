//! Building, starting and stopping a hub.

mod output;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use fakehub_protocol::transport::{memory_network, MemoryConnector};

use crate::clock::VirtualClock;
use crate::dps::{Dps, LinkedHub};
use crate::events::dps_records::{self, DpsContext, DpsRecord};
use crate::events::records::{self, ConnectionRecord, RecordContext};
use crate::events::{CloseCause, EventKind, EventLog, EventStream, Subject};
use crate::frontdoor;
use crate::registry::X509Auth;
use crate::registry::{
    Device, Identity, IdentityRef, Policy, Registry, RegistryData, Rights, SymmetricKeys,
};
use crate::sas;
use crate::services::c2d::CloudMessage;
use crate::services::methods::{MethodError, MethodResponse};
use crate::services::twin::Twin;
use crate::services::{C2dError, IdentitySpec, RegistryError, TwinError};
use crate::sessions::{CloseRequest, WireClose};
use crate::shared::{FrontDoorConfig, Shared};
use crate::tls::{HubCertificates, TlsError};

/// Errors starting or stopping a hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the event log could not be written: {0}")]
    EventLog(#[source] std::io::Error),
    #[error(
        "another hub is using the output directory {} (it holds {}): stop it or give this one another `out`",
        dir.display(),
        dir.join(output::LOCK_FILE).display()
    )]
    OutDirInUse { dir: PathBuf },
}

/// The shared access policy every hub has, with all rights (as IoT Hub creates it).
pub const OWNER_POLICY: &str = "iothubowner";

/// Configures a hub. Defaults: host `fakehub.azure-devices.net`, listen `127.0.0.1:0`, token grace
/// 5 minutes (the 65-minute pattern), keep-alive cap 1767 s, TLS handshake and CONNECT timeouts 10 s.
pub struct HubBuilder {
    host_name: String,
    listen: Listen,
    registry: RegistryData,
    token_grace: Duration,
    keepalive_cap: Duration,
    tls_handshake_timeout: Duration,
    connect_timeout: Duration,
    max_packet_size: usize,
    clock: Option<VirtualClock>,
    certificates: Option<HubCertificates>,
    out_dir: Option<PathBuf>,
    memory_tls: bool,
    memory_rtt: Duration,
    seed: u64,
    #[cfg(feature = "testkit")]
    panic_on_topic: Option<String>,
    dps: Option<Dps>,
    events: Option<EventLog>,
    live_runtime: Option<crate::LiveRuntime>,
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl HubBuilder {
    pub fn new() -> Self {
        HubBuilder {
            host_name: "fakehub.azure-devices.net".to_owned(),
            listen: Listen::At(SocketAddr::from(([127, 0, 0, 1], 0))),
            registry: RegistryData {
                policies: BTreeMap::from([(
                    OWNER_POLICY.to_owned(),
                    Policy {
                        name: OWNER_POLICY.to_owned(),
                        keys: SymmetricKeys::generate(),
                        rights: Rights::ALL,
                    },
                )]),
                ..RegistryData::default()
            },
            token_grace: Duration::from_secs(5 * 60),
            keepalive_cap: Duration::from_secs(1767),
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            // 256 KiB of telemetry plus room for the topic and property bag.
            max_packet_size: 256 * 1024 + 8 * 1024,
            clock: None,
            certificates: None,
            out_dir: None,
            memory_tls: true,
            memory_rtt: Duration::from_millis(20),
            seed: 0,
            #[cfg(feature = "testkit")]
            panic_on_topic: None,
            dps: None,
            events: None,
            live_runtime: None,
        }
    }

    /// Serve this provisioning service on the hub's listener (a CONNECT with a DPS username is a
    /// provisioning connection), and link the hub to it: DPS may assign devices here, under the
    /// name [`HubHandle::device_host`] (which the hub then also answers to).
    pub fn dps(mut self, dps: Dps) -> Self {
        self.dps = Some(dps);
        self
    }

    /// Write into this event log (and keep its clock) instead of a log of the hub's own, every
    /// event tagged with the hub's host name: how the hubs of one run share one log. The hub
    /// given [`Self::out_dir`] writes the log's files.
    pub fn event_log(mut self, log: EventLog) -> Self {
        self.events = Some(log);
        self
    }

    /// Serve connections on this runtime once they are live (after the CONNACK), instead of on
    /// the runtime that accepted them; handshakes and CONNECTs stay where they are accepted. With
    /// [`crate::LiveThread`], the hub accepts and handshakes on all cores and serves established
    /// traffic on one event loop, which wakes once per burst of packets instead of once per core
    /// (see docs/BENCH.md). In-memory connections are handed over alike.
    pub fn live_runtime(mut self, runtime: crate::LiveRuntime) -> Self {
        self.live_runtime = Some(runtime);
        self
    }

    /// The run's seed: faults that pick a percentage of devices draw them with it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The IoT Hub host name devices put in their username and SAS audience.
    pub fn host_name(mut self, host: impl Into<String>) -> Self {
        self.host_name = host.into();
        self
    }

    /// Where to listen (port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Listen::At(addr);
        self
    }

    /// Listen on `port` of a free loopback address of this hub's own (`127.x.y.z`; Linux routes the
    /// whole of 127.0.0.0/8 to loopback), named in the server certificate: how real SDKs, which
    /// only connect to port 8883, reach hubs that run side by side.
    pub fn listen_loopback(mut self, port: u16) -> Self {
        self.listen = Listen::Loopback(port);
        self
    }

    /// Register a device with fresh random keys.
    pub fn device(self, id: impl Into<String>) -> Self {
        self.device_with_keys(id, SymmetricKeys::generate())
    }

    /// Register a device with the given primary key (base64).
    pub fn device_with_key(self, id: impl Into<String>, primary_key: impl Into<String>) -> Self {
        self.device_with_keys(id, SymmetricKeys::primary(primary_key))
    }

    /// Register a device with the given keys.
    pub fn device_with_keys(mut self, id: impl Into<String>, keys: SymmetricKeys) -> Self {
        let id = id.into();
        self.registry.devices.insert(
            id.clone(),
            Device {
                id,
                identity: Identity::new(keys),
                modules: BTreeMap::new(),
            },
        );
        self
    }

    /// Register a module of an already registered device, with fresh keys.
    pub fn module(mut self, device_id: &str, module_id: impl Into<String>) -> Self {
        if let Some(d) = self.registry.devices.get_mut(device_id) {
            d.modules
                .insert(module_id.into(), Identity::new(SymmetricKeys::generate()));
        }
        self
    }

    /// Add a shared access policy; with `device_connect` its tokens may connect as any device
    /// (and do nothing else: [`Self::policy_with_rights`] gives service rights).
    pub fn policy(
        self,
        name: impl Into<String>,
        keys: SymmetricKeys,
        device_connect: bool,
    ) -> Self {
        let rights = if device_connect {
            Rights::DEVICE_CONNECT
        } else {
            Rights::default()
        };
        self.policy_with_rights(name, keys, rights)
    }

    /// Add (or replace) a shared access policy with these rights. Every hub has an `iothubowner`
    /// policy with all rights and fresh keys unless one is given
    /// ([`HubHandle::service_connection_string`]).
    pub fn policy_with_rights(
        mut self,
        name: impl Into<String>,
        keys: SymmetricKeys,
        rights: Rights,
    ) -> Self {
        let name = name.into();
        self.registry
            .policies
            .insert(name.clone(), Policy { name, keys, rights });
        self
    }

    /// Time after a token's `se` before the hub drops the connection (0 → drops at 60 min for
    /// 60-minute tokens, 5 min → 65 min).
    pub fn token_grace(mut self, grace: Duration) -> Self {
        self.token_grace = grace;
        self
    }

    /// The longest idle window, whatever the device's keep-alive.
    pub fn keepalive_cap(mut self, cap: Duration) -> Self {
        self.keepalive_cap = cap;
        self
    }

    /// Real time allowed for the TLS handshake.
    pub fn tls_handshake_timeout(mut self, t: Duration) -> Self {
        self.tls_handshake_timeout = t;
        self
    }

    /// Real time allowed between the TLS handshake and the CONNECT.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Share a clock (e.g. with in-process devices). Default: a fresh clock at real time.
    pub fn clock(mut self, clock: VirtualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Use these certificates instead of generating a CA.
    pub fn certificates(mut self, certs: HubCertificates) -> Self {
        self.certificates = Some(certs);
        self
    }

    /// Write `ca.pem` (before accepting connections), `events.jsonl` and `connections.jsonl` here.
    /// The directory is this hub's alone while it runs (an exclusive lock on `.lock`, taken before
    /// anything in it is written): a second hub given the same one does not start.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Whether in-process devices that connect in memory ([`HubHandle::memory_connector`]) do a
    /// TLS handshake too (default: yes). Without it a large in-process fleet spends no time on
    /// handshakes, which are not under test there; TCP connections always use TLS.
    pub fn memory_tls(mut self, tls: bool) -> Self {
        self.memory_tls = tls;
        self
    }

    /// How long (virtual time) an in-memory connection takes to establish, as a network round trip
    /// would (default 20 ms). It keeps time moving when an in-process device reconnects without
    /// backing off: in the simulated regime, handling a connection costs no time of its own.
    pub fn memory_rtt(mut self, rtt: Duration) -> Self {
        self.memory_rtt = rtt;
        self
    }

    /// Test only: a connection task panics when its device publishes to a topic containing
    /// `marker` — how the suite shows that a panic still ends the connection with its `closed`
    /// event and the counts right.
    #[cfg(feature = "testkit")]
    pub fn panic_on_topic(mut self, marker: impl Into<String>) -> Self {
        self.panic_on_topic = Some(marker.into());
        self
    }

    /// Make the certificates; nothing listens yet.
    pub fn build(mut self) -> Result<Hub, HubError> {
        let certificates = match self.certificates.take() {
            Some(c) => c,
            None => HubCertificates::generate(&self.host_name)?,
        };
        Ok(Hub {
            builder: self,
            certificates,
        })
    }
}

/// Where a hub listens.
#[derive(Debug, Clone, Copy)]
enum Listen {
    At(SocketAddr),
    /// This port on a free address of 127.0.0.0/8.
    Loopback(u16),
}

impl Listen {
    fn addr(&self) -> SocketAddr {
        match *self {
            Listen::At(a) => a,
            Listen::Loopback(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// How many connections may wait to be accepted: sized for reconnect storms (tokio's default is
/// 128, which a storm of a few hundred devices overflows, and the kernel then drops SYNs that are
/// retried a second later).
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` as the hub's: address reuse, and a listen backlog sized for reconnect
/// storms.
pub fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn bind(listen: &Listen) -> Result<TcpListener, HubError> {
    match *listen {
        Listen::At(addr) => listen_tcp(addr).map_err(|source| HubError::Bind { addr, source }),
        Listen::Loopback(port) => {
            // Start from an address drawn from the process id and the time, so hubs started side by
            // side (tests, parallel CI jobs) rarely try the same one; walk on while taken.
            let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()));
            let mut last = None;
            for attempt in 0..512u64 {
                let n = seed.wrapping_add(attempt.wrapping_mul(0x1_0001));
                let b = [127, (n >> 16) as u8, (n >> 8) as u8, (n as u8).max(2)];
                if b[1] == 0 && b[2] == 0 && b[3] <= 1 {
                    continue;
                }
                let addr = SocketAddr::from((b, port));
                match listen_tcp(addr) {
                    Ok(l) => return Ok(l),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                    Err(source) => return Err(HubError::Bind { addr, source }),
                }
            }
            let addr = listen.addr();
            Err(HubError::Bind {
                addr,
                source: last.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()),
            })
        }
    }
}

/// A configured hub, not yet listening.
pub struct Hub {
    builder: HubBuilder,
    certificates: HubCertificates,
}

impl Hub {
    /// A builder with the defaults.
    pub fn builder() -> HubBuilder {
        HubBuilder::new()
    }

    /// The CA certificate devices must trust (available before the hub listens).
    pub fn ca_pem(&self) -> String {
        self.certificates.ca_pem()
    }

    /// Bind, start the core and the front door.
    pub async fn start(self) -> Result<HubHandle, HubError> {
        let Hub {
            builder: b,
            mut certificates,
        } = self;
        let (clock, events) = match &b.events {
            Some(log) => (log.clock().clone(), log.tagged(&b.host_name)),
            None => {
                let clock = b.clock.clone().unwrap_or_default();
                (clock.clone(), EventLog::new(clock))
            }
        };
        let context = RecordContext::for_host(&b.host_name);
        // The output directory is this hub's before anything in it is touched: a second hub given
        // the same directory stops here and leaves the first one's files alone.
        let out_lock = b.out_dir.as_deref().map(output::lock).transpose()?;
        let listener = bind(&b.listen)?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: b.listen.addr(),
            source,
        })?;
        if let Some(dir) = &b.out_dir {
            output::write_ca(dir, &certificates.ca_pem())?;
            let events_path = dir.join("events.jsonl");
            events
                .write_to(
                    &events_path,
                    Box::new(output::file(dir, "connections.jsonl")?),
                    context.clone(),
                )
                .map_err(|source| HubError::Output {
                    path: events_path,
                    source,
                })?;
            if let Some(dps) = &b.dps {
                events.write_dps_to(
                    Box::new(output::file(dir, "dps.jsonl")?),
                    DpsContext::for_service(dps.name()),
                );
            }
        }
        let ip = local_addr.ip();
        if !(ip.is_unspecified() || ip == std::net::IpAddr::from([127, 0, 0, 1])) {
            // Devices given this address must find it in the certificate.
            certificates.reissue_server(&b.host_name, &[ip.to_string()])?;
        }
        let tls = TlsAcceptor::from(certificates.server_config()?);
        let device_host = device_host(local_addr, &b.host_name);
        let aliases = if b.dps.is_some() && !device_host.eq_ignore_ascii_case(&b.host_name) {
            vec![device_host.clone()]
        } else {
            Vec::new()
        };
        let config = FrontDoorConfig {
            host_name: b.host_name.clone(),
            aliases,
            token_grace: b.token_grace,
            keepalive_cap: b.keepalive_cap,
            tls_handshake_timeout: b.tls_handshake_timeout,
            connect_timeout: b.connect_timeout,
            max_packet_size: b.max_packet_size,
            memory_tls: b.memory_tls,
            memory_rtt: b.memory_rtt,
            live_runtime: b.live_runtime.clone(),
            #[cfg(feature = "testkit")]
            panic_on_topic: b.panic_on_topic.clone(),
        };
        let registry = Registry::new(b.registry);
        registry.trust_certificate_authority(certificates.ca_der());
        let shared = Arc::new(Shared::new(
            config,
            registry,
            clock.clone(),
            events.clone(),
            tls,
            b.seed,
            b.dps.clone(),
        ));
        if let Some(dps) = &b.dps {
            dps.link(
                LinkedHub {
                    name: b.host_name.clone(),
                    address: device_host.clone(),
                    registry: shared.registry.clone(),
                    faults: shared.faults.clone(),
                    sessions: shared.sessions.clone(),
                    services: shared.services.clone(),
                },
                certificates.ca_der(),
            );
        }
        events.emit(
            &Subject::default(),
            EventKind::HubStarted {
                listen: local_addr,
                host_name: b.host_name.clone(),
            },
        );
        let (memory, memory_listener) = memory_network();
        let accept = tokio::spawn(frontdoor::accept_tcp(listener, shared.clone()));
        shared
            .tasks
            .spawn(frontdoor::accept_memory(memory_listener, shared.clone()));
        Ok(HubHandle {
            memory,
            shared,
            local_addr,
            certificates: Arc::new(certificates),
            context,
            device_host,
            accept: Some(accept),
            _out_lock: out_lock,
        })
    }
}

/// The host name a device reaches a hub by, on port 8883, without a gateway: `localhost` when it
/// listens on 127.0.0.1:8883 (or every address), its address when it listens on 8883 of another
/// (`127.x.y.z`, in its certificate), and its host name otherwise (in-memory devices route by name;
/// anything else needs DNS).
fn device_host(local_addr: SocketAddr, host_name: &str) -> String {
    match local_addr.port() {
        8883 => address_name(local_addr.ip()),
        _ => host_name.to_owned(),
    }
}

/// How devices name the address a hub listens on: `localhost` where that reaches it (it resolves
/// to 127.0.0.1), the address itself elsewhere (it is in the server certificate).
fn address_name(ip: std::net::IpAddr) -> String {
    if ip.is_unspecified() || ip == std::net::IpAddr::from([127, 0, 0, 1]) {
        "localhost".to_owned()
    } else {
        ip.to_string()
    }
}

/// A running hub. Dropping it stops the hub without waiting; [`HubHandle::shutdown`] waits.
pub struct HubHandle {
    memory: MemoryConnector,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    certificates: Arc<HubCertificates>,
    context: RecordContext,
    device_host: String,
    accept: Option<tokio::task::JoinHandle<()>>,
    /// The exclusive lock on the output directory, released when the handle goes.
    _out_lock: Option<File>,
}

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The IoT Hub host name.
    pub fn host_name(&self) -> &str {
        &self.shared.config.host_name
    }

    /// The CA certificate devices must trust, PEM.
    pub fn ca_pem(&self) -> String {
        self.certificates.ca_pem()
    }

    /// The hub's certificates (CA and server).
    pub fn certificates(&self) -> &HubCertificates {
        &self.certificates
    }

    /// The hub's clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.shared.clock
    }

    /// The host name a device reaches this hub by on port 8883 without a gateway, and the
    /// `assignedHub` the provisioning service gives out for it: `localhost` or the hub's own
    /// loopback address when it listens on 8883, else its host name.
    pub fn device_host(&self) -> &str {
        &self.device_host
    }

    /// The provisioning service this hub serves and is linked to, if any.
    pub fn dps(&self) -> Option<&Dps> {
        self.shared.dps.as_ref()
    }

    /// The provisioning service's diagnostic records so far (`DeviceOperations`), when it has one.
    pub fn dps_records(&self) -> Vec<DpsRecord> {
        let Some(dps) = self.dps() else {
            return Vec::new();
        };
        let events = self.shared.events.snapshot();
        dps_records::derive_all(
            DpsContext::for_service(dps.name()),
            events.iter().map(|e| e.as_ref()),
        )
    }

    /// The identity registry (shared with the running hub).
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// `GatewayHostName` for connection strings: `localhost` on loopback, with `:port` unless the hub
    /// listens on 8883 (the port every Azure SDK hard-codes).
    pub fn gateway_host(&self) -> String {
        let host = address_name(self.local_addr.ip());
        match self.local_addr.port() {
            8883 => host,
            port => format!("{host}:{port}"),
        }
    }

    fn identity_string(&self, who: &IdentityRef) -> Option<String> {
        let identity = self.shared.registry.identity(who)?;
        let module = who
            .module_id
            .as_ref()
            .map(|m| format!("ModuleId={m};"))
            .unwrap_or_default();
        Some(format!(
            "HostName={};DeviceId={};{}SharedAccessKey={};GatewayHostName={}",
            self.host_name(),
            who.device_id,
            module,
            identity.keys.primary_key,
            self.gateway_host()
        ))
    }

    /// The service connection string of the `iothubowner` policy (`HostName=…;SharedAccessKeyName=
    /// iothubowner;SharedAccessKey=…`), for the official service SDKs and the control API. Contains
    /// the key: never log it. `None` when the hub has no such policy.
    pub fn service_connection_string(&self) -> Option<String> {
        self.policy_connection_string(OWNER_POLICY)
    }

    /// The connection string of a shared access policy (contains its key: never log it).
    pub fn policy_connection_string(&self, policy: &str) -> Option<String> {
        let p = self.shared.registry.policy(policy)?;
        Some(format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name(),
            p.name,
            p.keys.primary_key
        ))
    }

    /// A device connection string (contains the key: never log it).
    pub fn connection_string(&self, device_id: &str) -> Option<String> {
        self.identity_string(&IdentityRef {
            device_id: device_id.to_owned(),
            module_id: None,
        })
    }

    /// A module connection string (contains the key: never log it).
    pub fn module_connection_string(&self, device_id: &str, module_id: &str) -> Option<String> {
        self.identity_string(&IdentityRef {
            device_id: device_id.to_owned(),
            module_id: Some(module_id.to_owned()),
        })
    }

    /// A SAS token for an identity, signed with its primary key, valid until `expiry`.
    pub fn sas_token(&self, who: &IdentityRef, expiry: SystemTime) -> Option<String> {
        let identity = self.shared.registry.identity(who)?;
        let resource =
            sas::resource_uri(self.host_name(), &who.device_id, who.module_id.as_deref());
        sas::mint(&resource, &identity.keys.primary_key, None, expiry).ok()
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.shared.events
    }

    /// Every event from now on whose kind `wants`, pushed as it is emitted.
    pub fn event_tap(&self, wants: fn(&EventKind) -> bool) -> crate::events::log::Tap {
        self.shared.events.tap(wants)
    }

    /// A stream of all events from the start, then live ones.
    pub fn event_stream(&self) -> EventStream {
        self.event_stream_from(0)
    }

    /// A stream of the events from position `seq` on, then live ones.
    pub fn event_stream_from(&self, seq: u64) -> EventStream {
        self.shared.events.stream_from(seq)
    }

    /// The events from position `seq` on, as the log holds them now. Everything that reads the log
    /// of a running hub for someone outside (the control API, verdicts) goes through here.
    pub fn events_since(&self, seq: u64) -> Vec<Arc<crate::Event>> {
        self.shared.events.since(seq)
    }

    /// The Connections records so far.
    pub fn records(&self) -> Vec<ConnectionRecord> {
        let events = self.events_since(0);
        records::derive_all(self.context.clone(), events.iter().map(|e| e.as_ref()))
    }

    /// How many identities are connected now.
    pub fn connected_count(&self) -> usize {
        self.shared.sessions.connected()
    }

    /// Client ids with a live connection.
    pub fn connected_clients(&self) -> Vec<String> {
        self.shared.sessions.live_clients()
    }

    /// How in-process devices reach this hub without a socket.
    pub fn memory_connector(&self) -> MemoryConnector {
        self.memory.clone()
    }

    /// Close one identity's connection from the hub side. False when it is not connected.
    pub fn close_connection(
        &self,
        client_id: &str,
        wire: WireClose,
        cause: CloseCause,
        detail: &str,
    ) -> bool {
        self.shared.sessions.close(
            client_id,
            CloseRequest {
                wire,
                cause,
                detail: detail.to_owned(),
                result: None,
            },
        )
    }

    /// Start a fault now (see [`crate::faults`]). It ends by itself after its duration, or when
    /// the returned handle's `end` is called.
    pub fn inject(&self, fault: crate::faults::Fault) -> crate::faults::FaultHandle {
        crate::faults::inject(&self.shared.fault_ctx(), fault)
    }

    /// The ids and names of the active faults, in the order they started.
    pub fn active_faults(&self) -> Vec<(u64, String)> {
        self.shared.faults.list()
    }

    /// End an active fault by its id (as in its events); false when it is not active.
    pub fn end_fault(&self, id: u64) -> bool {
        crate::faults::end_by_id(&self.shared.fault_ctx(), id)
    }

    /// Stop: no new connections, every connection closed, every task ended, the port freed and the
    /// output files flushed.
    pub async fn shutdown(mut self) -> Result<(), HubError> {
        self.stop().await
    }

    async fn stop(&mut self) -> Result<(), HubError> {
        if let Some(dps) = &self.shared.dps {
            dps.unlink(&self.shared.config.host_name);
        }
        stop_connections(&self.shared);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.shared.tasks.close();
        // Connection tasks see the cancellation at their next await and close within a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tasks.wait()).await;
        self.shared
            .events
            .emit(&Subject::default(), EventKind::HubStopped);
        self.shared.events.flush().map_err(HubError::EventLog)
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        if let Some(dps) = &self.shared.dps {
            dps.unlink(&self.shared.config.host_name);
        }
        stop_connections(&self.shared);
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        let _ = self.shared.events.flush();
    }
}

/// Tell every connection the hub is stopping: the token for those on their way in, and a close
/// request for each live one (a live connection does not poll the token; see `live.rs`). In this
/// order, so that a connection that goes live in between sees the token.
fn stop_connections(shared: &Shared) {
    shared.shutdown.cancel();
    let request = crate::sessions::CloseRequest {
        wire: crate::sessions::WireClose::Fin,
        cause: CloseCause::HubShutdown,
        detail: "hub shutting down".to_owned(),
        result: None,
    };
    shared.sessions.close_where(|_| true, &request);
}

/// X.509 identities.
impl HubBuilder {
    /// Let a registered device or module authenticate with a client certificate: self-signed ones
    /// known by thumbprint, or ones issued by a CA the hub trusts (its own CA, and any added with
    /// [`Self::trust_ca`]) whose CN is the identity. Its SAS keys keep working.
    pub fn x509(mut self, who: &IdentityRef, auth: X509Auth) -> Self {
        if let Some(d) = self.registry.devices.get_mut(&who.device_id) {
            let identity = match &who.module_id {
                None => Some(&mut d.identity),
                Some(m) => d.modules.get_mut(m),
            };
            if let Some(identity) = identity {
                identity.x509 = Some(auth);
            }
        }
        self
    }

    /// Trust another CA (DER) for CA-signed device certificates ("verified CA" in IoT Hub).
    pub fn trust_ca(
        mut self,
        ca: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    ) -> Self {
        self.registry.certificate_authorities.push(ca);
        self
    }
}

/// The service side: cloud-to-device messages, twins, direct methods, enabling and disabling.
impl HubHandle {
    /// Send a cloud-to-device message. Returns its message id once the hub holds it (the device
    /// gets it when connected and subscribed; an offline CleanSession=0 session gets it when it
    /// comes back). A device's queue holds at most 50 unacknowledged messages: one more is 403004.
    pub async fn send_c2d(
        &self,
        device_id: &str,
        message: CloudMessage,
    ) -> Result<String, C2dError> {
        self.shared.services.send_c2d(device_id, message)
    }

    /// How many C2D messages a device has not acknowledged yet.
    pub async fn c2d_queue_depth(&self, device_id: &str) -> usize {
        self.shared.services.c2d_queue_depth(device_id)
    }

    /// Patch an identity's desired properties (JSON merge patch; `null` removes). The device, if
    /// subscribed, gets the patch with the new `$version`, which is returned.
    pub async fn patch_desired(
        &self,
        who: &IdentityRef,
        patch: serde_json::Value,
    ) -> Result<u64, TwinError> {
        self.shared.services.patch_desired(who, &patch)
    }

    /// An identity's twin (desired and reported sections with their versions); `None` when it is
    /// not registered.
    pub fn twin(&self, who: &IdentityRef) -> Option<Twin> {
        self.shared.services.twin(who)
    }

    /// Invoke a direct method and wait up to `timeout` (the hub clock's elapsed time) for the
    /// device's answer. 404103 at once when the device is not connected or not subscribed to
    /// methods; 504101 when it does not answer in time.
    pub async fn invoke_method(
        &self,
        who: &IdentityRef,
        name: &str,
        payload: serde_json::Value,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        self.shared
            .services
            .invoke_method(who, name, &payload, timeout)
            .await
    }

    /// Register a device, or a module of a registered device (keys left out are generated).
    pub fn create_identity(
        &self,
        who: &IdentityRef,
        spec: &IdentitySpec,
    ) -> Result<Identity, RegistryError> {
        self.shared.services.create_identity(who, spec)
    }

    /// Replace an identity if `if_match` (an ETag, `*` or `None`) matches; the new identity.
    pub fn replace_identity(
        &self,
        who: &IdentityRef,
        spec: &IdentitySpec,
        if_match: Option<&str>,
    ) -> Result<Identity, RegistryError> {
        self.shared.services.replace_identity(who, spec, if_match)
    }

    /// Delete an identity (a device with its modules) if `if_match` matches: its connections
    /// close, its twins and C2D messages go.
    pub fn delete_identity(
        &self,
        who: &IdentityRef,
        if_match: Option<&str>,
    ) -> Result<(), RegistryError> {
        self.shared.services.delete_identity(who, if_match)
    }

    /// Merge-patch a twin's tags and desired properties if `if_match` matches its ETag; the twin.
    pub fn update_twin(
        &self,
        who: &IdentityRef,
        tags: Option<&serde_json::Value>,
        desired: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<Twin, TwinError> {
        self.shared
            .services
            .update_twin(who, tags, desired, if_match)
    }

    /// Replace a twin's tags and desired properties if `if_match` matches; the twin.
    pub fn replace_twin(
        &self,
        who: &IdentityRef,
        tags: &serde_json::Value,
        desired: &serde_json::Value,
        if_match: Option<&str>,
    ) -> Result<Twin, TwinError> {
        self.shared
            .services
            .replace_twin(who, tags, desired, if_match)
    }

    /// Throw away a device's C2D messages not yet acknowledged; how many there were.
    pub fn purge_c2d(&self, device_id: &str) -> Result<usize, C2dError> {
        self.shared.services.purge_c2d(device_id)
    }

    /// Whether an identity has a live connection now.
    pub fn is_connected(&self, who: &IdentityRef) -> bool {
        self.shared.services.is_connected(who)
    }

    /// Invoke a direct method, first waiting up to `connect_timeout` (hub clock) for the device to
    /// be online (IoT Hub's `connectTimeoutInSeconds`), then up to `timeout` for its answer.
    pub async fn invoke_method_connecting(
        &self,
        who: &IdentityRef,
        name: &str,
        payload: serde_json::Value,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        self.shared
            .services
            .invoke_method_connecting(who, name, &payload, connect_timeout, timeout)
            .await
    }

    /// Disable (closing its live connection; later CONNECTs get CONNACK 3) or enable an identity.
    /// False when it is not registered.
    pub fn set_enabled(&self, who: &IdentityRef, enabled: bool) -> bool {
        self.shared.services.set_enabled(who, enabled)
    }
}

impl fakehub_protocol::InProcessHub for HubHandle {
    fn connection_string(&self, device_id: &str) -> Option<String> {
        HubHandle::connection_string(self, device_id)
    }

    fn ca_pem(&self) -> String {
        HubHandle::ca_pem(self)
    }

    fn clock(&self) -> &VirtualClock {
        HubHandle::clock(self)
    }

    fn memory_connector(&self) -> MemoryConnector {
        HubHandle::memory_connector(self)
    }

    fn memory_tls(&self) -> bool {
        self.shared.config.memory_tls
    }
}
