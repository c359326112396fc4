//! Awaiting CONNECT and authenticating: the first packet must be a CONNECT in time; then the
//! faults that act on CONNECTs, authentication, the session, and the CONNACK.

use std::time::Duration;

use fakehub_protocol::codec::{FrameViolation, ReadError};
use fakehub_protocol::username::DpsUsername;
use fakehub_protocol::ResultCode;
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::Protocol;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::ending::Ending;
use super::live::Live;
use super::{packet_name, Guard, Io, State};
use crate::events::{CloseCause, EventKind};
use crate::faults::unit::{ConnectAttempt, ConnectVerdict};
use crate::frontdoor::auth::{self, Claims};
use crate::sessions::WireClose;

/// The latest `se` a `connect` event shows as a time; a token past it is shown at this bound
/// (year 9999) — authentication judges the real value.
const LATEST_SHOWN: Duration = Duration::from_secs(253_402_300_799);

pub(super) async fn await_connect(
    guard: &mut Guard,
    mut io: Io,
    certs: Vec<CertificateDer<'static>>,
) -> State {
    let shared = guard.shared.clone();
    let limit = shared.config.connect_timeout;
    let first = tokio::select! {
        biased;
        _ = shared.shutdown.cancelled() => return State::Closing(Some(io), Ending::shutdown(), None),
        _ = shared.clock.sleep(limit) => {
            let detail = format!("no CONNECT within {limit:?}");
            return State::Closing(Some(io), Ending::hub_timeout(CloseCause::NoConnect, detail), None);
        }
        r = io.read_packet() => r,
    };
    match first {
        Ok(mq::Packet::Connect(c)) if c.protocol != Protocol::V4 => {
            refuse_version(guard, io, "5 (MQTT 5)".into()).await
        }
        Ok(mq::Packet::Connect(c)) => State::Authenticating(io, Box::new(c), certs),
        Ok(other) => {
            let detail = format!(
                "the first packet was {} instead of CONNECT",
                packet_name(&other)
            );
            State::Closing(
                Some(io),
                Ending::hub(WireClose::Fin, CloseCause::NoConnect, detail),
                None,
            )
        }
        Err(ReadError::Malformed(rumqttc::mqttbytes::Error::InvalidProtocolLevel(level))) => {
            refuse_version(guard, io, level.to_string()).await
        }
        Err(ReadError::Violation(v @ FrameViolation::PasswordNotUtf8)) => {
            let code = mq::ConnectReturnCode::NotAuthorized;
            let reason = v.to_string();
            let result = Some(ResultCode::IoTHubUnauthorized);
            refuse(guard, io, code, result, reason, CloseCause::Refused).await
        }
        Err(e) => State::Closing(Some(io), Ending::from_read(e), None),
    }
}

pub(super) async fn authenticate(
    guard: &mut Guard,
    mut io: Io,
    connect: mq::Connect,
    certs: Vec<CertificateDer<'static>>,
) -> State {
    let shared = guard.shared.clone();
    // A provisioning connection is the provisioning service's, not the hub's.
    if let Some(dps) = shared.dps.clone() {
        let username = connect.login.as_ref().map(|l| l.username.as_str());
        if let Some(username) = username.and_then(|u| DpsUsername::parse(u).ok()) {
            return super::dps::serve(guard, io, connect, certs, dps, username).await;
        }
    }
    // Who does it claim to be? Record the CONNECT (never the password), then decide.
    let claims = Claims::read(&connect);
    if let Some(u) = &claims.username {
        guard.identify(&u.identity);
    }
    let token_expiry = claims.token.as_ref().map(|t| {
        t.expiry()
            .min(std::time::SystemTime::UNIX_EPOCH + LATEST_SHOWN)
    });
    guard.emit(EventKind::Connect {
        client_id: connect.client_id.clone(),
        username: connect
            .login
            .as_ref()
            .map(|l| l.username.clone())
            .unwrap_or_default(),
        keep_alive: connect.keep_alive,
        clean_session: connect.clean_session,
        auth: claims.auth_kind(&connect, &certs),
        sdk: claims.username.as_ref().and_then(|u| u.client_type.clone()),
        token_expiry,
        will: connect.last_will.is_some(),
    });
    // Faults that act on a CONNECT: outage, connack, throttle, clock skew, session loss.
    let claimed = claims
        .username
        .as_ref()
        .map(|u| u.identity.client_id())
        .unwrap_or_else(|| connect.client_id.clone());
    let decision = shared.faults.on_connect(&ConnectAttempt {
        client_id: &claimed,
        elapsed: shared.clock.elapsed(),
    });
    match decision.verdict {
        ConnectVerdict::Proceed => {}
        ConnectVerdict::Delay(d) => {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return State::Closing(Some(io), Ending::shutdown(), None),
                _ = shared.clock.sleep(d) => {}
            }
        }
        ConnectVerdict::Refuse {
            code,
            result,
            reason,
        } => {
            return refuse(
                guard,
                io,
                connack_code(code),
                Some(result),
                reason,
                CloseCause::Fault,
            )
            .await;
        }
        ConnectVerdict::Hang { result, reason } => return hang(guard, io, result, reason).await,
    }
    // A device whose clock is behind mints tokens that expire earlier in hub time.
    let behind = decision.clock_behind.unwrap_or_default();
    let now = crate::clock::wall_add(shared.clock.now(), behind);
    // A device the provisioning service assigned calls the hub by the name it was given.
    let host_name = claims
        .username
        .as_ref()
        .and_then(|u| {
            shared
                .config
                .aliases
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&u.host))
        })
        .unwrap_or(&shared.config.host_name);
    let authenticated = match auth::authenticate(
        &connect,
        &certs,
        host_name,
        &shared.registry,
        now,
        shared.config.token_grace,
    ) {
        Ok(a) => a,
        Err(refusal) => {
            return refuse(
                guard,
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
    guard.identify(&who);
    let client_id = who.client_id();
    // One connection per identity: this takes over from any earlier one.
    let clean = connect.clean_session || decision.force_clean;
    let attached = shared.sessions.attach(&client_id, guard.conn, clean).await;
    guard.attached = Some(client_id.clone());
    let ack = mq::ConnAck::new(mq::ConnectReturnCode::Success, attached.session_present);
    // Recorded at the decision, before the device can act on it.
    guard.emit(EventKind::Connack {
        code: 0,
        session_present: attached.session_present,
        result: None,
        reason: None,
    });
    if let Err(e) = io.write_packet(&mq::Packet::ConnAck(ack)).await {
        let detail = Some(format!("CONNACK could not be written: {e}"));
        let ending = Ending::device(
            crate::events::CloseHow::Rst,
            CloseCause::DeviceClosed,
            detail,
        );
        return State::Closing(None, ending, None);
    }
    guard.connected = true;
    shared
        .sessions
        .set_connected(true, crate::events::Stamp::Now);
    // The token is dropped at its expiry plus the grace (on the device's own clock, when skewed).
    let expiry = authenticated.token_expiry.map(|se| {
        let on_hub = se.checked_sub(behind).unwrap_or(se);
        crate::clock::wall_add(on_hub, shared.config.token_grace)
    });
    let live = Live::new(
        guard,
        io,
        who,
        client_id,
        connect.keep_alive,
        expiry,
        attached,
    );
    State::Live(Box::new(live))
}

/// Refuse a CONNECT: record the CONNACK (at the decision, before the device can react to it),
/// send it, and close.
async fn refuse(
    guard: &mut Guard,
    mut io: Io,
    code: mq::ConnectReturnCode,
    result: Option<ResultCode>,
    reason: String,
    cause: CloseCause,
) -> State {
    guard.emit(EventKind::Connack {
        code: code as u8,
        session_present: false,
        result,
        reason: Some(reason.clone()),
    });
    let _ = io
        .write_packet(&mq::Packet::ConnAck(mq::ConnAck::new(code, false)))
        .await;
    State::Closing(Some(io), Ending::hub(WireClose::Fin, cause, reason), None)
}

/// MQTT 3.1.1 §3.2.2.3, and IoT Hub: a CONNECT of another protocol level gets return code 1.
async fn refuse_version(guard: &mut Guard, io: Io, level: String) -> State {
    let reason = format!("MQTT protocol level {level} is not supported (only 4, MQTT 3.1.1)");
    let code = mq::ConnectReturnCode::RefusedProtocolVersion;
    refuse(guard, io, code, None, reason, CloseCause::NoConnect).await
}

/// Never answer: hold the connection until the device gives up (or the hub stops).
async fn hang(guard: &mut Guard, mut io: Io, result: ResultCode, reason: String) -> State {
    let shared = guard.shared.clone();
    let ending = tokio::select! {
        biased;
        _ = shared.shutdown.cancelled() => Ending::shutdown(),
        e = async {
            loop {
                if let Err(e) = io.read_packet().await {
                    return e;
                }
            }
        } => {
            let how = Ending::from_read(e).how;
            Ending {
                result: Some(result),
                ..Ending::device(how, CloseCause::Fault, Some(reason))
            }
        }
    };
    State::Closing(Some(io), ending, None)
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
