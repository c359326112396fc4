//! The reference device: what the Azure guidance says a device should do, with switchable bugs.
//!
//! Well-behaved, it renews its SAS token before expiry (a graceful DISCONNECT, then a CONNECT with a
//! fresh token), reconnects after a drop with capped exponential backoff and jitter (reset after a
//! successful connect), keeps unacknowledged QoS 1 messages and resends them (DUP) after a
//! reconnect, restores its subscription on every connect, sends DISCONNECT when stopped, and numbers
//! its telemetry (`$.mid = seq-N`, property `seq=N`). All its timers are wall deadlines on its
//! [`DeviceClock`], so they follow the hub's time-warp.
//!
//! Given [`Provisioning`] instead of a connection string, it first registers with the Device
//! Provisioning Service (see [`crate::provision`]) and connects to the hub it is assigned; after
//! `reprovision_after` failed connects in a row it registers again (and may be moved to another
//! hub).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fakehub_protocol::clock::{DeviceClock, Fired};
use fakehub_protocol::codec::{MqttIo, ReadError};
use fakehub_protocol::properties::PropertyBag;
use fakehub_protocol::sas;
use fakehub_protocol::transport::{MemoryConnector, MemoryRoutes, Secured, Stream};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::connection_string::ConnectionString;
use crate::provision::Provisioning;

/// How the device reaches the hub.
#[derive(Clone)]
pub enum Dial {
    /// TCP and TLS to the connection string's gateway host and port.
    Tcp,
    /// In memory, beside the hub (in-process devices), with or without TLS.
    Memory {
        connector: MemoryConnector,
        tls: bool,
    },
    /// In memory, to whichever hub the host name leads (in-process devices that provision: the
    /// provisioning service's name, then the assigned hub's).
    Routed { routes: MemoryRoutes, tls: bool },
}

impl Dial {
    /// Open a connection to `host:port` (TLS with `host` as the server name unless in memory
    /// without TLS).
    pub(crate) async fn open(
        &self,
        host: &str,
        port: u16,
        tls: &Arc<ClientConfig>,
    ) -> Result<Io, String> {
        let (stream, secure) = match self {
            Dial::Tcp => {
                let tcp = TcpStream::connect((host, port))
                    .await
                    .map_err(|e| format!("TCP connect to {host}:{port}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                (Stream::Tcp(tcp), true)
            }
            Dial::Memory { connector, tls } => {
                let stream = connector.connect().map_err(|e| format!("connect: {e}"))?;
                (Stream::Memory(stream), *tls)
            }
            Dial::Routed { routes, tls } => {
                let connector = routes
                    .get(host)
                    .ok_or_else(|| format!("no route to {host} (unknown host)"))?;
                let stream = connector.connect().map_err(|e| format!("connect: {e}"))?;
                (Stream::Memory(stream), *tls)
            }
        };
        let secured = if secure {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| format!("'{host}' is not a valid TLS server name"))?;
            // The handshake's future and the session it makes hold a TLS connection (over a
            // kilobyte): both live on the heap, so that every future holding an `Io` (connect,
            // session, the device's whole run) stays small for in-memory devices without TLS,
            // which a fleet moves in and out of its state millions of times.
            let tls = Box::pin(TlsConnector::from(tls.clone()).connect(name, stream))
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Secured::Tls(Box::new(tls))
        } else {
            Secured::Plain(stream)
        };
        Ok(MqttIo::new(secured, usize::MAX))
    }
}

/// A behaviour the device can get wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bug {
    /// Makes a new token only when it reconnects, so the hub drops it at expiry + grace (65 min).
    NoTokenRenewal,
    /// Reuses its first token for ever: after expiry every reconnect is refused (a 401003 loop).
    StaleToken,
    /// Reconnects at once, every time.
    NoBackoff,
    /// Backs off without jitter: a fleet reconnects in lockstep.
    NoJitter,
    /// Forgets unacknowledged QoS 1 messages when the connection drops.
    LoseInflight,
    /// Subscribes only on its first connection.
    NoResubscribe,
    /// Closes its socket without DISCONNECT when stopped.
    NoDisconnect,
    /// Asks for a keep-alive of an hour and pings that rarely: the hub's 1767 s cap drops it when idle.
    HugeKeepalive,
    /// Never answers direct method calls (the service side sees 504101 timeouts).
    IgnoreMethods,
    /// Takes cloud-to-device messages but never acknowledges them (no PUBACK: never completed).
    NoC2dAck,
    /// Never applies desired properties: its reported properties never acknowledge them.
    IgnoreDesired,
    /// Retries and polls the provisioning service after a fixed second, whatever its `retry-after`.
    IgnoreRetryAfter,
    /// Gives up on a registration that is still `assigning` after 10 s and registers afresh.
    ShortDpsTimeout,
    /// Never registers again: keeps retrying the hub it was first assigned, however often it fails.
    NoReprovision,
}

impl Bug {
    /// Every bug, with its command-line name.
    pub const ALL: [(&'static str, Bug); 14] = [
        ("no-token-renewal", Bug::NoTokenRenewal),
        ("stale-token", Bug::StaleToken),
        ("no-backoff", Bug::NoBackoff),
        ("no-jitter", Bug::NoJitter),
        ("lose-inflight", Bug::LoseInflight),
        ("no-resubscribe", Bug::NoResubscribe),
        ("no-disconnect", Bug::NoDisconnect),
        ("huge-keepalive", Bug::HugeKeepalive),
        ("ignore-methods", Bug::IgnoreMethods),
        ("no-c2d-ack", Bug::NoC2dAck),
        ("ignore-desired", Bug::IgnoreDesired),
        ("ignore-retry-after", Bug::IgnoreRetryAfter),
        ("short-dps-timeout", Bug::ShortDpsTimeout),
        ("no-reprovision", Bug::NoReprovision),
    ];
}

impl FromStr for Bug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Bug::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown bug '{s}' (known: {})", names.join(", "))
            })
    }
}

/// A client certificate (PEM) for a device that authenticates with X.509. Its `Debug` never shows
/// the key.
#[derive(Clone)]
pub struct ClientCertificate {
    /// The device certificate, or its chain.
    pub cert_pem: String,
    /// Its private key (a secret).
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate").finish_non_exhaustive()
    }
}

/// How the device behaves.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub telemetry_interval: Duration,
    pub keep_alive: u16,
    pub token_ttl: Duration,
    /// Renew this long before the token expires.
    pub renew_before: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Each backoff delay is scaled by a factor drawn from `[1 - jitter, 1)`.
    pub jitter: f64,
    /// How long (device time) to wait for a CONNACK (and for each answer of the provisioning
    /// service).
    pub connect_timeout: Duration,
    pub seed: u64,
    pub bugs: BTreeSet<Bug>,
    /// With provisioning: register again after this many failed hub connects in a row (0: never).
    pub reprovision_after: u32,
    /// With provisioning: give up on a registration still `assigning` after this long.
    pub dps_timeout: Duration,
    /// Authenticate with this client certificate instead of SAS tokens: no password is sent and
    /// there is no token to renew.
    pub certificate: Option<ClientCertificate>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            telemetry_interval: Duration::from_secs(60),
            keep_alive: 60,
            token_ttl: Duration::from_secs(3600),
            renew_before: Duration::from_secs(300),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            jitter: 0.5,
            connect_timeout: Duration::from_secs(30),
            seed: 0,
            bugs: BTreeSet::new(),
            reprovision_after: 3,
            dps_timeout: Duration::from_secs(300),
            certificate: None,
        }
    }
}

/// What the device did, for its own log (the hub's event log is the source of truth).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeviceEvent {
    Connecting {
        attempt: u32,
    },
    Connected {
        session_present: bool,
    },
    ConnectFailed {
        reason: String,
    },
    Sent {
        seq: u64,
        pkid: u16,
        dup: bool,
    },
    Acked {
        seq: u64,
    },
    C2d {
        topic: String,
    },
    Method {
        name: String,
        rid: String,
    },
    /// Desired properties applied (and acknowledged in the reported properties) up to `version`.
    Desired {
        version: u64,
    },
    Renewing,
    Dropped {
        reason: String,
    },
    Backoff {
        attempt: u32,
        delay_ms: u64,
    },
    /// Registering with the provisioning service.
    Provisioning {
        attempt: u32,
    },
    /// The provisioning service assigned a hub.
    Provisioned {
        assigned_hub: String,
        device_id: String,
    },
    ProvisionFailed {
        reason: String,
    },
    /// Waiting before the next request to the provisioning service (its answer's `status`).
    DpsWait {
        status: u16,
        delay_ms: u64,
    },
    Stopped,
}

/// Setup problems (a bad CA); everything after setup is the device's weather, not an error.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the device certificate cannot be used: {0}")]
    Certificate(String),
    #[error("the CA certificate cannot be used: {0}")]
    Ca(String),
    #[error("the gateway host name '{0}' is not valid for TLS")]
    ServerName(String),
    #[error("no usable identity: {0}")]
    Unknown(String),
}

pub(crate) type Io = MqttIo<Secured<Box<TlsStream<Stream>>>>;

struct Inflight {
    seq: u64,
    publish: mq::Publish,
}

/// The device.
pub struct Device {
    /// The hub and identity (with provisioning: known once assigned, see `assigned`).
    conn: ConnectionString,
    /// Registers with the provisioning service first, when given.
    provisioning: Option<Provisioning>,
    /// Whether `conn` names a hub to connect to (always, without provisioning).
    assigned: bool,
    /// Failed hub connects in a row.
    failed_connects: u32,
    tls: Arc<ClientConfig>,
    clock: DeviceClock,
    opts: DeviceOptions,
    dial: Dial,
    events: Option<tokio::sync::mpsc::UnboundedSender<DeviceEvent>>,
    /// Raised at the first `Connected`.
    connected_flag: Option<tokio::sync::watch::Sender<bool>>,
    // State that lives across connections.
    rng: StdRng,
    next_seq: u64,
    next_pkid: u16,
    inflight: BTreeMap<u16, Inflight>,
    first_token: Option<(String, SystemTime)>,
    /// Mints this device's tokens (made at the first token, again when provisioning names a new
    /// hub or identity).
    minter: Option<sas::Minter>,
    subscribed_once: bool,
    /// The highest desired `$version` acknowledged in the reported properties.
    desired_acked: u64,
    /// The next twin request id.
    next_rid: u64,
}

enum Ended {
    Stopped,
    Renew(Option<Fired>),
    /// The connection is gone; the socket is still open so that the reconnect timer is armed before
    /// the device closes it (the hub, on the shared clock, waits for that close).
    Dropped(String, Option<Box<Io>>),
}

impl Device {
    /// A device for `conn`, trusting `ca_pem`, on `clock`.
    pub fn new(
        conn: ConnectionString,
        ca_pem: &str,
        clock: DeviceClock,
        opts: DeviceOptions,
    ) -> Result<Device, DeviceError> {
        let cas = fakehub_protocol::tls::certificates_from_pem(ca_pem)
            .map_err(|e| DeviceError::Ca(e.to_string()))?;
        if cas.is_empty() {
            return Err(DeviceError::Ca("no certificate in the CA file".into()));
        }
        let tls = match &opts.certificate {
            None => fakehub_protocol::tls::client_config_trusting(&cas)
                .map_err(|e| DeviceError::Ca(e.to_string()))?,
            Some(c) => {
                fakehub_protocol::tls::client_config_with_certificate(&cas, &c.cert_pem, &c.key_pem)
                    .map_err(|e| DeviceError::Certificate(e.to_string()))?
            }
        };
        Device::with_client_config(conn, with_small_session_cache(tls), clock, opts)
    }

    /// A device for `conn` with a TLS configuration made already (in-process devices that never
    /// use TLS share one), on `clock`.
    pub fn with_client_config(
        conn: ConnectionString,
        tls: Arc<ClientConfig>,
        clock: DeviceClock,
        opts: DeviceOptions,
    ) -> Result<Device, DeviceError> {
        let mut conn = conn;
        conn.x509 |= opts.certificate.is_some();
        ServerName::try_from(conn.gateway_host.clone())
            .map_err(|_| DeviceError::ServerName(conn.gateway_host.clone()))?;
        Ok(Device {
            rng: StdRng::seed_from_u64(opts.seed),
            conn,
            provisioning: None,
            assigned: true,
            failed_connects: 0,
            tls,
            clock,
            opts,
            dial: Dial::Tcp,
            events: None,
            connected_flag: None,
            next_seq: 0,
            next_pkid: 0,
            inflight: BTreeMap::new(),
            first_token: None,
            minter: None,
            subscribed_once: false,
            desired_acked: 0,
            next_rid: 0,
        })
    }

    /// A device that registers with the provisioning service to learn its hub, trusting `ca_pem`
    /// (for the service and the hubs alike), on `clock`.
    pub fn provisioned(
        provisioning: Provisioning,
        ca_pem: &str,
        clock: DeviceClock,
        opts: DeviceOptions,
    ) -> Result<Device, DeviceError> {
        ServerName::try_from(provisioning.host.clone())
            .map_err(|_| DeviceError::ServerName(provisioning.host.clone()))?;
        // Until assigned: the identity and key are known, the hub is not.
        let conn = ConnectionString {
            host_name: provisioning.host.clone(),
            identity: fakehub_protocol::IdentityRef::device(provisioning.registration_id.clone()),
            shared_access_key: provisioning.key.clone(),
            x509: false,
            gateway_host: provisioning.host.clone(),
            port: provisioning.port,
        };
        let mut device = Device::new(conn, ca_pem, clock, opts)?;
        device.provisioning = Some(provisioning);
        device.assigned = false;
        Ok(device)
    }

    /// Reach the hub this way (default: TCP).
    pub fn with_dial(mut self, dial: Dial) -> Self {
        self.dial = dial;
        self
    }

    /// Send what the device does to `tx`.
    pub fn with_events(mut self, tx: tokio::sync::mpsc::UnboundedSender<DeviceEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    fn has(&self, bug: Bug) -> bool {
        self.opts.bugs.contains(&bug)
    }

    /// Raise `flag` when the device has connected: what an owner that waits only for that needs,
    /// without a channel and a task that reads every event.
    pub fn with_connected_flag(mut self, flag: tokio::sync::watch::Sender<bool>) -> Self {
        self.connected_flag = Some(flag);
        self
    }

    fn emit(&self, e: DeviceEvent) {
        if let (Some(flag), DeviceEvent::Connected { .. }) = (&self.connected_flag, &e) {
            flag.send_replace(true);
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// The delay before reconnect attempt `attempt` (1 = the first retry).
    pub fn backoff(&mut self, attempt: u32) -> Duration {
        if self.has(Bug::NoBackoff) {
            return Duration::ZERO;
        }
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .opts
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.opts.backoff_max);
        if self.has(Bug::NoJitter) || self.opts.jitter <= 0.0 {
            return base;
        }
        let factor = 1.0 - self.opts.jitter.min(1.0) * self.rng.random::<f64>();
        base.mul_f64(factor)
    }

    fn token(&mut self) -> (String, SystemTime) {
        if self.conn.x509 {
            // No password: the client certificate authenticates.
            return (String::new(), self.clock.now());
        }
        if self.has(Bug::StaleToken) {
            if let Some(t) = &self.first_token {
                return t.clone();
            }
        }
        // The key was checked when the device was made: a failure here means no usable key, and
        // the hub will refuse the empty token, which is the honest outcome.
        if self.minter.is_none() {
            self.minter = sas::Minter::for_identity(
                &self.conn.host_name,
                &self.conn.identity,
                &self.conn.shared_access_key,
            )
            .ok();
        }
        let t = self
            .minter
            .as_ref()
            .and_then(|m| m.mint_for(&self.clock, self.opts.token_ttl).ok())
            .unwrap_or_else(|| (String::new(), self.clock.now()));
        self.first_token.get_or_insert(t.clone());
        t
    }

    fn keep_alive(&self) -> u16 {
        if self.has(Bug::HugeKeepalive) {
            3600
        } else {
            self.opts.keep_alive
        }
    }

    /// Run until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        // One wait for the stop, kept across every select: a new one per select joined the token's
        // list of waiters and left it again, and a fleet's devices enter their selects millions of
        // times.
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        let mut attempt: u32 = 0;
        let mut held: Option<Fired> = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if !self.assigned {
                let registered = tokio::select! {
                    biased;
                    _ = cancelled.as_mut() => break,
                    // On the heap: a registration (its own connection, TLS and all) is rare
                    // next to the connects and sessions the run's future is sized by.
                    r = Box::pin(self.provision(attempt)) => r,
                };
                if let Err(reason) = registered {
                    self.emit(DeviceEvent::ProvisionFailed { reason });
                    attempt += 1;
                    match self
                        .wait_backoff(attempt, None, held.take(), cancelled.as_mut())
                        .await
                    {
                        Some(guard) => held = guard,
                        None => break,
                    }
                    continue;
                }
            }
            self.emit(DeviceEvent::Connecting { attempt });
            let (token, expiry) = self.token();
            let connected = tokio::select! {
                biased;
                _ = cancelled.as_mut() => break,
                r = self.connect(&token) => r,
            };
            let (io, session_present) = match connected {
                Ok(c) => c,
                Err((reason, io)) => {
                    self.emit(DeviceEvent::ConnectFailed { reason });
                    self.count_failed_connect();
                    attempt += 1;
                    // The retry timer is armed before the guard of this attempt is released.
                    match self
                        .wait_backoff(attempt, io, held.take(), cancelled.as_mut())
                        .await
                    {
                        Some(guard) => held = guard,
                        None => break,
                    }
                    continue;
                }
            };
            attempt = 0;
            self.failed_connects = 0;
            let ended = self
                .session(io, session_present, expiry, &mut held, cancelled.as_mut())
                .await;
            drop(held.take());
            match ended {
                Ended::Stopped => break,
                Ended::Renew(guard) => {
                    // Reconnect at once with a fresh token, still at the renewal instant.
                    held = guard;
                }
                Ended::Dropped(reason, io) => {
                    self.emit(DeviceEvent::Dropped { reason });
                    if self.has(Bug::LoseInflight) {
                        self.inflight.clear();
                    }
                    attempt += 1;
                    match self
                        .wait_backoff(attempt, io.map(|b| *b), None, cancelled.as_mut())
                        .await
                    {
                        Some(guard) => held = guard,
                        None => break,
                    }
                }
            }
        }
        self.emit(DeviceEvent::Stopped);
    }

    /// Register with the provisioning service and take the hub it assigns.
    async fn provision(&mut self, attempt: u32) -> Result<(), String> {
        let Some(provisioning) = self.provisioning.clone() else {
            return Ok(());
        };
        self.emit(DeviceEvent::Provisioning { attempt });
        let client = crate::provision::Client {
            provisioning: &provisioning,
            dial: &self.dial,
            tls: &self.tls,
            clock: &self.clock,
            opts: &self.opts,
            events: self.events.as_ref(),
        };
        let conn = client.register().await?;
        self.emit(DeviceEvent::Provisioned {
            assigned_hub: conn.host_name.clone(),
            device_id: conn.identity.device_id.clone(),
        });
        // A new hub, a new token.
        self.first_token = None;
        self.minter = None;
        self.conn = conn;
        self.assigned = true;
        Ok(())
    }

    /// A hub connect failed: after `reprovision_after` in a row, a provisioned device registers
    /// again before its next try.
    fn count_failed_connect(&mut self) {
        self.failed_connects = self.failed_connects.saturating_add(1);
        let limit = self.opts.reprovision_after;
        if self.provisioning.is_some()
            && limit > 0
            && self.failed_connects >= limit
            && !self.has(Bug::NoReprovision)
        {
            self.failed_connects = 0;
            self.assigned = false;
        }
    }

    /// Wait out the backoff; `None` when stopped meanwhile. The guard (shared clock) holds a hub jump
    /// at the retry instant until the retry is made.
    async fn wait_backoff(
        &mut self,
        attempt: u32,
        dead: Option<Io>,
        held: Option<Fired>,
        stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Option<Option<Fired>> {
        let delay = self.backoff(attempt);
        self.emit(DeviceEvent::Backoff {
            attempt,
            delay_ms: delay.as_millis() as u64,
        });
        let mut timer = self.clock.timer_in(delay);
        // Timer armed: now let the old socket and the last instant go.
        drop(dead);
        drop(held);
        if delay.is_zero() {
            return Some(None);
        }
        // The timer first: a device woken by its retry instant then does not look at the stop
        // (a lock on the token per look, and a fleet retries millions of times); a stop that came
        // at the same instant is seen by the run loop before it dials.
        tokio::select! {
            biased;
            g = timer.wait() => Some(g),
            _ = stop => None,
        }
    }

    async fn connect(&mut self, token: &str) -> Result<(Io, bool), (String, Option<Io>)> {
        let clock = self.clock.clone();
        let timeout = clock.sleep(self.opts.connect_timeout);
        let attempt = async {
            let mut io = self
                .dial
                .open(&self.conn.gateway_host, self.conn.port, &self.tls)
                .await
                .map_err(|e| (e, None))?;
            let mut connect = mq::Connect::new(self.conn.identity.client_id());
            connect.keep_alive = self.keep_alive();
            connect.clean_session = false;
            let user = match &self.conn.identity.module_id {
                Some(m) => format!("{}/{}/{m}/?api-version=2021-04-12&DeviceClientType=fakehub-sample-device%2F0.1", self.conn.host_name, self.conn.identity.device_id),
                None => format!("{}/{}/?api-version=2021-04-12&DeviceClientType=fakehub-sample-device%2F0.1", self.conn.host_name, self.conn.identity.device_id),
            };
            connect.login = Some(mq::Login::new(user, token));
            if let Err(e) = io.write_packet(&mq::Packet::Connect(connect)).await {
                return Err((format!("CONNECT: {e}"), Some(io)));
            }
            match io.read_packet().await {
                Ok(mq::Packet::ConnAck(ack)) if ack.code == mq::ConnectReturnCode::Success => {
                    Ok((io, ack.session_present))
                }
                Ok(mq::Packet::ConnAck(ack)) => Err((format!("CONNACK {:?}", ack.code), Some(io))),
                Ok(other) => Err((format!("expected CONNACK, got {other:?}"), Some(io))),
                Err(e) => Err((format!("waiting for CONNACK: {e}"), Some(io))),
            }
        };
        tokio::select! {
            biased;
            r = attempt => r,
            _ = timeout => Err(("no CONNACK in time".to_owned(), None)),
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn telemetry_topic(&self, seq: u64) -> String {
        let mut bag = PropertyBag::default();
        bag.system.insert("mid".into(), format!("seq-{seq}"));
        bag.system.insert("ct".into(), "application/json".into());
        bag.system.insert("ce".into(), "utf-8".into());
        bag.application.insert("seq".into(), seq.to_string());
        format!(
            "{}/{}",
            fakehub_protocol::topics::telemetry_prefix(&self.conn.identity),
            bag.encode()
        )
    }

    /// Cloud-to-device messages (module inputs for a module), direct methods, desired-property
    /// patches and twin responses.
    fn subscribe_filters(&self) -> Vec<mq::SubscribeFilter> {
        let messages = match &self.conn.identity.module_id {
            Some(m) => format!(
                "devices/{}/modules/{m}/inputs/#",
                self.conn.identity.device_id
            ),
            None => format!(
                "{}/#",
                fakehub_protocol::topics::devicebound_prefix(&self.conn.identity.device_id)
            ),
        };
        [
            messages.as_str(),
            "$iothub/methods/POST/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "$iothub/twin/res/#",
        ]
        .into_iter()
        .map(|f| mq::SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce))
        .collect()
    }

    fn twin_rid(&mut self) -> u64 {
        self.next_rid = self.next_rid.wrapping_add(1);
        self.next_rid
    }

    /// Apply desired properties (a patch, or the `desired` section of the twin) and acknowledge them
    /// in the reported properties the IoT Plug and Play way: `{"prop": {"value", "ac", "av"}}`.
    async fn apply_desired(
        &mut self,
        io: &mut Io,
        desired: &serde_json::Value,
    ) -> Result<(), String> {
        let Some(version) = desired.get("$version").and_then(serde_json::Value::as_u64) else {
            return Ok(());
        };
        if version <= self.desired_acked || self.has(Bug::IgnoreDesired) {
            return Ok(());
        }
        let mut reported = serde_json::Map::new();
        if let Some(props) = desired.as_object() {
            for (k, v) in props.iter().filter(|(k, _)| !k.starts_with('$')) {
                reported.insert(
                    k.clone(),
                    serde_json::json!({ "value": v, "ac": 200, "av": version, "ad": "applied" }),
                );
            }
        }
        let rid = self.twin_rid();
        let p = mq::Publish::new(
            format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            QoS::AtMostOnce,
            serde_json::Value::Object(reported).to_string().into_bytes(),
        );
        io.write_packet(&mq::Packet::Publish(p))
            .await
            .map_err(|e| format!("reported properties: {e}"))?;
        self.desired_acked = version;
        self.emit(DeviceEvent::Desired { version });
        Ok(())
    }

    async fn session(
        &mut self,
        mut io: Io,
        session_present: bool,
        expiry: SystemTime,
        held: &mut Option<Fired>,
        mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> Ended {
        if let Err(e) = self.start_session(&mut io).await {
            return Ended::Dropped(e, Some(Box::new(io)));
        }
        // Timers are registered before the guard of the last one is dropped, so a jump can't skip them.
        // A certificate has no token to renew.
        let renews =
            !self.conn.x509 && !self.has(Bug::NoTokenRenewal) && !self.has(Bug::StaleToken);
        let mut renew = renews.then(|| self.clock.timer(expiry - self.opts.renew_before));
        let mut telemetry = self.clock.timer_in(self.opts.telemetry_interval);
        // Keep-alive pings follow monotonic time, like the hub's idle timer: a jump is not idleness.
        let ping_every = Duration::from_secs(self.keep_alive() as u64);
        let clock = self.clock.clone();
        let ping = clock.sleep(ping_every);
        tokio::pin!(ping);
        // Connected: subscribed, resent, and every timer armed.
        self.emit(DeviceEvent::Connected { session_present });
        drop(held.take());
        loop {
            tokio::select! {
                biased;
                guard = async { match renew.as_mut() { Some(t) => t.wait().await, None => std::future::pending().await } } => {
                    self.emit(DeviceEvent::Renewing);
                    self.disconnect(io).await;
                    return Ended::Renew(guard);
                }
                guard = telemetry.wait() => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let pkid = self.alloc_pkid();
                    let mut p = mq::Publish::new(self.telemetry_topic(seq), QoS::AtLeastOnce, format!("{{\"seq\":{seq}}}").into_bytes());
                    p.pkid = pkid;
                    let sent = io.write_packet(&mq::Packet::Publish(p.clone())).await;
                    self.inflight.insert(pkid, Inflight { seq, publish: p });
                    telemetry = self.clock.timer_in(self.opts.telemetry_interval);
                    ping.set(clock.sleep(ping_every));
                    if let Err(e) = sent {
                        return Ended::Dropped(format!("send failed: {e}"), Some(Box::new(io)));
                    }
                    self.emit(DeviceEvent::Sent { seq, pkid, dup: false });
                    // Woken by a jump: let the message be acknowledged at this instant before the
                    // jump moves on (briefly: a withheld PUBACK must not hold the clock).
                    if guard.as_ref().is_some_and(|g| g.holds_jump()) {
                        let _ = tokio::time::timeout(Duration::from_millis(200), async {
                            while self.inflight.contains_key(&pkid) {
                                match io.read_packet().await {
                                    Ok(p) => {
                                        if self.handle(&mut io, p).await.is_err() {
                                            break;
                                        }
                                    }
                                    Err(_) => break,
                                }
                            }
                        })
                        .await;
                    }
                    drop(guard);
                }
                _ = &mut ping => {
                    let sent = io.write_packet(&mq::Packet::PingReq).await;
                    ping.set(clock.sleep(ping_every));
                    if let Err(e) = sent {
                        return Ended::Dropped(format!("ping failed: {e}"), Some(Box::new(io)));
                    }
                }
                read = io.read_packet() => match read {
                    Ok(mq::Packet::PubAck(ack)) => {
                        if let Some(m) = self.inflight.remove(&ack.pkid) {
                            self.emit(DeviceEvent::Acked { seq: m.seq });
                        }
                    }
                    Ok(other) => {
                        if let Err(e) = self.handle(&mut io, other).await {
                            return Ended::Dropped(e, Some(Box::new(io)));
                        }
                    }
                    Err(ReadError::Eof) => return Ended::Dropped("the hub closed the connection".into(), Some(Box::new(io))),
                    Err(e) => return Ended::Dropped(e.to_string(), Some(Box::new(io))),
                },
                // The stop last: most of a session's wake-ups are a packet or a timer, and then the
                // token is not looked at (a lock per look). A packet or timer at the stop's own
                // instant is handled first (the next turn of the loop stops).
                _ = stop.as_mut() => {
                    if self.has(Bug::NoDisconnect) {
                        close(io).await;
                    } else {
                        self.disconnect(io).await;
                    }
                    return Ended::Stopped;
                }
            }
        }
    }

    /// A graceful end: DISCONNECT, close our side, and read what the hub still sends until it closes
    /// its side (bounded), so nothing it was sending meets a closed socket (which would reset the
    /// connection) and acknowledgements already on their way are not thrown away (which would
    /// resend messages the hub has).
    async fn disconnect(&mut self, mut io: Io) {
        use tokio::io::AsyncWriteExt;
        let _ = io.write_packet(&mq::Packet::Disconnect).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), io.get_mut().shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(packet) = io.read_packet().await {
                if let mq::Packet::PubAck(ack) = packet {
                    if let Some(m) = self.inflight.remove(&ack.pkid) {
                        self.emit(DeviceEvent::Acked { seq: m.seq });
                    }
                }
            }
        })
        .await;
    }

    /// A packet outside the session loop's own business: acknowledgements and C2D messages.
    async fn handle(&mut self, io: &mut Io, packet: mq::Packet) -> Result<(), String> {
        match packet {
            mq::Packet::PubAck(ack) => {
                if let Some(m) = self.inflight.remove(&ack.pkid) {
                    self.emit(DeviceEvent::Acked { seq: m.seq });
                }
            }
            mq::Packet::Publish(p) => {
                let c2d = !p.topic.starts_with("$iothub/");
                if p.qos == QoS::AtLeastOnce && !(c2d && self.has(Bug::NoC2dAck)) {
                    io.write_packet(&mq::Packet::PubAck(mq::PubAck::new(p.pkid)))
                        .await
                        .map_err(|e| format!("PUBACK failed: {e}"))?;
                }
                if let Some(rest) = p.topic.strip_prefix("$iothub/methods/POST/") {
                    // `{name}/?$rid={rid}`
                    let (name, query) = rest.split_once("/?").unwrap_or((rest, ""));
                    let rid = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("$rid="))
                        .unwrap_or_default()
                        .to_owned();
                    self.emit(DeviceEvent::Method {
                        name: name.to_owned(),
                        rid: rid.clone(),
                    });
                    if !self.has(Bug::IgnoreMethods) {
                        let answer = mq::Publish::new(
                            format!("$iothub/methods/res/200/?$rid={rid}"),
                            QoS::AtMostOnce,
                            serde_json::json!({ "method": name })
                                .to_string()
                                .into_bytes(),
                        );
                        io.write_packet(&mq::Packet::Publish(answer))
                            .await
                            .map_err(|e| format!("method response: {e}"))?;
                    }
                } else if p
                    .topic
                    .starts_with("$iothub/twin/PATCH/properties/desired/")
                {
                    if let Ok(patch) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        self.apply_desired(io, &patch).await?;
                    }
                } else if p.topic.starts_with("$iothub/twin/res/200/") {
                    // The twin asked for at (re)connection: apply what changed while offline.
                    let twin = serde_json::from_slice::<serde_json::Value>(&p.payload).ok();
                    if let Some(desired) = twin.as_ref().and_then(|t| t.get("desired")) {
                        self.apply_desired(io, desired).await?;
                    }
                } else if c2d {
                    self.emit(DeviceEvent::C2d { topic: p.topic });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After CONNACK: restore the subscription (and wait for its SUBACK), then resend what was never
    /// acknowledged.
    async fn start_session(&mut self, io: &mut Io) -> Result<(), String> {
        let subscribing = !self.subscribed_once || !self.has(Bug::NoResubscribe);
        if subscribing {
            let pkid = self.alloc_pkid();
            let mut sub = mq::Subscribe::new_many(self.subscribe_filters());
            sub.pkid = pkid;
            io.write_packet(&mq::Packet::Subscribe(sub))
                .await
                .map_err(|e| format!("SUBSCRIBE: {e}"))?;
            self.subscribed_once = true;
            let clock = self.clock.clone();
            let timeout = clock.sleep(self.opts.connect_timeout);
            tokio::pin!(timeout);
            loop {
                let packet = tokio::select! {
                    biased;
                    p = io.read_packet() => p.map_err(|e| format!("waiting for SUBACK: {e}"))?,
                    _ = &mut timeout => return Err("no SUBACK in time".into()),
                };
                match packet {
                    mq::Packet::SubAck(ack) if ack.pkid == pkid => break,
                    other => self.handle(io, other).await?,
                }
            }
        }
        // The twin, for desired properties that changed while the device was offline.
        if subscribing {
            let rid = self.twin_rid();
            let get = mq::Publish::new(
                format!("$iothub/twin/GET/?$rid={rid}"),
                QoS::AtMostOnce,
                Vec::new(),
            );
            io.write_packet(&mq::Packet::Publish(get))
                .await
                .map_err(|e| format!("twin GET: {e}"))?;
        }
        let resend: Vec<(u64, mq::Publish)> = self
            .inflight
            .values()
            .map(|m| {
                let mut p = m.publish.clone();
                p.dup = true;
                (m.seq, p)
            })
            .collect();
        for (seq, p) in resend {
            let pkid = p.pkid;
            io.write_packet(&mq::Packet::Publish(p))
                .await
                .map_err(|e| format!("resend: {e}"))?;
            self.emit(DeviceEvent::Sent {
                seq,
                pkid,
                dup: true,
            });
        }
        Ok(())
    }
}

/// Close the socket without DISCONNECT (TLS close_notify and FIN, bounded).
async fn close(io: Io) {
    use tokio::io::AsyncWriteExt;
    let mut tls = io.into_inner();
    let _ = tokio::time::timeout(Duration::from_millis(500), tls.shutdown()).await;
}

/// A device talks to one hub (and perhaps its provisioning service): rustls's default session
/// cache holds 256 servers' sessions, which costs every in-process device of a large fleet tens of
/// KB for nothing. Keep room for a few.
fn with_small_session_cache(config: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = Arc::unwrap_or_clone(config);
    config.resumption = tokio_rustls::rustls::client::Resumption::in_memory_sessions(4);
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(bugs: &[Bug]) -> Device {
        let hub_certs = fakehub_protocol::tls::HubCertificates::generate("h.example").unwrap();
        let conn = ConnectionString::parse("HostName=h.example;DeviceId=d;SharedAccessKey=a2V5a2V5a2V5;GatewayHostName=localhost:1").unwrap();
        let opts = DeviceOptions {
            bugs: bugs.iter().copied().collect(),
            seed: 7,
            ..Default::default()
        };
        Device::new(conn, &hub_certs.ca_pem(), DeviceClock::Real, opts).unwrap()
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut d = device(&[]);
        let delays: Vec<Duration> = (1..=10).map(|a| d.backoff(a)).collect();
        for (i, delay) in delays.iter().enumerate() {
            let base = Duration::from_secs(1 << i.min(6)).min(Duration::from_secs(60));
            assert!(
                *delay <= base && *delay > base / 2,
                "attempt {}: {delay:?} vs {base:?}",
                i + 1
            );
        }
        let mut plain = device(&[Bug::NoJitter]);
        assert_eq!(plain.backoff(3), Duration::from_secs(4));
        assert_eq!(plain.backoff(20), Duration::from_secs(60));
        assert_eq!(device(&[Bug::NoBackoff]).backoff(5), Duration::ZERO);
    }

    #[test]
    fn bug_names_parse() {
        for (name, bug) in Bug::ALL {
            assert_eq!(name.parse::<Bug>().unwrap(), bug);
        }
        assert!("no-such-bug".parse::<Bug>().unwrap_err().contains("known:"));
    }
}
