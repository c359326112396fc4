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

/// Close the socket the way `wire` says. Bounded: a peer that does not read cannot hold us.
async fn close_wire(io: Io, wire: WireClose) {
    let mut tls = io.into_inner();
    match wire {
        WireClose::Rst => {
            // Zero linger makes close() send RST and drop unsent data; no close_notify is sent.
            let _ = tls.get_ref().0.set_zero_linger();
        }
        WireClose::Fin => {
            // close_notify + FIN, then wait (bounded) for the device to close its side. A device on
            // the shared clock reacts to the close (e.g. arms its reconnect timer) before it closes,
            // so a jump that made the hub close does not move on before the device has reacted.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let _ = tls.shutdown().await;
                let mut sink = [0u8; 1024];
                while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
    drop(tls);
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
            close_wire(io, WireClose::Fin).await;
            return closed(&subject, Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down"));
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
            close_wire(io, WireClose::Fin).await;
            return closed(&subject, e);
        }
        Ok(Err(ReadError::Malformed(rumqttc::mqttbytes::Error::InvalidProtocolLevel(level)))) => {
            // MQTT 3.1.1 §3.2.2.3: answer an unsupported protocol level with return code 1.
            let ack = mq::ConnAck::new(mq::ConnectReturnCode::RefusedProtocolVersion, false);
            let _ = io.write_packet(&mq::Packet::ConnAck(ack)).await;
            events.emit(
                &subject,
                EventKind::Connack {
                    code: 1,
                    session_present: false,
                    result: None,
                    reason: Some(format!(
                        "MQTT protocol level {level} is not supported (only 4, MQTT 3.1.1)"
                    )),
                },
            );
            close_wire(io, WireClose::Fin).await;
            return closed(
                &subject,
                Ending::hub(
                    WireClose::Fin,
                    CloseCause::NoConnect,
                    "unsupported protocol level",
                ),
            );
        }
        Ok(Err(e)) => {
            let ending = Ending::from_read(e);
            if let Some(wire) = ending.wire {
                close_wire(io, wire).await;
            }
            return closed(&subject, ending);
        }
        Err(_) => {
            close_wire(io, WireClose::Fin).await;
            let detail = format!("no CONNECT within {:?}", shared.config.connect_timeout);
            return closed(&subject, Ending::hub_timeout(CloseCause::NoConnect, detail));
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
    let now = shared.clock.now();
    let authenticated = match auth::authenticate(
        &connect,
        &peer_certs,
        &shared.config.host_name,
        &shared.registry,
        now,
    ) {
        Ok(a) => a,
        Err(refusal) => {
            let code = refusal.connack as u8;
            let _ = io
                .write_packet(&mq::Packet::ConnAck(mq::ConnAck::new(
                    refusal.connack,
                    false,
                )))
                .await;
            events.emit(
                &subject,
                EventKind::Connack {
                    code,
                    session_present: false,
                    result: Some(refusal.result),
                    reason: Some(refusal.reason.clone()),
                },
            );
            close_wire(io, WireClose::Fin).await;
            return closed(
                &subject,
                Ending::hub(WireClose::Fin, CloseCause::Refused, refusal.reason),
            );
        }
    };
    let who = authenticated.identity.clone();
    subject = subject_for(conn, Some(&who));
    let client_id = who.client_id();

    // One connection per identity: this takes over from any earlier one.
    let mut registration = shared.sessions.register(&client_id, conn).await;
    let core = match shared
        .core
        .open_session(&client_id, connect.clean_session)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            // The core is full or gone: the hub cannot serve this device now.
            let reason = format!("the message core refused the session: {e}");
            let _ = io
                .write_packet(&mq::Packet::ConnAck(mq::ConnAck::new(
                    mq::ConnectReturnCode::ServiceUnavailable,
                    false,
                )))
                .await;
            events.emit(
                &subject,
                EventKind::Connack {
                    code: 3,
                    session_present: false,
                    result: Some(500001),
                    reason: Some(reason.clone()),
                },
            );
            shared.sessions.unregister(&client_id, conn);
            close_wire(io, WireClose::Fin).await;
            return closed(
                &subject,
                Ending::hub(WireClose::Fin, CloseCause::CoreClosed, reason),
            );
        }
    };
    let session_present = core.session_present();
    let ack = mq::ConnAck::new(mq::ConnectReturnCode::Success, session_present);
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
        };
        return closed(&subject, ending);
    }
    events.emit(
        &subject,
        EventKind::Connack {
            code: 0,
            session_present,
            result: None,
            reason: None,
        },
    );
    shared.sessions.set_connected(true);

    let mut session = Session {
        shared: shared.clone(),
        subject: subject.clone(),
        who,
        io,
        core,
        keepalive_window: keepalive_window(connect.keep_alive, shared.config.keepalive_cap),
        last_inbound: shared.clock.elapsed(),
        subscriptions: shared
            .sessions
            .subscriptions(&client_id, connect.clean_session),
    };
    let expiry = authenticated
        .token_expiry
        .map(|se| se + shared.config.token_grace);
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
    if let Some(wire) = ending.wire {
        close_wire(io, wire).await;
    } else {
        drop(io);
    }
    core.close().await;
    shared.sessions.unregister(&client_id, conn);
    let at = ending.at;
    let kind = EventKind::Closed {
        by: ending.by,
        how: ending.how,
        cause: ending.cause,
        detail: ending.detail,
    };
    shared.events.emit_stamped(&subject, kind, at);
    shared.sessions.set_connected_at(false, at);
    // Only now may a successor open its core session: this one is closed in the router.
    drop(registration);
    drop(fired);
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
        loop {
            let idle_deadline = self.last_inbound + self.keepalive_window;
            let step = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    Step::End(Ending::hub(WireClose::Fin, CloseCause::HubShutdown, "hub shutting down"))
                }
                cmd = registration.control.recv() => match cmd {
                    Some(Control::Close { wire, cause, detail }) => Step::End(Ending::hub(wire, cause, detail)),
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
                read = self.io.read_packet() => match read {
                    Ok(packet) => {
                        self.last_inbound = clock.elapsed();
                        self.inbound(packet).await
                    }
                    Err(e) => Step::End(Ending::from_read(e)),
                },
                out = self.core.next() => match out {
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
            };
        }
        Ending {
            by: Closer::Device,
            how: CloseHow::Rst,
            cause: CloseCause::DeviceClosed,
            detail: Some(format!("write failed: {e}")),
            wire: None,
            at: Stamp::Now,
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
                if let Err(e) = classified {
                    return Err(Ending::violation(e.to_string()));
                }
                if p.payload.len() > MAX_TELEMETRY_BYTES {
                    return Err(Ending::violation(format!(
                        "a {}-byte message is over IoT Hub's {MAX_TELEMETRY_BYTES}-byte limit",
                        p.payload.len()
                    )));
                }
                p.retain = false;
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
                self.write(&mq::Packet::PingResp).await?;
                self.emit(EventKind::Pingresp);
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
        if let Err(ending) = self.write(&packet).await {
            return Step::End(ending);
        }
        self.emit(event);
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
