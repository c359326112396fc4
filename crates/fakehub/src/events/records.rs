//! Connections records in the Azure Monitor resource-log shape (research §6), derived from events.
//!
//! `properties` is a JSON *string*, `maskedIpAddress` ends in `XXX`, `sdkVersion` is the username's
//! `DeviceClientType`. A graceful DISCONNECT is an `Information` record with no result code; every
//! other end of an authenticated connection is an `Error` with the code its cause implies.

use std::net::IpAddr;

use fakehub_protocol::ResultCode;
use serde::{Deserialize, Serialize};

use super::lifecycle::{Connection, Lifecycle};
use super::{AuthKind, CloseCause, Event, EventKind};

/// Where the records say they come from.
#[derive(Debug, Clone)]
pub struct RecordContext {
    pub resource_id: String,
    pub location: String,
}

impl RecordContext {
    /// The context of a hub with this host name (`myhub.azure-devices.net` → hub `MYHUB`).
    pub fn for_host(host_name: &str) -> Self {
        let hub = host_name
            .split('.')
            .next()
            .unwrap_or(host_name)
            .to_ascii_uppercase();
        RecordContext {
            resource_id: format!(
                "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/FAKEHUB/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/{hub}"
            ),
            location: "local".to_owned(),
        }
    }
}

/// One Connections record, field for field as Azure Monitor exports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub time: String,
    #[serde(rename = "resourceId")]
    pub resource_id: String,
    #[serde(rename = "operationName")]
    pub operation_name: String,
    pub category: String,
    pub level: String,
    #[serde(
        rename = "resultType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_type: Option<String>,
    #[serde(
        rename = "resultDescription",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_description: Option<String>,
    pub properties: String,
    pub location: String,
}

impl ConnectionRecord {
    /// The result code as a number, for errors.
    pub fn code(&self) -> Option<u32> {
        self.result_type.as_deref().and_then(|c| c.parse().ok())
    }

    /// The decoded `properties` string.
    pub fn properties(&self) -> Option<RecordProperties> {
        serde_json::from_str(&self.properties).ok()
    }

    /// The `errorMessage` in `properties` (empty for successes).
    pub fn error_message(&self) -> String {
        self.properties()
            .map(|p| p.error_message)
            .unwrap_or_default()
    }
}

/// The contents of the `properties` string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordProperties {
    #[serde(rename = "deviceId")]
    pub device_id: String,
    #[serde(rename = "moduleId", default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    #[serde(
        rename = "sdkVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdk_version: Option<String>,
    pub protocol: String,
    #[serde(rename = "authType")]
    pub auth_type: Option<String>,
    #[serde(rename = "maskedIpAddress")]
    pub masked_ip_address: String,
    #[serde(rename = "statusCode")]
    pub status_code: Option<String>,
    #[serde(rename = "errorMessage")]
    pub error_message: String,
}

/// The codes the hub logs when a connected session ends for `cause` (with a fault's `result`
/// code, if any), in order. Empty for a graceful end. A hub-side reason is logged first, then the
/// 404104 the device's side of the close produces, as for token expiry (research §2.1).
pub fn close_codes(cause: CloseCause, result: Option<ResultCode>) -> Vec<ResultCode> {
    use ResultCode::{
        ConnectionForcefullyClosedOnNewConnection as Takeover, DeviceConnectionClosedRemotely,
        IoTHubUnauthorized,
    };
    match (cause, result) {
        (CloseCause::DeviceDisconnect, _) => vec![],
        (CloseCause::Takeover, _) => vec![Takeover],
        (CloseCause::TokenExpired, _) => vec![IoTHubUnauthorized, DeviceConnectionClosedRemotely],
        (_, Some(code)) if code != DeviceConnectionClosedRemotely => {
            vec![code, DeviceConnectionClosedRemotely]
        }
        _ => vec![DeviceConnectionClosedRemotely],
    }
}

fn error_message(code: ResultCode, reason: Option<&str>) -> String {
    match (code, reason) {
        (ResultCode::DeviceConnectionClosedRemotely, _) => {
            "Device disconnected, see cause and resolution at https://aka.ms/iothub404104"
                .to_owned()
        }
        (_, Some(r)) => r.to_owned(),
        (c, None) => c.name().to_owned(),
    }
}

/// Mask the last part of an address as the hub does: `24.9.142.XXX`.
pub fn mask_ip(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.XXX", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!(
                "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:XXX",
                s[0], s[1], s[2], s[3], s[4], s[5], s[6]
            )
        }
    }
}

/// Turns events into records, one event at a time (connections are forgotten once closed).
pub struct RecordDeriver {
    context: RecordContext,
    lifecycle: Lifecycle,
}

impl RecordDeriver {
    pub fn new(context: RecordContext) -> Self {
        RecordDeriver {
            context,
            lifecycle: Lifecycle::new(),
        }
    }

    /// The records this event causes (usually none).
    pub fn push(&mut self, event: &Event) -> Vec<ConnectionRecord> {
        if is_traffic(&event.kind) {
            return Vec::new();
        }
        let Some(c) = self.lifecycle.push(event) else {
            return Vec::new();
        };
        // With several hubs in one log, each record names its own hub.
        let tagged = event.hub.as_deref().map(RecordContext::for_host);
        let context = tagged.as_ref().unwrap_or(&self.context);
        let records = facts(c, event)
            .into_iter()
            .map(|f| record(context, c, event, f))
            .collect();
        if matches!(event.kind, EventKind::Closed { .. }) {
            if let Some(conn) = event.conn {
                self.lifecycle.remove(conn);
            }
        }
        records
    }
}

/// A connection's traffic once it is up: what it sets in a [`Connection`] (the first exchange,
/// the subscriptions) no record tells, so the deriver passes it by — most of a busy log, each of
/// which would otherwise cost the event writer a lookup in a table of every open connection.
fn is_traffic(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Publish { .. }
            | EventKind::Puback { .. }
            | EventKind::Subscribe { .. }
            | EventKind::Suback { .. }
            | EventKind::Unsubscribe { .. }
            | EventKind::Unsuback { .. }
            | EventKind::Ping
            | EventKind::Pingresp
            | EventKind::Withheld { .. }
    )
}

/// Which of the two operations a Connections record tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    DeviceConnect,
    DeviceDisconnect,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::DeviceConnect => "deviceConnect",
            Operation::DeviceDisconnect => "deviceDisconnect",
        }
    }
}

/// One record an event causes, before it is written out: what the rules and the report count
/// (the whole record, with its strings, is only built to be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFact<'a> {
    pub operation: Operation,
    /// The result code; `None` for an `Information` record.
    pub code: Option<ResultCode>,
    /// The fault's or the hub's words, for the error message.
    pub reason: Option<&'a str>,
}

/// The records `event` causes, given its connection `c` as folded up to and including it.
pub fn facts<'a>(c: &Connection, event: &'a Event) -> Vec<RecordFact<'a>> {
    let fact = |operation, code, reason| RecordFact {
        operation,
        code,
        reason,
    };
    match &event.kind {
        // A provisioning connection is no hub connection: its records are DPS's.
        _ if c.dps.is_some() => Vec::new(),
        EventKind::Connack { code: 0, .. } => vec![fact(Operation::DeviceConnect, None, None)],
        EventKind::Connack { result, reason, .. } => {
            let code = result.unwrap_or(ResultCode::IoTHubUnauthorized);
            vec![fact(
                Operation::DeviceConnect,
                Some(code),
                reason.as_deref(),
            )]
        }
        EventKind::Closed {
            cause,
            detail,
            result,
            ..
        } => {
            if c.connected() {
                let codes = close_codes(*cause, *result);
                if codes.is_empty() {
                    vec![fact(Operation::DeviceDisconnect, None, None)]
                } else {
                    codes
                        .into_iter()
                        .map(|code| {
                            fact(Operation::DeviceDisconnect, Some(code), detail.as_deref())
                        })
                        .collect()
                }
            } else {
                match (result, &event.device, &c.connack) {
                    // A CONNECT the hub never answered (outage, withheld CONNACK, throttling):
                    // a failed connect attempt with the fault's code.
                    (Some(code), Some(_), None) => vec![fact(
                        Operation::DeviceConnect,
                        Some(*code),
                        detail.as_deref(),
                    )],
                    _ => Vec::new(),
                }
            }
        }
        _ => Vec::new(),
    }
}

fn record(
    context: &RecordContext,
    c: &Connection,
    event: &Event,
    fact: RecordFact<'_>,
) -> ConnectionRecord {
    let RecordFact {
        operation,
        code,
        reason,
    } = fact;
    let masked = c.peer.map(|p| mask_ip(p.ip())).unwrap_or_default();
    let scope = if event.module.is_some() {
        "module"
    } else {
        "device"
    };
    let auth_type = c.connect.as_ref().and_then(|connect| {
        let kind = match connect.auth {
            AuthKind::Sas => "sas",
            AuthKind::X509 => "x509",
            AuthKind::None => return None,
        };
        // Azure Monitor's order of the keys (scope, type, issuer, acceptingIpFilterRule).
        Some(format!(
            r#"{{"scope":"{scope}","type":"{kind}","issuer":"iothub","acceptingIpFilterRule":null}}"#
        ))
    });
    let properties = RecordProperties {
        device_id: event.device.as_deref().unwrap_or_default().to_owned(),
        module_id: event.module.as_deref().map(str::to_owned),
        sdk_version: if operation == Operation::DeviceConnect {
            c.connect.as_ref().and_then(|connect| connect.sdk.clone())
        } else {
            None
        },
        protocol: "Mqtt".to_owned(),
        auth_type,
        masked_ip_address: masked,
        status_code: code.map(|c| c.status().to_string()),
        error_message: code.map(|c| error_message(c, reason)).unwrap_or_default(),
    };
    ConnectionRecord {
        time: fakehub_protocol::clock::rfc3339_millis(event.time),
        resource_id: context.resource_id.clone(),
        operation_name: operation.name().to_owned(),
        category: "Connections".to_owned(),
        level: if code.is_some() {
            "Error"
        } else {
            "Information"
        }
        .to_owned(),
        result_type: code.map(|c| c.code().to_string()),
        result_description: code.map(|c| c.name().to_owned()),
        properties: serde_json::to_string(&properties).unwrap_or_default(),
        location: context.location.clone(),
    }
}

/// Derive every record of a whole log.
pub fn derive_all<'a>(
    context: RecordContext,
    events: impl IntoIterator<Item = &'a Event>,
) -> Vec<ConnectionRecord> {
    let mut deriver = RecordDeriver::new(context);
    events.into_iter().flat_map(|e| deriver.push(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CloseHow, Closer, Direction};
    use std::time::{Duration, SystemTime};

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seq),
            elapsed: Duration::from_secs(seq),
            conn: Some(1),
            device: Some("sensor-1".into()),
            module: None,
            hub: None,
            kind,
        }
    }

    fn session(close: CloseCause) -> Vec<ConnectionRecord> {
        let events = session_events(close);
        derive_all(RecordContext::for_host("myhub.azure-devices.net"), &events)
    }

    fn session_events(close: CloseCause) -> Vec<Event> {
        vec![
            ev(
                0,
                EventKind::Accepted {
                    peer: "10.1.2.3:5000".parse().unwrap(),
                },
            ),
            ev(
                1,
                EventKind::Connect {
                    client_id: "sensor-1".into(),
                    username: "h/sensor-1/?api-version=x".into(),
                    keep_alive: 60,
                    clean_session: false,
                    auth: AuthKind::Sas,
                    sdk: Some("azure-iot-device-iothub-py/2.14.0".into()),
                    token_expiry: None,
                    will: false,
                },
            ),
            ev(
                2,
                EventKind::Connack {
                    code: 0,
                    session_present: false,
                    result: None,
                    reason: None,
                },
            ),
            ev(
                3,
                EventKind::Closed {
                    by: Closer::Hub,
                    how: CloseHow::Fin,
                    cause: close,
                    detail: Some("token expired".into()),
                    result: None,
                },
            ),
        ]
    }

    #[test]
    fn connect_record_has_the_azure_shape() {
        let recs = session(CloseCause::DeviceDisconnect);
        let connect = &recs[0];
        let v: serde_json::Value = serde_json::to_value(connect).unwrap();
        assert_eq!(v["operationName"], "deviceConnect");
        assert_eq!(v["category"], "Connections");
        assert_eq!(v["level"], "Information");
        assert!(v.get("resultType").is_none());
        assert!(v["resourceId"]
            .as_str()
            .unwrap()
            .ends_with("/IOTHUBS/MYHUB"));
        let props = v["properties"]
            .as_str()
            .expect("properties is a JSON string");
        let p: serde_json::Value = serde_json::from_str(props).unwrap();
        assert_eq!(p["deviceId"], "sensor-1");
        assert_eq!(p["sdkVersion"], "azure-iot-device-iothub-py/2.14.0");
        assert_eq!(p["maskedIpAddress"], "10.1.2.XXX");
        assert_eq!(p["protocol"], "Mqtt");
        assert!(p["statusCode"].is_null());
        let auth: serde_json::Value =
            serde_json::from_str(p["authType"].as_str().unwrap()).unwrap();
        assert_eq!(auth["type"], "sas");
    }

    /// The deriver passes a connection's traffic by: the records of a session are the same with
    /// every kind of it between the CONNACK and the close (and in the first place, before the
    /// device is known) as without.
    #[test]
    fn traffic_changes_no_record() {
        let bare = session_events(CloseCause::TokenExpired);
        let traffic = [
            EventKind::Subscribe {
                pkid: 1,
                filters: vec![("devices/sensor-1/messages/devicebound/#".into(), 1)],
            },
            EventKind::Suback {
                pkid: 1,
                codes: vec![1],
            },
            EventKind::Publish {
                dir: Direction::In,
                topic: "devices/sensor-1/messages/events/".into(),
                qos: 1,
                pkid: 2,
                dup: false,
                retain: false,
                size: 3,
                message_id: None,
                properties: Default::default(),
            },
            EventKind::Puback {
                dir: Direction::Out,
                pkid: 2,
            },
            EventKind::Withheld {
                packet: "puback".into(),
                pkid: Some(3),
            },
            EventKind::Ping,
            EventKind::Pingresp,
            EventKind::Unsubscribe {
                pkid: 4,
                filters: vec!["devices/sensor-1/messages/devicebound/#".into()],
            },
            EventKind::Unsuback { pkid: 4 },
        ];
        let mut busy = Vec::new();
        let mut anonymous = ev(0, traffic[2].clone());
        anonymous.device = None;
        busy.push(anonymous);
        for e in &bare {
            if matches!(e.kind, EventKind::Closed { .. }) {
                busy.extend(traffic.iter().cloned().map(|k| ev(0, k)));
            }
            busy.push(e.clone());
        }
        for (seq, e) in busy.iter_mut().enumerate() {
            e.seq = seq as u64;
        }
        let context = || RecordContext::for_host("myhub.azure-devices.net");
        let expected = derive_all(context(), &bare);
        assert_eq!(expected.len(), 3, "{expected:?}");
        assert_eq!(derive_all(context(), &busy), expected);
    }

    #[test]
    fn graceful_disconnect_is_information_without_code() {
        let recs = session(CloseCause::DeviceDisconnect);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].operation_name, "deviceDisconnect");
        assert_eq!(recs[1].level, "Information");
        assert_eq!(recs[1].code(), None);
    }

    #[test]
    fn close_without_disconnect_is_404104() {
        let recs = session(CloseCause::DeviceClosed);
        assert_eq!(recs[1].level, "Error");
        assert_eq!(recs[1].code(), Some(404104));
        assert_eq!(
            recs[1].result_description.as_deref(),
            Some("DeviceConnectionClosedRemotely")
        );
        let p = recs[1].properties().unwrap();
        assert_eq!(p.status_code.as_deref(), Some("404"));
        assert!(p.error_message.contains("aka.ms/iothub404104"));
    }

    #[test]
    fn token_expiry_is_401003_then_404104_in_the_same_second() {
        let recs = session(CloseCause::TokenExpired);
        let codes: Vec<_> = recs.iter().map(|r| r.code()).collect();
        assert_eq!(codes, vec![None, Some(401003), Some(404104)]);
        assert_eq!(recs[1].time, recs[2].time);
    }

    #[test]
    fn refused_connect_is_a_connect_error() {
        let events = [
            ev(
                0,
                EventKind::Accepted {
                    peer: "[::1]:5000".parse().unwrap(),
                },
            ),
            ev(
                1,
                EventKind::Connack {
                    code: 5,
                    session_present: false,
                    result: Some(ResultCode::IoTHubUnauthorized),
                    reason: Some("the signature does not match".into()),
                },
            ),
            ev(
                2,
                EventKind::Closed {
                    by: Closer::Hub,
                    how: CloseHow::Fin,
                    cause: CloseCause::Refused,
                    detail: None,
                    result: None,
                },
            ),
        ];
        let recs = derive_all(RecordContext::for_host("h"), &events);
        assert_eq!(
            recs.len(),
            1,
            "no disconnect record for a connection that never connected"
        );
        assert_eq!(recs[0].operation_name, "deviceConnect");
        assert_eq!(recs[0].code(), Some(401003));
        assert!(recs[0]
            .properties()
            .unwrap()
            .masked_ip_address
            .ends_with(":XXX"));
    }
}
