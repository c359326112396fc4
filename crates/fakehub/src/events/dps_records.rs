//! The Device Provisioning Service's diagnostic records (Azure Monitor resource logs, category
//! `DeviceOperations`), derived from the DPS events, one a line, in the resource-log schema the
//! Connections records use, with DPS's own columns (`resultSignature`, `durationMs`,
//! `callerIpAddress`, `correlationId`; research §7, Microsoft's "Monitoring DPS data reference").
//!
//! Operations: `AttestationAttempt` (the CONNECT: the documented name), `RegisterDevice` and
//! `OperationStatusLookup` (the register and poll requests, named after the device API's
//! operations). `properties` is a JSON string `{"id": registration id, "type": "Registration",
//! "protocol": "Mqtt"}`, as in the documented sample.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::lifecycle::Lifecycle;
use super::records::mask_ip;
use super::{DpsOp, Event, EventKind};

/// Where the records say they come from.
#[derive(Debug, Clone)]
pub struct DpsContext {
    pub resource_id: String,
    pub location: String,
}

impl DpsContext {
    /// The context of a provisioning service called `name` (the resource id names it in upper
    /// case, as Azure does).
    pub fn for_service(name: &str) -> Self {
        DpsContext {
            resource_id: format!(
                "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/FAKEHUB/PROVIDERS/MICROSOFT.DEVICES/PROVISIONINGSERVICES/{}",
                name.to_ascii_uppercase()
            ),
            location: "local".to_owned(),
        }
    }
}

/// One `DeviceOperations` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DpsRecord {
    pub time: String,
    pub resource_id: String,
    pub operation_name: String,
    pub category: String,
    pub level: String,
    /// `Success`, `ClientError` (4xx, a refused attestation, a disabled enrollment) or `Failure`
    /// (5xx, a failed assignment).
    pub result_type: String,
    /// The HTTP status when unsuccessful, else empty.
    pub result_signature: String,
    /// The error, when unsuccessful, else empty.
    pub result_description: String,
    pub duration_ms: String,
    pub caller_ip_address: String,
    pub correlation_id: String,
    pub properties: String,
    pub location: String,
}

impl DpsRecord {
    /// The decoded `properties` string.
    pub fn properties(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.properties).ok()
    }
}

/// Turns events into DPS records, one event at a time.
pub struct DpsRecordDeriver {
    context: DpsContext,
    lifecycle: Lifecycle,
    /// When each open request came, by connection and request id.
    requests: BTreeMap<(u64, String), SystemTime>,
}

impl DpsRecordDeriver {
    pub fn new(context: DpsContext) -> Self {
        DpsRecordDeriver {
            context,
            lifecycle: Lifecycle::new(),
            requests: BTreeMap::new(),
        }
    }

    /// The records this event causes (usually none).
    pub fn push(&mut self, event: &Event) -> Vec<DpsRecord> {
        let Some(conn) = event.conn else {
            return Vec::new();
        };
        let Some(c) = self.lifecycle.push(event) else {
            return Vec::new();
        };
        let Some(client) = c.dps.clone() else {
            return Vec::new();
        };
        let caller = c.peer.map(|p| mask_ip(p.ip())).unwrap_or_default();
        let record =
            |operation: &str, outcome: Outcome, started: SystemTime, correlation: String| {
                let (result_type, signature, description) = match outcome {
                    Outcome::Success => ("Success", String::new(), String::new()),
                    Outcome::Client(status, why) => ("ClientError", status.to_string(), why),
                    Outcome::Failure(status, why) => ("Failure", status.to_string(), why),
                };
                let properties = serde_json::json!({
                    "id": client.registration_id,
                    "type": "Registration",
                    "protocol": "Mqtt",
                });
                DpsRecord {
                    time: fakehub_protocol::clock::rfc3339_millis(event.time),
                    resource_id: self.context.resource_id.clone(),
                    operation_name: operation.to_owned(),
                    category: "DeviceOperations".to_owned(),
                    level: if result_type == "Success" {
                        "Information"
                    } else {
                        "Error"
                    }
                    .to_owned(),
                    result_type: result_type.to_owned(),
                    result_signature: signature,
                    result_description: description,
                    duration_ms: event
                        .time
                        .duration_since(started)
                        .unwrap_or_default()
                        .as_millis()
                        .to_string(),
                    caller_ip_address: caller.clone(),
                    correlation_id: correlation,
                    properties: properties.to_string(),
                    location: self.context.location.clone(),
                }
            };
        let records = match &event.kind {
            EventKind::DpsConnack {
                code,
                status,
                reason,
                ..
            } => {
                let outcome = if *code == 0 {
                    Outcome::Success
                } else {
                    Outcome::Client(status.unwrap_or(401), reason.clone().unwrap_or_default())
                };
                let correlation = format!("00000000-0000-0000-0000-{conn:012x}");
                vec![record(
                    "AttestationAttempt",
                    outcome,
                    client.at.time,
                    correlation,
                )]
            }
            EventKind::DpsRequest { rid, .. } => {
                self.requests.insert((conn, rid.clone()), event.time);
                Vec::new()
            }
            EventKind::DpsResponse(r) => {
                let super::DpsResponse {
                    op,
                    rid,
                    status,
                    registration,
                    error_code,
                    message,
                    ..
                } = r.as_ref();
                let started = self
                    .requests
                    .remove(&(conn, rid.clone()))
                    .unwrap_or(event.time);
                let why = || {
                    let text = message.clone().unwrap_or_default();
                    match error_code {
                        Some(code) => format!("{code}: {text}"),
                        None => text,
                    }
                };
                let outcome = match (*status, registration.as_deref()) {
                    (s, _) if s >= 500 => Outcome::Failure(s, why()),
                    (s, _) if s >= 400 => Outcome::Client(s, why()),
                    (s, Some("failed")) => Outcome::Failure(s, why()),
                    (s, Some("disabled")) => Outcome::Client(s, why()),
                    _ => Outcome::Success,
                };
                let name = match op {
                    DpsOp::Register => "RegisterDevice",
                    DpsOp::Poll => "OperationStatusLookup",
                };
                vec![record(name, outcome, started, rid.clone())]
            }
            _ => Vec::new(),
        };
        if matches!(event.kind, EventKind::Closed { .. }) {
            self.lifecycle.remove(conn);
            self.requests.retain(|(c, _), _| *c != conn);
        }
        records
    }
}

enum Outcome {
    Success,
    Client(u16, String),
    Failure(u16, String),
}

/// Derive every DPS record of a whole log.
pub fn derive_all<'a>(
    context: DpsContext,
    events: impl IntoIterator<Item = &'a Event>,
) -> Vec<DpsRecord> {
    let mut deriver = DpsRecordDeriver::new(context);
    events.into_iter().flat_map(|e| deriver.push(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AuthKind, CloseCause, CloseHow, Closer};
    use std::time::Duration;

    fn ev(seq: u64, ms: u64, kind: EventKind) -> Event {
        Event {
            seq,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms),
            elapsed: Duration::from_millis(ms),
            conn: Some(3),
            device: Some("dev-01".into()),
            module: None,
            hub: None,
            kind,
        }
    }

    fn response(status: u16, registration: Option<&str>) -> EventKind {
        EventKind::DpsResponse(Box::new(crate::events::DpsResponse {
            op: if status == 202 {
                DpsOp::Register
            } else {
                DpsOp::Poll
            },
            rid: format!("rid-{status}"),
            status,
            retry_after: None,
            operation_id: None,
            registration: registration.map(str::to_owned),
            assigned_hub: None,
            hub_name: None,
            device_id: None,
            substatus: None,
            error_code: (status >= 400).then_some(u32::from(status) * 1000 + 1),
            message: (status >= 400).then(|| "Throttled".to_owned()),
        }))
    }

    #[test]
    fn device_operations_in_the_documented_shape() {
        let events = [
            ev(
                0,
                0,
                EventKind::Accepted {
                    peer: "24.18.226.7:5000".parse().unwrap(),
                },
            ),
            ev(
                1,
                10,
                EventKind::DpsConnect(Box::new(crate::events::DpsConnect {
                    client_id: "dev-01".into(),
                    id_scope: "0ne00000001".into(),
                    registration_id: "dev-01".into(),
                    keep_alive: 60,
                    clean_session: true,
                    auth: AuthKind::Sas,
                    sdk: None,
                })),
            ),
            ev(
                2,
                12,
                EventKind::DpsConnack {
                    code: 0,
                    status: None,
                    error_code: None,
                    reason: None,
                },
            ),
            ev(
                3,
                20,
                EventKind::DpsRequest {
                    op: DpsOp::Register,
                    rid: "rid-202".into(),
                    operation_id: None,
                    size: 40,
                },
            ),
            ev(4, 25, response(202, Some("assigning"))),
            ev(
                5,
                2030,
                EventKind::DpsRequest {
                    op: DpsOp::Poll,
                    rid: "rid-429".into(),
                    operation_id: Some("op".into()),
                    size: 1,
                },
            ),
            ev(6, 2031, response(429, None)),
            ev(
                7,
                3000,
                EventKind::Closed {
                    by: Closer::Device,
                    how: CloseHow::Disconnect,
                    cause: CloseCause::DeviceDisconnect,
                    detail: None,
                    result: None,
                },
            ),
        ];
        let recs = derive_all(DpsContext::for_service("my-dps"), &events);
        let names: Vec<&str> = recs.iter().map(|r| r.operation_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AttestationAttempt",
                "RegisterDevice",
                "OperationStatusLookup"
            ]
        );
        let v = serde_json::to_value(&recs[0]).unwrap();
        assert_eq!(v["category"], "DeviceOperations");
        assert_eq!(v["level"], "Information");
        assert_eq!(v["resultType"], "Success");
        assert_eq!(v["resultSignature"], "");
        assert_eq!(v["callerIpAddress"], "24.18.226.XXX");
        assert_eq!(v["durationMs"], "2");
        assert!(v["resourceId"]
            .as_str()
            .unwrap()
            .ends_with("/PROVISIONINGSERVICES/MY-DPS"));
        let p = recs[0].properties().unwrap();
        assert_eq!(p["id"], "dev-01");
        assert_eq!(p["type"], "Registration");
        assert_eq!(p["protocol"], "Mqtt");
        assert_eq!(recs[1].duration_ms, "5");
        assert_eq!(recs[1].correlation_id, "rid-202");
        assert_eq!(recs[2].level, "Error");
        assert_eq!(recs[2].result_type, "ClientError");
        assert_eq!(recs[2].result_signature, "429");
        assert_eq!(recs[2].result_description, "429001: Throttled");
    }
}
