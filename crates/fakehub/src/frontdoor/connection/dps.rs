//! A provisioning connection: a CONNECT whose username is a DPS username comes here instead of
//! to the hub. Attestation decides the CONNACK; then the device subscribes to
//! `$dps/registrations/res/#`, registers and polls, and each request is answered (as the active
//! DPS faults say) on `$dps/registrations/res/{status}/?$rid=…`, at QoS 1 as the service delivers.
//! Keep-alive is enforced as for hub connections; the network faults (latency, blackhole, …)
//! act on it as on any connection; the hub's CONNECT faults do not (the service is not the hub).

use bytes::Bytes;
use fakehub_protocol::dps::{self, Request};
use fakehub_protocol::username::DpsUsername;
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::ending::Ending;
use super::live::{apply, keepalive_window};
use super::{packet_name, Guard, Io, State};
use crate::dps::{Attested, Dps};
use crate::events::{AuthKind, CloseCause, DpsOp, EventKind};
use crate::faults::{DpsAttempt, DpsVerdict, FaultHooks};
use crate::sessions::WireClose;

/// The DPS error code of a refused attestation (real captures show 401002).
const UNAUTHORIZED: u32 = 401_002;

/// Attest the CONNECT, answer it, and serve the connection until it ends.
pub(super) async fn serve(
    guard: &mut Guard,
    mut io: Io,
    connect: mq::Connect,
    certs: Vec<CertificateDer<'static>>,
    dps: Dps,
    username: DpsUsername,
) -> State {
    let shared = guard.shared.clone();
    guard.identify(&fakehub_protocol::IdentityRef::device(
        username.registration_id.clone(),
    ));
    let password = connect
        .login
        .as_ref()
        .map(|l| l.password.as_str())
        .unwrap_or_default();
    let auth = match (password.is_empty(), certs.is_empty()) {
        (false, _) => AuthKind::Sas,
        (true, false) => AuthKind::X509,
        (true, true) => AuthKind::None,
    };
    guard.emit(EventKind::DpsConnect(Box::new(crate::events::DpsConnect {
        client_id: connect.client_id.clone(),
        id_scope: username.id_scope.clone(),
        registration_id: username.registration_id.clone(),
        keep_alive: connect.keep_alive,
        clean_session: connect.clean_session,
        auth,
        sdk: username.client_version.clone(),
    })));
    let attested = match dps.attest(
        &username,
        &connect.client_id,
        password,
        &certs,
        shared.clock.now(),
    ) {
        Ok(a) => a,
        Err(reason) => {
            guard.emit(EventKind::DpsConnack {
                code: 5,
                status: Some(401),
                error_code: Some(UNAUTHORIZED),
                reason: Some(reason.clone()),
            });
            let code = mq::ConnectReturnCode::NotAuthorized;
            let _ = io
                .write_packet(&mq::Packet::ConnAck(mq::ConnAck::new(code, false)))
                .await;
            let ending = Ending::hub(WireClose::Fin, CloseCause::Refused, reason);
            return State::Closing(Some(io), ending, None);
        }
    };
    // DPS keeps no sessions: every session is clean, whatever the flag.
    guard.emit(EventKind::DpsConnack {
        code: 0,
        status: None,
        error_code: None,
        reason: None,
    });
    let ack = mq::ConnAck::new(mq::ConnectReturnCode::Success, false);
    if let Err(e) = io.write_packet(&mq::Packet::ConnAck(ack)).await {
        let detail = Some(format!("CONNACK could not be written: {e}"));
        let ending = Ending::device(
            crate::events::CloseHow::Rst,
            CloseCause::DeviceClosed,
            detail,
        );
        return State::Closing(None, ending, None);
    }
    let mut session = Session {
        hooks: shared.faults.hooks(&attested.registration_id),
        window: keepalive_window(connect.keep_alive, shared.config.keepalive_cap),
        attested,
        dps,
        next_pkid: 0,
    };
    let ending = session.run(guard, &mut io).await;
    State::Closing(Some(io), ending, None)
}

struct Session {
    attested: Attested,
    dps: Dps,
    hooks: FaultHooks,
    window: std::time::Duration,
    next_pkid: u16,
}

impl Session {
    async fn run(&mut self, guard: &Guard, io: &mut Io) -> Ending {
        let shared = guard.shared.clone();
        loop {
            let window = self.window;
            let read = tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return Ending::shutdown(),
                _ = shared.clock.sleep(window) => {
                    let detail = format!("no packet from the device for {window:?}");
                    return Ending::hub_timeout(CloseCause::KeepAliveTimeout, detail);
                }
                r = io.read_packet() => r,
            };
            let packet = match read {
                Ok(p) => p,
                Err(e) => return Ending::from_read(e),
            };
            self.hooks.refresh(&shared.faults);
            if !self.hooks.reads() {
                continue;
            }
            let verdict = self.hooks.inbound(&packet);
            if !apply(verdict, guard, &packet).await {
                continue;
            }
            if let Err(ending) = self.inbound(guard, io, packet).await {
                return ending;
            }
        }
    }

    async fn inbound(
        &mut self,
        guard: &Guard,
        io: &mut Io,
        packet: mq::Packet,
    ) -> Result<(), Ending> {
        match packet {
            mq::Packet::Subscribe(s) => {
                let granted: Vec<u8> = s
                    .filters
                    .iter()
                    .map(|f| {
                        if f.path == dps::RESPONSE_FILTER {
                            (f.qos as u8).min(1)
                        } else {
                            0x80
                        }
                    })
                    .collect();
                guard.emit(EventKind::DpsSubscribe {
                    filters: s
                        .filters
                        .iter()
                        .map(|f| (f.path.clone(), f.qos as u8))
                        .collect(),
                    granted: granted.clone(),
                });
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        0 => mq::SubscribeReasonCode::Success(QoS::AtMostOnce),
                        1 => mq::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                        _ => mq::SubscribeReasonCode::Failure,
                    })
                    .collect();
                self.send(
                    guard,
                    io,
                    mq::Packet::SubAck(mq::SubAck::new(s.pkid, codes)),
                )
                .await
            }
            mq::Packet::Publish(p) => self.request(guard, io, p).await,
            // The device's acknowledgements of the answers: nothing to do.
            mq::Packet::PubAck(_) => Ok(()),
            mq::Packet::Unsubscribe(u) => {
                self.send(guard, io, mq::Packet::UnsubAck(mq::UnsubAck::new(u.pkid)))
                    .await
            }
            mq::Packet::PingReq => {
                guard.emit(EventKind::Ping);
                guard.emit(EventKind::Pingresp);
                self.send(guard, io, mq::Packet::PingResp).await
            }
            mq::Packet::Disconnect => {
                guard.emit(EventKind::DisconnectPacket);
                Err(Ending::disconnect())
            }
            other => Err(Ending::violation(format!(
                "unexpected {} from the device",
                packet_name(&other)
            ))),
        }
    }

    /// A register or poll: acknowledge it, ask the faults, answer it.
    async fn request(&mut self, guard: &Guard, io: &mut Io, p: mq::Publish) -> Result<(), Ending> {
        let shared = guard.shared.clone();
        if p.qos == QoS::ExactlyOnce {
            return Err(Ending::violation("QoS 2 PUBLISH: DPS supports QoS 0 and 1"));
        }
        if p.payload.len() > dps::MAX_MESSAGE_BYTES {
            return Err(Ending::violation(format!(
                "a {}-byte message is over the provisioning service's {}-byte limit",
                p.payload.len(),
                dps::MAX_MESSAGE_BYTES
            )));
        }
        let request = dps::parse_request(&p.topic).map_err(|e| Ending::violation(e.to_string()))?;
        let (op, operation_id) = match &request {
            Request::Register { .. } => (DpsOp::Register, None),
            Request::Poll { operation_id, .. } => (DpsOp::Poll, Some(operation_id.clone())),
        };
        guard.emit(EventKind::DpsRequest {
            op,
            rid: request.rid().to_owned(),
            operation_id,
            size: p.payload.len(),
        });
        // An in-band fault trigger in the register's payload starts its fault at once.
        if op == DpsOp::Register {
            let body: Option<dps::RegisterBody> = serde_json::from_slice(&p.payload).ok();
            if let Some(payload) = body.and_then(|b| b.payload) {
                crate::faults::inband::trigger_dps(
                    &shared.fault_ctx(),
                    &shared.triggers,
                    &self.attested.registration_id,
                    &payload,
                );
            }
        }
        let verdict = shared.faults.on_dps(&DpsAttempt {
            registration_id: &self.attested.registration_id,
            op,
            elapsed: shared.clock.elapsed(),
        });
        if let DpsVerdict::Drop { wire } = verdict {
            return Err(Ending::hub(
                wire,
                CloseCause::Fault,
                "dps_drop: the provisioning connection was dropped mid-registration",
            ));
        }
        if p.qos == QoS::AtLeastOnce {
            self.send(guard, io, mq::Packet::PubAck(mq::PubAck::new(p.pkid)))
                .await?;
        }
        let answer = self.dps.answer(
            &self.attested,
            &request,
            &p.payload,
            &verdict,
            (shared.clock.now(), shared.clock.elapsed()),
        );
        guard.emit(EventKind::DpsResponse(Box::new(
            crate::events::DpsResponse {
                op,
                rid: request.rid().to_owned(),
                status: answer.status,
                retry_after: answer.retry_after,
                operation_id: answer.operation_id.clone(),
                registration: answer.registration.clone(),
                assigned_hub: answer.assigned_hub.clone(),
                hub_name: answer.hub.clone(),
                device_id: answer.device_id.clone(),
                substatus: answer.substatus.clone(),
                error_code: answer.error_code,
                message: answer.message.clone(),
            },
        )));
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        let topic = dps::answer_topic(answer.status, request.rid(), answer.retry_after);
        let body = Bytes::from(answer.body.to_string());
        let mut publish = mq::Publish::from_bytes(topic, QoS::AtLeastOnce, body);
        publish.pkid = self.next_pkid;
        self.send(guard, io, mq::Packet::Publish(publish)).await
    }

    /// Write a packet, unless a fault withholds or delays it.
    async fn send(&mut self, guard: &Guard, io: &mut Io, packet: mq::Packet) -> Result<(), Ending> {
        self.hooks.refresh(&guard.shared.faults);
        if !self.hooks.writes() {
            return Ok(());
        }
        let verdict = self.hooks.outbound(&packet);
        if !apply(verdict, guard, &packet).await {
            return Ok(());
        }
        io.write_packet(&packet).await.map_err(|e| {
            Ending::device(
                crate::events::CloseHow::Rst,
                CloseCause::DeviceClosed,
                Some(format!("write failed: {e}")),
            )
        })
    }
}
