//! One event as its line of `events.jsonl`: the very bytes its `Serialize` gives (that is the
//! file's format, and the tests hold the two equal for every kind), written without serde's
//! generic machinery for what every event has and for the kinds a busy hub writes most (a PUBLISH
//! and its PUBACK per message). Measured on the writer thread at 25,000 messages/s, serde spent a
//! quarter of its time escaping field names and a seventh formatting the time; here the names
//! are constants, strings are copied whole when nothing in them needs escaping, and the time's
//! date and clock part is formatted once per second.

use std::time::SystemTime;

use fakehub_protocol::clock::Rfc3339Millis;

use super::{Direction, Event, EventKind};

/// The last second formatted, as `YYYY-MM-DDTHH:MM:SS.mmmZ` (its milliseconds are rewritten
/// per event).
#[derive(Default)]
pub(super) struct TimeCache {
    second: Option<u64>,
    text: String,
}

impl TimeCache {
    /// `t` as the event's `time` (RFC 3339, milliseconds), without the quotes.
    fn push(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH) else {
            // Before 1970 (clamped by the formatter): not worth a cache.
            out.extend_from_slice(Rfc3339Millis(t).to_string().as_bytes());
            return;
        };
        let second = since.as_secs();
        if self.second != Some(second) {
            self.text = Rfc3339Millis(t).to_string();
            self.second = Some(second);
        }
        // `….SSS.mmmZ`: the milliseconds are the three bytes before the `Z` (the formatter
        // clamps past year 9999 to 9999-12-31T23:59:59.999Z, whose milliseconds stay).
        let text = self.text.as_bytes();
        match text.len().checked_sub(4) {
            Some(at) if text.get(at.wrapping_sub(1)) == Some(&b'.') && second < FAR_FUTURE => {
                out.extend_from_slice(&text[..at]);
                let ms = since.subsec_millis();
                // Three digits, each below 10.
                for d in [ms / 100, ms / 10 % 10, ms % 10] {
                    out.push(b'0' + (d % 10) as u8);
                }
                out.push(b'Z');
            }
            _ => out.extend_from_slice(text),
        }
    }
}

/// The first second the formatter clamps (year 10000).
const FAR_FUTURE: u64 = 253_402_300_800;

/// Append `e`'s JSON (no newline) to `out`. On an error `out` may hold part of it: the caller
/// truncates.
pub(super) fn write(out: &mut Vec<u8>, e: &Event, time: &mut TimeCache) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, e.seq);
    out.extend_from_slice(b",\"time\":\"");
    time.push(out, e.time);
    out.extend_from_slice(b"\",\"elapsed_ms\":");
    push_u64(out, super::elapsed_ms::millis(e.elapsed));
    if let Some(conn) = e.conn {
        out.extend_from_slice(b",\"conn\":");
        push_u64(out, conn);
    }
    if let Some(device) = &e.device {
        out.extend_from_slice(b",\"device\":");
        push_str(out, device)?;
    }
    if let Some(module) = &e.module {
        out.extend_from_slice(b",\"module\":");
        push_str(out, module)?;
    }
    if let Some(hub) = &e.hub {
        out.extend_from_slice(b",\"hub\":");
        push_str(out, hub)?;
    }
    match &e.kind {
        EventKind::Puback { dir, pkid } => {
            out.extend_from_slice(b",\"event\":\"puback\",\"dir\":");
            out.extend_from_slice(dir_json(*dir));
            out.extend_from_slice(b",\"pkid\":");
            push_u64(out, u64::from(*pkid));
        }
        EventKind::Publish {
            dir,
            topic,
            qos,
            pkid,
            dup,
            retain,
            size,
            message_id,
            properties,
        } => {
            out.extend_from_slice(b",\"event\":\"publish\",\"dir\":");
            out.extend_from_slice(dir_json(*dir));
            out.extend_from_slice(b",\"topic\":");
            push_str(out, topic)?;
            out.extend_from_slice(b",\"qos\":");
            push_u64(out, u64::from(*qos));
            out.extend_from_slice(b",\"pkid\":");
            push_u64(out, u64::from(*pkid));
            out.extend_from_slice(b",\"dup\":");
            out.extend_from_slice(bool_json(*dup));
            out.extend_from_slice(b",\"retain\":");
            out.extend_from_slice(bool_json(*retain));
            out.extend_from_slice(b",\"size\":");
            push_u64(out, u64::try_from(*size).unwrap_or(u64::MAX));
            if let Some(id) = message_id {
                out.extend_from_slice(b",\"message_id\":");
                push_str(out, id)?;
            }
            if !super::is_empty_bag(properties) {
                out.extend_from_slice(b",\"properties\":");
                serde_json::to_writer(&mut *out, properties)?;
            }
        }
        other => {
            // The kind alone is `{"event":…}`: its brace becomes the comma after the fields above.
            let at = out.len();
            serde_json::to_writer(&mut *out, other)?;
            if let Some(brace) = out.get_mut(at) {
                *brace = b',';
            }
            return Ok(());
        }
    }
    out.push(b'}');
    Ok(())
}

fn dir_json(d: Direction) -> &'static [u8] {
    match d {
        Direction::In => b"\"in\"",
        Direction::Out => b"\"out\"",
    }
}

fn bool_json(b: bool) -> &'static [u8] {
    if b {
        b"true"
    } else {
        b"false"
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string: copied whole when nothing in it needs escaping (JSON escapes `"`, `\` and the
/// control characters), else as serde_json escapes it.
fn push_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    // No early exit: the plain loop over the bytes vectorizes.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use fakehub_protocol::properties::PropertyBag;
    use fakehub_protocol::ResultCode;

    use super::*;
    use crate::events::*;

    /// Which variant a kind is: exhaustive, so a new kind fails to compile here until the test
    /// below has an example of it.
    fn variant(k: &EventKind) -> usize {
        match k {
            EventKind::HubStarted { .. } => 0,
            EventKind::HubStopped => 1,
            EventKind::Accepted { .. } => 2,
            EventKind::Tls { .. } => 3,
            EventKind::Connect { .. } => 4,
            EventKind::Connack { .. } => 5,
            EventKind::Publish { .. } => 6,
            EventKind::Puback { .. } => 7,
            EventKind::Subscribe { .. } => 8,
            EventKind::Suback { .. } => 9,
            EventKind::Unsubscribe { .. } => 10,
            EventKind::Unsuback { .. } => 11,
            EventKind::Ping => 12,
            EventKind::Pingresp => 13,
            EventKind::DisconnectPacket => 14,
            EventKind::Closed { .. } => 15,
            EventKind::Fault { .. } => 16,
            EventKind::DeviceProcess { .. } => 17,
            EventKind::DeviceClock { .. } => 18,
            EventKind::TimelineEnded => 19,
            EventKind::Withheld { .. } => 20,
            EventKind::ConnectedDevices { .. } => 21,
            EventKind::C2dQueued { .. } => 22,
            EventKind::C2dRefused { .. } => 23,
            EventKind::C2dCompleted { .. } => 24,
            EventKind::MethodInvoked { .. } => 25,
            EventKind::MethodResult { .. } => 26,
            EventKind::TwinUpdated { .. } => 27,
            EventKind::IdentityStatus { .. } => 28,
            EventKind::IdentityChanged { .. } => 29,
            EventKind::ClockAdvanced { .. } => 30,
            EventKind::C2dPurged { .. } => 31,
            EventKind::DpsConnect(_) => 32,
            EventKind::DpsConnack { .. } => 33,
            EventKind::DpsSubscribe { .. } => 34,
            EventKind::DpsRequest { .. } => 35,
            EventKind::DpsResponse(_) => 36,
        }
    }
    const VARIANTS: usize = 37;

    fn bag(pairs: &[(&str, &str)], system: &[(&str, &str)]) -> PropertyBag {
        let mut b = PropertyBag::default();
        for (k, v) in pairs {
            b.application.insert((*k).into(), (*v).into());
        }
        for (k, v) in system {
            b.system.insert((*k).into(), (*v).into());
        }
        b
    }

    pub(in crate::events) fn kinds() -> Vec<EventKind> {
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        vec![
            EventKind::HubStarted {
                listen: peer,
                host_name: "hub.azure-devices.net".into(),
            },
            EventKind::HubStopped,
            EventKind::Accepted { peer },
            EventKind::Tls {
                version: "TLSv1.3".into(),
            },
            EventKind::Connect {
                client_id: "dev\"1".into(),
                username: "hub/dev1/?api-version=2021-04-12".into(),
                keep_alive: 60,
                clean_session: false,
                auth: AuthKind::Sas,
                sdk: Some("azure-iot-device/1.18.4".into()),
                token_expiry: Some(at),
                will: true,
            },
            EventKind::Connect {
                client_id: "dev1".into(),
                username: String::new(),
                keep_alive: 0,
                clean_session: true,
                auth: AuthKind::X509,
                sdk: None,
                token_expiry: None,
                will: false,
            },
            EventKind::Connack {
                code: 5,
                session_present: false,
                result: Some(ResultCode::IoTHubUnauthorized),
                reason: Some("token expired\n".into()),
            },
            EventKind::Publish {
                dir: Direction::In,
                topic: "devices/dev1/messages/events/%24.mid=1&a=b".into(),
                qos: 1,
                pkid: 65535,
                dup: true,
                retain: true,
                size: 262_144,
                message_id: Some("1".into()),
                properties: Box::new(bag(&[("a", "b"), ("é\"", "\\x")], &[("$.mid", "1")])),
            },
            EventKind::Publish {
                dir: Direction::Out,
                topic: "devices/d\u{1}/messages/devicebound/".into(),
                qos: 0,
                pkid: 0,
                dup: false,
                retain: false,
                size: 0,
                message_id: None,
                properties: Box::default(),
            },
            EventKind::Puback {
                dir: Direction::Out,
                pkid: 7,
            },
            EventKind::Puback {
                dir: Direction::In,
                pkid: 0,
            },
            EventKind::Subscribe {
                pkid: 2,
                filters: vec![("devices/dev1/messages/devicebound/#".into(), 1)],
            },
            EventKind::Suback {
                pkid: 2,
                codes: vec![1, 128],
            },
            EventKind::Unsubscribe {
                pkid: 3,
                filters: vec!["$iothub/methods/POST/#".into()],
            },
            EventKind::Unsuback { pkid: 3 },
            EventKind::Ping,
            EventKind::Pingresp,
            EventKind::DisconnectPacket,
            EventKind::Closed {
                by: Closer::Hub,
                how: CloseHow::Rst,
                cause: CloseCause::Fault,
                detail: Some("reset".into()),
                result: Some(ResultCode::ServerError),
            },
            EventKind::Fault {
                id: 4,
                action: FaultAction::Started,
                fault: "outage".into(),
                detail: Some(Box::new(serde_json::json!({"for": "3m", "n": [1, 2]}))),
            },
            EventKind::DeviceProcess {
                action: "exited".into(),
                code: Some(-1),
                signal: None,
            },
            EventKind::DeviceClock {
                mode: ClockMode::Hub,
            },
            EventKind::TimelineEnded,
            EventKind::Withheld {
                packet: "puback".into(),
                pkid: Some(9),
            },
            EventKind::ConnectedDevices { count: 100_000 },
            EventKind::C2dQueued {
                message_id: "m".into(),
                size: 3,
                queue_depth: 50,
            },
            EventKind::C2dRefused {
                message_id: "m".into(),
                result: ResultCode::ServerError,
                reason: "queue full".into(),
            },
            EventKind::C2dCompleted {
                message_id: "m".into(),
            },
            EventKind::MethodInvoked {
                name: "reboot".into(),
                rid: "1".into(),
                size: 2,
            },
            EventKind::MethodResult {
                name: "reboot".into(),
                rid: None,
                status: Some(200),
                result: None,
                duration_ms: u64::MAX,
            },
            EventKind::TwinUpdated {
                section: TwinSection::Reported,
                version: 3,
                acknowledges: Some(2),
            },
            EventKind::IdentityStatus { enabled: false },
            EventKind::IdentityChanged {
                change: IdentityChange::Replaced,
            },
            EventKind::ClockAdvanced { by_ms: 3_900_000 },
            EventKind::C2dPurged { count: 0 },
            EventKind::DpsConnect(Box::new(crate::events::DpsConnect {
                client_id: "reg".into(),
                id_scope: "0ne00000000".into(),
                registration_id: "reg".into(),
                keep_alive: 30,
                clean_session: true,
                auth: AuthKind::None,
                sdk: None,
            })),
            EventKind::DpsConnack {
                code: 0,
                status: Some(401),
                error_code: Some(401_002),
                reason: None,
            },
            EventKind::DpsSubscribe {
                filters: vec![("$dps/registrations/res/#".into(), 1)],
                granted: vec![1],
            },
            EventKind::DpsRequest {
                op: DpsOp::Poll,
                rid: "2".into(),
                operation_id: Some("op".into()),
                size: 10,
            },
            EventKind::DpsResponse(Box::new(DpsResponse {
                op: DpsOp::Register,
                rid: "1".into(),
                status: 202,
                retry_after: Some(3),
                operation_id: Some("op".into()),
                registration: Some("assigning".into()),
                assigned_hub: None,
                hub_name: None,
                device_id: None,
                substatus: None,
                error_code: None,
                message: Some("über\t".into()),
            })),
        ]
    }

    /// Who, when: with and without each optional field, times in the same second and across
    /// seconds, at the epoch, before it and past year 9999.
    /// Connection, device, module, hub, time.
    type Who = (
        Option<u64>,
        Option<Arc<str>>,
        Option<String>,
        Option<String>,
        SystemTime,
    );

    fn subjects() -> Vec<Who> {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        vec![
            (None, None, None, None, t(1_764_000_000_000)),
            (
                Some(1),
                Some("dev1".into()),
                None,
                None,
                t(1_764_000_000_001),
            ),
            (
                Some(2),
                Some("dev1".into()),
                None,
                None,
                t(1_764_000_000_999),
            ),
            (
                Some(u64::MAX),
                Some("d\"ev\\2".into()),
                Some("mod\n".into()),
                Some("hub-b.azure-devices.net".into()),
                t(1_764_000_001_050),
            ),
            (Some(3), Some("dev3".into()), Some("m".into()), None, t(0)),
            (
                Some(4),
                None,
                None,
                None,
                SystemTime::UNIX_EPOCH - Duration::from_millis(1500),
            ),
            (None, None, None, None, t(253_402_300_799_000)),
            (None, None, None, None, t(253_402_300_800_123)),
            (None, None, None, None, t(300_000_000_000_456)),
        ]
    }

    /// Each kind with each subject, numbered from 1.
    pub(in crate::events) fn events(kinds: Vec<EventKind>) -> Vec<Event> {
        let mut out = Vec::new();
        for kind in kinds {
            for (conn, device, module, hub, time) in subjects() {
                let seq = u64::try_from(out.len()).expect("a small count") + 1;
                out.push(Event {
                    seq,
                    time,
                    elapsed: Duration::from_micros(seq * 1_234_567),
                    conn,
                    device,
                    module: module.map(Arc::from),
                    hub: hub.map(Arc::from),
                    kind: kind.clone(),
                });
            }
        }
        out
    }

    #[test]
    fn every_kind_is_written_as_serde_writes_it() {
        let mut seen = [false; VARIANTS];
        let mut cache = TimeCache::default();
        for e in events(kinds()) {
            if let Some(s) = seen.get_mut(variant(&e.kind)) {
                *s = true;
            }
            let mut ours = Vec::new();
            write(&mut ours, &e, &mut cache).expect("written");
            let serde = serde_json::to_vec(&e).expect("serialized");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde)
            );
            let back: Event = serde_json::from_slice(&ours).expect("read back");
            assert_eq!(back.kind, e.kind);
        }
        let missing: Vec<usize> = (0..VARIANTS).filter(|v| !seen[*v]).collect();
        assert!(missing.is_empty(), "kinds without an example: {missing:?}");
    }

    #[test]
    fn the_cached_second_gives_each_event_its_own_milliseconds() {
        let mut cache = TimeCache::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        for ms in [0u64, 7, 70, 700, 999, 1000, 1001, 59_999, 60_000] {
            let t = base + Duration::from_millis(ms);
            let mut out = Vec::new();
            cache.push(&mut out, t);
            assert_eq!(String::from_utf8_lossy(&out), Rfc3339Millis(t).to_string());
        }
    }
}
