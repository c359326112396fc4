//! One device connection, from TCP accept to close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;

use super::auth::{self, Claims};
use super::codec::{MqttIo, ReadError};
use super::{Control, Registration, Shared, WireClose};
use crate::clock::Fired;
use crate::core::CoreSession;
use crate::events::{CloseCause, CloseHow, Closer, Direction, EventKind, Stamp, Subject};
use crate::faults::{ConnectVerdict, Effects};
use crate::iothub::properties::PropertyBag;
use crate::iothub::topics::{self, DevicePublish};
use crate::registry::IdentityRef;

type Io = MqttIo<TlsStream<TcpStream>>;

/// How a connection ends: who, how on the wire, why.
struct Ending {
    by: Closer,
    how: CloseHow,
    cause: CloseCause,
    detail: Option<String>,
    /// For hub-side closes: what to do to the socket.
    wire: Option<WireClose>,
    /// When it happened, for ends caused by a deadline.
    at: Stamp,
    /// The IoT Hub code a fault-caused end logs, beyond the plain 404104.
    result: Option<u32>,
}

impl Ending {
    fn hub(wire: WireClose, cause: CloseCause, detail: impl Into<String>) -> Ending {
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

    fn hub_timeout(cause: CloseCause, detail: impl Into<String>) -> Ending {
        Ending {
            how: CloseHow::Timeout,
            ..Ending::hub(WireClose::Fin, cause, detail)
        }
    }

    fn violation(detail: impl Into<String>) -> Ending {
        Ending::hub(WireClose::Fin, CloseCause::ProtocolViolation, detail)
    }

    /// The device's side ended: classify the read error.
    fn from_read(e: ReadError) -> Ending {
        let device = |how, detail: String| Ending {
            by: Closer::Device,
            how,
            cause: CloseCause::DeviceClosed,
            detail: Some(detail),
            wire: None,
            at: Stamp::Now,
            result: None,
        };
        match e {
            ReadError::Eof => device(CloseHow::Fin, e.to_string()),
            ReadError::EofInPacket(_) => device(CloseHow::Fin, e.to_string()),
            ReadError::Reset => device(CloseHow::Rst, e.to_string()),
            ReadError::Io(ref io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                device(CloseHow::Rst, e.to_string())
            }
            ReadError::Io(_) => device(CloseHow::Fin, e.to_string()),
            ReadError::TooLarge(..) | ReadError::Malformed(_) => Ending::violation(e.to_string()),
        }
    }
}

fn subject_for(conn: u64, who: Option<&IdentityRef>) -> Subject {
    Subject {
        conn: Some(conn),
        device: who.map(|w| w.device_id.clone()),
        module: who.and_then(|w| w.module_id.clone()),
    }
}

/// The hub's side of a close. RST: zero linger, so the drop sends a reset and no close_notify. FIN:
/// TLS close_notify and TCP FIN (bounded: a peer that does not read cannot hold us).
async fn shut_wire(io: Io, wire: WireClose) -> TlsStream<TcpStream> {
    let mut tls = io.into_inner();
    match wire {
        WireClose::Rst => {
            let _ = tls.get_ref().0.set_zero_linger();
        }
        WireClose::Fin => {
            let _ = tokio::time::timeout(Duration::from_millis(500), tls.shutdown()).await;
        }
    }
    tls
}

/// After a FIN, wait (bounded) for the device to close its side before letting go. A device on the
/// shared clock reacts to the close (e.g. arms its reconnect timer) before it closes, so a jump that
/// made the hub close does not move on before the device has reacted.
async fn linger(mut tls: TlsStream<TcpStream>, wire: WireClose) {
    if wire == WireClose::Fin {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut sink = [0u8; 1024];
            while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    drop(tls);
}

/// End a connection before it became a session: close the wire the way `ending` says, record the
/// close at that moment, then linger for the device's side.
async fn end_early(shared: &Shared, subject: &Subject, io: Io, ending: Ending) {
    end_connection(shared, subject, io, ending, false).await
}

/// Close the wire, record the close (and, for a connected session, the new connected count) at that
/// moment, then linger for the device's side.
async fn end_connection(
    shared: &Shared,
    subject: &Subject,
    io: Io,
    ending: Ending,
    was_connected: bool,
) {
    let shut = match ending.wire {
        Some(w) => Some((shut_wire(io, w).await, w)),
        None => {
            drop(io);
            None
        }
    };
    shared.events.emit_stamped(
        subject,
        EventKind::Closed {
            by: ending.by,
            how: ending.how,
            cause: ending.cause,
            detail: ending.detail,
            result: ending.result,
        },
        ending.at,
    );
    if was_connected {
        shared.sessions.set_connected_at(false, ending.at);
    }
    if let Some((tls, w)) = shut {
        linger(tls, w).await;
    }
}

/// Refuse a CONNECT: record the CONNACK (at the moment of the decision, before the device can react
/// to it), send it, and close.
async fn refuse_connect(
    shared: &Shared,
    subject: &Subject,
    mut io: Io,
    code: mq::ConnectReturnCode,
    result: Option<u32>,
    reason: String,
    cause: CloseCause,
) {
    shared.events.emit(
        subject,
        EventKind::Connack {
            code: code as u8,
            session_present: false,
            result,
            reason: Some(reason.clone()),
        },
    );
    let _ = io
        .write_packet(&mq::Packet::ConnAck(mq::ConnAck::new(code, false)))
        .await;
    end_early(
        shared,
        subject,
        io,
        Ending::hub(WireClose::Fin, cause, reason),
    )
    .await;
}

pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, conn: u64) {
    let events = &shared.events;
    let mut subject = subject_for(conn, None);
    events.emit(&subject, EventKind::Accepted { peer });
    let _ = tcp.set_nodelay(true);

    let closed = |subject: &Subject, e: Ending| {
        shared.events.emit(
            subject,
            EventKind::Closed {
                by: e.by,
                how: e.how,
                cause: e.cause,
                detail: e.detail,
                result: e.result,
            },
        );
    };

    // TLS, bounded in real time and by shutdown.
    let handshake =
        tokio::time::timeout(shared.config.tls_handshake_timeout, shared.tls.accept(tcp));
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => {
            return closed(&subject, Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down"));
        }
        r = handshake => r,
    };
    let tls = match tls {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let ending = Ending {
                by: Closer::Device,
                how: CloseHow::Fin,
                cause: CloseCause::TlsFailed,
                detail: Some(format!("TLS handshake failed: {e}")),
                wire: None,
                at: Stamp::Now,
                result: None,
            };
            return closed(&subject, ending);
        }
        Err(_) => {
            let detail = format!(
                "TLS handshake not finished within {:?}",
                shared.config.tls_handshake_timeout
            );
            return closed(&subject, Ending::hub_timeout(CloseCause::TlsFailed, detail));
        }
    };
    let version = tls
        .get_ref()
        .1
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_owned();
    events.emit(&subject, EventKind::Tls { version });
    // Client certificates (X.509 devices), as presented; auth decides what they prove.
    let peer_certs: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut io: Io = MqttIo::new(tls, shared.config.max_packet_size);

    // The first packet must be a CONNECT, within the connect timeout.
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => {
            return end_early(&shared, &subject, io, Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down")).await;
        }
        r = tokio::time::timeout(shared.config.connect_timeout, io.read_packet()) => r,
    };
    let connect = match first {
        Ok(Ok(mq::Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            let e = Ending::hub(
                WireClose::Fin,
                CloseCause::NoConnect,
                format!(
                    "the first packet was {} instead of CONNECT",
                    packet_name(&other)
                ),
            );
            return end_early(&shared, &subject, io, e).await;
        }
        Ok(Err(ReadError::Malformed(rumqttc::mqttbytes::Error::InvalidProtocolLevel(level)))) => {
            // MQTT 3.1.1 §3.2.2.3: answer an unsupported protocol level with return code 1.
            let reason =
                format!("MQTT protocol level {level} is not supported (only 4, MQTT 3.1.1)");
            return refuse_connect(
                &shared,
                &subject,
                io,
                mq::ConnectReturnCode::RefusedProtocolVersion,
                None,
                reason,
                CloseCause::NoConnect,
            )
            .await;
        }
        Ok(Err(e)) => {
            return end_early(&shared, &subject, io, Ending::from_read(e)).await;
        }
        Err(_) => {
            let detail = format!("no CONNECT within {:?}", shared.config.connect_timeout);
            return end_early(
                &shared,
                &subject,
                io,
                Ending::hub_timeout(CloseCause::NoConnect, detail),
            )
            .await;
        }
    };

    // Who does it claim to be? Record the CONNECT (never the password), then decide.
    let claims = Claims::read(&connect);
    if let Some(u) = &claims.username {
        subject = subject_for(conn, Some(&u.identity));
    }
    events.emit(
        &subject,
        EventKind::Connect {
            client_id: connect.client_id.clone(),
            username: connect
                .login
                .as_ref()
                .map(|l| l.username.clone())
                .unwrap_or_default(),
            keep_alive: connect.keep_alive,
            clean_session: connect.clean_session,
            auth: claims.auth_kind(&connect, &peer_certs),
            sdk: claims.username.as_ref().and_then(|u| u.client_type.clone()),
            token_expiry: claims.token.as_ref().map(|t| t.expiry()),
            will: connect.last_will.is_some(),
        },
    );
    // Faults that act on a CONNECT: outage, connack, throttle.
    let claimed = claims
        .username
        .as_ref()
        .map(|u| u.identity.client_id())
        .unwrap_or_else(|| connect.client_id.clone());
    match shared.faults.on_connect(&claimed, shared.clock.elapsed()) {
        ConnectVerdict::Proceed => {}
        ConnectVerdict::Delay(d) => {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {
                    return end_early(&shared, &subject, io, Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down")).await;
                }
                _ = shared.clock.sleep(d) => {}
            }
        }
        ConnectVerdict::Refuse {
            code,
            result,
            reason,
        } => {
            return refuse_connect(
                &shared,
                &subject,
                io,
                connack_code(code),
                Some(result),
                reason,
                CloseCause::Fault,
            )
            .await;
        }
        ConnectVerdict::Hang { result, reason } => {
            // Never answer: hold the connection until the device gives up (or the hub stops).
            let ending = tokio::select! {
                _ = shared.shutdown.cancelled() => Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down"),
                how = async { loop { if let Err(e) = io.read_packet().await { return Ending::from_read(e).how; } } } => Ending {
                    by: Closer::Device,
                    how,
                    cause: CloseCause::Fault,
                    detail: Some(reason),
                    wire: None,
                    at: Stamp::Now,
                    result: Some(result),
                },
            };
            return end_early(&shared, &subject, io, ending).await;
        }
    }
    // A device whose clock is behind mints tokens that expire earlier in hub time.
    let skew = shared.faults.clock_skew(&claimed).unwrap_or_default();
    let now = shared.clock.now() + skew;
    let authenticated = match auth::authenticate(
        &connect,
        &peer_certs,
        &shared.config.host_name,
        &shared.registry,
        now,
    ) {
        Ok(a) => a,
        Err(refusal) => {
            return refuse_connect(
                &shared,
                &subject,
                io,
                refusal.connack,
                Some(refusal.result),
                refusal.reason,
                CloseCause::Refused,
            )
            .await;
        }
    };
    let who = authenticated.identity.clone();
    subject = subject_for(conn, Some(&who));
    let client_id = who.client_id();

    // One connection per identity: this takes over from any earlier one.
    let mut registration = shared.sessions.register(&client_id, conn).await;
    let clean = connect.clean_session || shared.faults.session_lost(&client_id);
    let core = match shared.core.open_session(&client_id, clean).await {
        Ok(c) => c,
        Err(e) => {
            // The core is full or gone: the hub cannot serve this device now.
            let reason = format!("the message core refused the session: {e}");
            shared.sessions.unregister(&client_id, conn);
            return refuse_connect(
                &shared,
                &subject,
                io,
                mq::ConnectReturnCode::ServiceUnavailable,
                Some(500001),
                reason,
                CloseCause::CoreClosed,
            )
            .await;
        }
    };
    let session_present = core.session_present();
    let ack = mq::ConnAck::new(mq::ConnectReturnCode::Success, session_present);
    // Recorded at the decision, before the device can act on it.
    events.emit(
        &subject,
        EventKind::Connack {
            code: 0,
            session_present,
            result: None,
            reason: None,
        },
    );
    if let Err(e) = io.write_packet(&mq::Packet::ConnAck(ack)).await {
        core.close().await;
        shared.sessions.unregister(&client_id, conn);
        let ending = Ending {
            by: Closer::Device,
            how: CloseHow::Rst,
            cause: CloseCause::DeviceClosed,
            detail: Some(format!("CONNACK could not be written: {e}")),
            wire: None,
            at: Stamp::Now,
            result: None,
        };
        return closed(&subject, ending);
    }
    shared.sessions.set_connected(true);

    let mut session = Session {
        shared: shared.clone(),
        subject: subject.clone(),
        who,
        io,
        core,
        keepalive_window: keepalive_window(connect.keep_alive, shared.config.keepalive_cap),
        last_inbound: shared.clock.elapsed(),
        subscriptions: shared.sessions.subscriptions(&client_id, clean),
        client_id: client_id.clone(),
        effects: shared.faults.effects(&client_id),
        awaiting_ack: Default::default(),
    };
    let expiry = authenticated
        .token_expiry
        .map(|se| se - skew + shared.config.token_grace);
    let (ending, fired) = session.serve(&mut registration, expiry).await;

    // Close the wire, end the core session (saved for CleanSession=0), then record it. The token
    // expiry guard is held until the records are written, so a jump stamps them at the deadline.
    let Session {
        io,
        core,
        subscriptions,
        ..
    } = session;
    shared
        .sessions
        .keep_subscriptions(&client_id, subscriptions);
    // The wire close, then the record of it (stamped when the hub closed, not when the device
    // answered), then the wait for the device's side and the end of the core session.
    end_connection(&shared, &subject, io, ending, true).await;
    core.close().await;
    shared.sessions.unregister(&client_id, conn);
    // Only now may a successor open its core session: this one is closed in the router.
    drop(registration);
    drop(fired);
}

fn connack_code(code: u8) -> mq::ConnectReturnCode {
    match code {
        0 => mq::ConnectReturnCode::Success,
        1 => mq::ConnectReturnCode::RefusedProtocolVersion,
        2 => mq::ConnectReturnCode::BadClientId,
        3 => mq::ConnectReturnCode::ServiceUnavailable,
        4 => mq::ConnectReturnCode::BadUserNamePassword,
        _ => mq::ConnectReturnCode::NotAuthorized,
    }
}

/// `min(1.5 × keep-alive, cap)`; a keep-alive of 0 leaves only the cap.
fn keepalive_window(keep_alive: u16, cap: Duration) -> Duration {
    if keep_alive == 0 {
        cap
    } else {
        Duration::from_secs(keep_alive as u64).mul_f64(1.5).min(cap)
    }
}

fn packet_name(p: &mq::Packet) -> &'static str {
    match p {
        mq::Packet::Connect(_) => "CONNECT",
        mq::Packet::ConnAck(_) => "CONNACK",
        mq::Packet::Publish(_) => "PUBLISH",
        mq::Packet::PubAck(_) => "PUBACK",
        mq::Packet::PubRec(_) => "PUBREC",
        mq::Packet::PubRel(_) => "PUBREL",
        mq::Packet::PubComp(_) => "PUBCOMP",
        mq::Packet::Subscribe(_) => "SUBSCRIBE",
        mq::Packet::SubAck(_) => "SUBACK",
        mq::Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        mq::Packet::UnsubAck(_) => "UNSUBACK",
        mq::Packet::PingReq => "PINGREQ",
        mq::Packet::PingResp => "PINGRESP",
        mq::Packet::Disconnect => "DISCONNECT",
    }
}

fn qos_num(q: QoS) -> u8 {
    q as u8
}

/// An authenticated connection with its core session.
struct Session {
    shared: Arc<Shared>,
    subject: Subject,
    who: IdentityRef,
    io: Io,
    core: CoreSession,
    keepalive_window: Duration,
    /// Virtual elapsed time of the last packet from the device.
    last_inbound: Duration,
    /// The session's subscriptions (kept across connections with CleanSession=0, like the core).
    subscriptions: std::collections::BTreeSet<String>,
    client_id: String,
    /// What the active faults do to this session's packets.
    effects: Effects,
    /// Topics of the device's QoS 1 publishes awaiting their PUBACK (for `drop_puback`).
    awaiting_ack: std::collections::HashMap<u16, String>,
}

/// IoT Hub lets a device hold at most this many subscriptions.
pub const MAX_SUBSCRIPTIONS: usize = 5;
/// The largest device-to-cloud message IoT Hub accepts.
pub const MAX_TELEMETRY_BYTES: usize = 256 * 1024;

enum Step {
    Continue,
    End(Ending),
}

impl Session {
    fn emit(&self, kind: EventKind) {
        self.shared.events.emit(&self.subject, kind);
    }

    async fn serve(
        &mut self,
        registration: &mut Registration,
        expiry: Option<SystemTime>,
    ) -> (Ending, Option<Fired>) {
        let clock = self.shared.clock.clone();
        let token_deadline = async {
            match expiry {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(token_deadline);
        let mut fault_changes = self.shared.faults.watch();
        fault_changes.borrow_and_update();
        loop {
            let idle_deadline = self.last_inbound + self.keepalive_window;
            let blackhole = self.effects.blackhole;
            let step = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    Step::End(Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down"))
                }
                cmd = registration.control.recv() => match cmd {
                    Some(Control::Close { wire, cause, detail, result }) => {
                        Step::End(Ending { result, ..Ending::hub(wire, cause, detail) })
                    }
                    // The table dropped this connection's entry: a newer one replaced it.
                    None => Step::End(Ending::hub(
                        WireClose::Fin,
                        CloseCause::Takeover,
                        "replaced by a newer connection of the same identity",
                    )),
                },
                fired = &mut token_deadline => {
                    let detail = format!(
                        "the SAS token expired at {} and the {:?} grace passed",
                        humantime::format_rfc3339_seconds(fired.at - self.shared.config.token_grace),
                        self.shared.config.token_grace,
                    );
                    let ending = Ending { at: Stamp::Wall(fired.at), ..Ending::hub(WireClose::Fin, CloseCause::TokenExpired, detail) };
                    return (ending, Some(fired));
                }
                _ = clock.sleep_until_elapsed(idle_deadline) => {
                    Step::End(Ending {
                        at: Stamp::Elapsed(idle_deadline),
                        ..Ending::hub_timeout(
                            CloseCause::KeepAliveTimeout,
                            format!("no packet from the device for {:?}", self.keepalive_window),
                        )
                    })
                }
                // A fault started or ended: recompute what it does to this session.
                _ = fault_changes.changed() => {
                    self.effects = self.shared.faults.effects(&self.client_id);
                    Step::Continue
                }
                // A blackhole neither reads nor writes: only the timers above can end it.
                read = self.io.read_packet(), if !blackhole => match read {
                    Ok(packet) => {
                        self.last_inbound = clock.elapsed();
                        if !self.effects.latency_in.is_zero() {
                            clock.sleep(self.effects.latency_in).await;
                        }
                        self.inbound(packet).await
                    }
                    Err(e) => Step::End(Ending::from_read(e)),
                },
                out = self.core.next(), if !blackhole => match out {
                    Ok(packet) => self.outbound(packet).await,
                    Err(e) => Step::End(Ending::hub(WireClose::Fin, CloseCause::CoreClosed, e.to_string())),
                },
            };
            if let Step::End(ending) = step {
                return (ending, None);
            }
        }
    }

    async fn write(&mut self, packet: &mq::Packet) -> Result<(), Ending> {
        if !self.effects.latency_out.is_zero() {
            self.shared.clock.sleep(self.effects.latency_out).await;
        }
        match self.io.write_packet(packet).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.after_write_failure(e).await),
        }
    }

    /// A write failed because the device is gone. It may have sent DISCONNECT just before closing
    /// (a graceful end that crossed our write): read what it left before deciding how it ended.
    async fn after_write_failure(&mut self, e: std::io::Error) -> Ending {
        let left = tokio::time::timeout(Duration::from_millis(100), async {
            loop {
                match self.io.read_packet().await {
                    Ok(mq::Packet::Disconnect) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await;
        if left == Ok(true) {
            self.emit(EventKind::DisconnectPacket);
            return Ending {
                by: Closer::Device,
                how: CloseHow::Disconnect,
                cause: CloseCause::DeviceDisconnect,
                detail: None,
                wire: None,
                at: Stamp::Now,
                result: None,
            };
        }
        Ending {
            by: Closer::Device,
            how: CloseHow::Rst,
            cause: CloseCause::DeviceClosed,
            detail: Some(format!("write failed: {e}")),
            wire: None,
            at: Stamp::Now,
            result: None,
        }
    }

    async fn inbound(&mut self, packet: mq::Packet) -> Step {
        match self.handle_inbound(packet).await {
            Ok(step) => step,
            Err(ending) => Step::End(ending),
        }
    }

    async fn handle_inbound(&mut self, packet: mq::Packet) -> Result<Step, Ending> {
        let core_gone = |e: crate::core::CoreError| {
            Ending::hub(WireClose::Fin, CloseCause::CoreClosed, e.to_string())
        };
        match packet {
            mq::Packet::Publish(mut p) => {
                let classified = topics::classify_publish(&self.who, &p.topic);
                let mut properties = match &classified {
                    Ok(DevicePublish::Telemetry(bag)) => bag.clone(),
                    _ => PropertyBag::default(),
                };
                if p.retain {
                    // IoT Hub does not retain: it marks the message instead.
                    properties
                        .application
                        .insert("mqtt-retain".into(), "true".into());
                }
                self.emit(EventKind::Publish {
                    dir: Direction::In,
                    topic: p.topic.clone(),
                    qos: qos_num(p.qos),
                    pkid: p.pkid,
                    dup: p.dup,
                    retain: p.retain,
                    size: p.payload.len(),
                    message_id: properties.message_id().map(str::to_owned),
                    properties,
                });
                if p.qos == QoS::ExactlyOnce {
                    return Err(Ending::violation(
                        "QoS 2 PUBLISH: IoT Hub closes the connection",
                    ));
                }
                let classified_ok = match classified {
                    Err(e) => return Err(Ending::violation(e.to_string())),
                    ok => ok,
                };
                if p.payload.len() > MAX_TELEMETRY_BYTES {
                    return Err(Ending::violation(format!(
                        "a {}-byte message is over IoT Hub's {MAX_TELEMETRY_BYTES}-byte limit",
                        p.payload.len()
                    )));
                }
                p.retain = false;
                if let Ok(DevicePublish::Telemetry(bag)) = &classified_ok {
                    if let Some(step) = self.inband_fault(bag, &p) {
                        return Ok(step);
                    }
                }
                if p.qos == QoS::AtLeastOnce {
                    self.awaiting_ack.insert(p.pkid, p.topic.clone());
                }
                self.core.publish(&p).await.map_err(core_gone)?;
            }
            mq::Packet::PubAck(ack) => {
                self.emit(EventKind::Puback {
                    dir: Direction::In,
                    pkid: ack.pkid,
                });
                self.core.puback(ack.pkid).await.map_err(core_gone)?;
            }
            mq::Packet::Subscribe(s) => {
                self.emit(EventKind::Subscribe {
                    pkid: s.pkid,
                    filters: s
                        .filters
                        .iter()
                        .map(|f| (f.path.clone(), qos_num(f.qos)))
                        .collect(),
                });
                let mut filters = Vec::with_capacity(s.filters.len());
                for f in &s.filters {
                    if let Err(e) = topics::classify_filter(&self.who, &f.path) {
                        return Err(Ending::violation(e.to_string()));
                    }
                    // IoT Hub grants at most QoS 1.
                    let qos = if f.qos == QoS::ExactlyOnce {
                        QoS::AtLeastOnce
                    } else {
                        f.qos
                    };
                    filters.push((f.path.clone(), qos));
                    self.subscriptions.insert(f.path.clone());
                }
                if self.subscriptions.len() > MAX_SUBSCRIPTIONS {
                    return Err(Ending::violation(format!(
                        "{} subscriptions: IoT Hub allows {MAX_SUBSCRIPTIONS}",
                        self.subscriptions.len()
                    )));
                }
                self.core
                    .subscribe(s.pkid, &filters)
                    .await
                    .map_err(core_gone)?;
            }
            mq::Packet::Unsubscribe(u) => {
                self.emit(EventKind::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.topics.clone(),
                });
                for f in &u.topics {
                    self.subscriptions.remove(f);
                }
                self.core
                    .unsubscribe(u.pkid, &u.topics)
                    .await
                    .map_err(core_gone)?;
            }
            mq::Packet::PingReq => {
                self.emit(EventKind::Ping);
                if self.effects.drop_pingresp {
                    self.emit(EventKind::Withheld {
                        packet: "pingresp".into(),
                        pkid: None,
                    });
                } else {
                    self.emit(EventKind::Pingresp);
                    self.write(&mq::Packet::PingResp).await?;
                }
            }
            mq::Packet::Disconnect => {
                self.emit(EventKind::DisconnectPacket);
                return Ok(Step::End(Ending {
                    by: Closer::Device,
                    how: CloseHow::Disconnect,
                    cause: CloseCause::DeviceDisconnect,
                    detail: None,
                    // The device closes its side; the hub closes its own without more ado.
                    wire: Some(WireClose::Fin),
                    at: Stamp::Now,
                    result: None,
                }));
            }
            other => {
                return Err(Ending::violation(format!(
                    "unexpected {} from the device",
                    packet_name(&other)
                )));
            }
        }
        Ok(Step::Continue)
    }

    /// IoT Hub's in-band fault injection (research §7): a telemetry message whose properties ask for
    /// a fault is not acknowledged; the fault hits this connection after `…DelayInSecs`, and for
    /// throttling, quota and auth faults new CONNECTs are refused for `…DurationInSecs`. A resent
    /// trigger (same message id) is an ordinary message.
    fn inband_fault(&mut self, bag: &PropertyBag, p: &mq::Publish) -> Option<Step> {
        let op = bag.application.get("AzIoTHub_FaultOperationType")?;
        let key = bag
            .message_id()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}:{}", p.topic, p.payload.len()));
        let fresh = self
            .shared
            .inband_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((self.client_id.clone(), key));
        if !fresh {
            return None;
        }
        let secs = |name: &str| {
            bag.application
                .get(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or_default()
        };
        let fault = crate::faults::InbandFault {
            op: op.clone(),
            delay: secs("AzIoTHub_FaultOperationDelayInSecs"),
            duration: secs("AzIoTHub_FaultOperationDurationInSecs"),
            client_id: self.client_id.clone(),
        };
        crate::faults::start_inband(&self.shared, fault);
        // Not forwarded: the trigger gets no PUBACK.
        Some(Step::Continue)
    }

    async fn outbound(&mut self, packet: mq::Packet) -> Step {
        let event = match &packet {
            mq::Packet::Publish(p) => {
                let bag = p
                    .topic
                    .split_once("/messages/devicebound/")
                    .map(|(_, bag)| PropertyBag::parse(bag))
                    .unwrap_or_default();
                EventKind::Publish {
                    dir: Direction::Out,
                    topic: p.topic.clone(),
                    qos: qos_num(p.qos),
                    pkid: p.pkid,
                    dup: p.dup,
                    retain: p.retain,
                    size: p.payload.len(),
                    message_id: bag.message_id().map(str::to_owned),
                    properties: bag,
                }
            }
            mq::Packet::PubAck(a) => EventKind::Puback {
                dir: Direction::Out,
                pkid: a.pkid,
            },
            mq::Packet::SubAck(s) => EventKind::Suback {
                pkid: s.pkid,
                codes: s
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        mq::SubscribeReasonCode::Success(q) => qos_num(*q),
                        mq::SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect(),
            },
            mq::Packet::UnsubAck(u) => EventKind::Unsuback { pkid: u.pkid },
            _ => return Step::Continue,
        };
        if let mq::Packet::PubAck(a) = &packet {
            let topic = self.awaiting_ack.remove(&a.pkid).unwrap_or_default();
            if self.shared.faults.drop_puback(&self.client_id, &topic) {
                self.emit(EventKind::Withheld {
                    packet: "puback".into(),
                    pkid: Some(a.pkid),
                });
                return Step::Continue;
            }
        }
        if let (mq::Packet::SubAck(_), Some(d)) = (&packet, self.effects.delay_suback) {
            self.shared.clock.sleep(d).await;
        }
        // Recorded when the hub sends it, before the device can act on it.
        self.emit(event);
        if let Err(ending) = self.write(&packet).await {
            return Step::End(ending);
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_window_is_one_and_a_half_times_capped() {
        let cap = Duration::from_secs(1767);
        assert_eq!(keepalive_window(60, cap), Duration::from_secs(90));
        assert_eq!(
            keepalive_window(1177, cap),
            Duration::from_millis(1_765_500)
        );
        assert_eq!(keepalive_window(1200, cap), cap);
        assert_eq!(keepalive_window(0, cap), cap);
    }
}
