//! The Device Provisioning Service's dialect of MQTT, as the official device SDKs speak it
//! (research: `notes/dps-mqtt.md`; Microsoft's "IoT DPS MQTT support" page).
//!
//! A device subscribes to [`RESPONSE_FILTER`], registers with a PUBLISH to
//! `$dps/registrations/PUT/iotdps-register/?$rid={rid}` (body [`RegisterBody`]), and polls with
//! `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`. DPS answers
//! on `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]` with an [`OperationStatus`]
//! (2xx) or an [`ErrorBody`]. `retry-after` is a whole number of seconds: the Python SDK parses it
//! with `int()` and hangs on anything else.
//!
//! Symmetric keys of enrollment groups are derived per device: [`derive_device_key`]. Tokens are
//! scoped to [`resource_uri`] and signed with `skn=registration` (the Python SDK leaves `skn` out).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::sas::SasError;

/// The API version both SDKs send (`api-version=2019-03-31`).
pub const API_VERSION: &str = "2019-03-31";
/// The global device endpoint of the real service.
pub const GLOBAL_HOST: &str = "global.azure-devices-provisioning.net";
/// What a device subscribes to for DPS's answers.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
/// The largest DPS message (the service's documented limit).
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024;

const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/";
const POLL_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// What a device asks of DPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Register (start a registration operation).
    Register { rid: String },
    /// Ask how a registration operation is going.
    Poll { rid: String, operation_id: String },
}

impl Request {
    /// The request id the answer must carry.
    pub fn rid(&self) -> &str {
        match self {
            Request::Register { rid } | Request::Poll { rid, .. } => rid,
        }
    }
}

/// Why a DPS topic could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("`{0}` is not a DPS topic a device may publish to")]
    Unknown(String),
    #[error("the DPS request has no `$rid`")]
    NoRid,
    #[error("the operation-status request has no `operationId`")]
    NoOperationId,
    #[error("`{0}` is not a DPS answer topic")]
    NotAnswer(String),
}

/// The `key=value` pairs after the `?` of a topic, percent-decoded (Python quotes them, Node does
/// not).
pub fn query(topic: &str) -> Vec<(String, String)> {
    let Some((_, q)) = topic.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| crate::percent::decode_lossy(s).into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

fn get(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// Read the topic of a device's PUBLISH to DPS.
pub fn parse_request(topic: &str) -> Result<Request, TopicError> {
    let pairs = query(topic);
    let path = topic.split_once('?').map_or(topic, |(p, _)| p);
    if path == REGISTER_PREFIX {
        let rid = get(&pairs, "$rid").ok_or(TopicError::NoRid)?;
        Ok(Request::Register { rid })
    } else if path == POLL_PREFIX {
        let rid = get(&pairs, "$rid").ok_or(TopicError::NoRid)?;
        let operation_id = get(&pairs, "operationId").ok_or(TopicError::NoOperationId)?;
        Ok(Request::Poll { rid, operation_id })
    } else {
        Err(TopicError::Unknown(topic.to_owned()))
    }
}

/// The topic of a register request.
pub fn register_topic(rid: &str) -> String {
    format!("{REGISTER_PREFIX}?$rid={rid}")
}

/// The topic of an operation-status request.
pub fn poll_topic(rid: &str, operation_id: &str) -> String {
    format!("{POLL_PREFIX}?$rid={rid}&operationId={operation_id}")
}

/// An answer's topic, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub rid: String,
    /// Seconds, when DPS said.
    pub retry_after: Option<u32>,
}

/// The topic of DPS's answer to request `rid`.
pub fn answer_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    match retry_after {
        Some(s) => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}&retry-after={s}"),
        None => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}"),
    }
}

/// Read the topic of an answer from DPS. A `retry-after` that is not a whole number is left out.
pub fn parse_answer(topic: &str) -> Result<Answer, TopicError> {
    let rest = topic
        .strip_prefix(RESPONSE_PREFIX)
        .ok_or_else(|| TopicError::NotAnswer(topic.to_owned()))?;
    let status = rest
        .split('/')
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| TopicError::NotAnswer(topic.to_owned()))?;
    let pairs = query(topic);
    Ok(Answer {
        status,
        rid: get(&pairs, "$rid").ok_or(TopicError::NoRid)?,
        retry_after: get(&pairs, "retry-after").and_then(|s| s.parse().ok()),
    })
}

/// The resource a registration's SAS token is scoped to: `{idScope}/registrations/{registrationId}`.
pub fn resource_uri(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// The CONNECT username of a registration, as the SDKs build it.
pub fn username(id_scope: &str, registration_id: &str, client_version: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}/api-version={API_VERSION}&ClientVersion={client_version}")
}

/// A device's key in a symmetric-key enrollment group: base64(HMAC-SHA256(key = the decoded group
/// key, message = the registration id)), as DPS and the official samples derive it.
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Result<String, SasError> {
    let key = B64
        .decode(group_key_b64.trim())
        .map_err(|_| SasError::BadKey)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::BadKey)?;
    mac.update(registration_id.as_bytes());
    Ok(B64.encode(mac.finalize().into_bytes()))
}

/// The body of a register request: `{"registrationId": …, "payload": …}` (Python always sends
/// `payload`, `null` when unset; Node only when set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    #[serde(default)]
    pub registration_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// A registration operation, as DPS reports it (the body of a 200 or 202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    pub operation_id: String,
    /// `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<RegistrationState>,
}

/// A device's registration state. The Python SDK needs `deviceId`, `assignedHub` and `substatus`
/// as strings in an `assigned` state (a missing `substatus` hangs its `register()`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// An error answer (`ProvisioningServiceErrorDetails`): `{"errorCode", "trackingId", "message",
/// "timestampUtc"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: u32,
    pub tracking_id: String,
    pub message: String,
    pub timestamp_utc: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_as_python_and_node_send_them() {
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/?$rid=7f1c").unwrap(),
            Request::Register { rid: "7f1c".into() }
        );
        // Python quotes the values with safe="" (`$` in the key stays as sent).
        let poll = parse_request(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=ab%2Dcd&operationId=4.0123456789abcdef.0f%2D1",
        )
        .unwrap();
        assert_eq!(
            poll,
            Request::Poll {
                rid: "ab-cd".into(),
                operation_id: "4.0123456789abcdef.0f-1".into()
            }
        );
        assert_eq!(
            parse_request(&poll_topic("r", "op")).unwrap(),
            Request::Poll {
                rid: "r".into(),
                operation_id: "op".into()
            }
        );
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/"),
            Err(TopicError::NoRid)
        );
        assert_eq!(
            parse_request("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1"),
            Err(TopicError::NoOperationId)
        );
        assert!(matches!(
            parse_request("devices/d/messages/events/"),
            Err(TopicError::Unknown(_))
        ));
    }

    #[test]
    fn answers_round_trip_and_a_fractional_retry_after_is_dropped() {
        let t = answer_topic(202, "r-1", Some(3));
        assert_eq!(t, "$dps/registrations/res/202/?$rid=r-1&retry-after=3");
        assert_eq!(
            parse_answer(&t).unwrap(),
            Answer {
                status: 202,
                rid: "r-1".into(),
                retry_after: Some(3)
            }
        );
        let a = parse_answer("$dps/registrations/res/429/?$rid=x&retry-after=1.5").unwrap();
        assert_eq!(a.retry_after, None);
        assert!(parse_answer("$iothub/twin/res/200/?$rid=1").is_err());
    }

    /// The test vector computed identically with Python's hmac and Node's crypto (research §5).
    #[test]
    fn group_key_derivation_matches_the_sdks_samples() {
        assert_eq!(
            derive_device_key("Z3JvdXBrZXlncm91cGtleWdyb3Vwa2V5Z3JvdXBrZXk=", "dev-01").unwrap(),
            "UbTx9Haqnr1lNBI/FN3tMT5KRSGmiH0e4h9ExF/SyWA="
        );
        assert_eq!(derive_device_key("not base64!", "d"), Err(SasError::BadKey));
    }

    #[test]
    fn bodies_have_the_service_field_names() {
        let b: RegisterBody =
            serde_json::from_str(r#"{"payload": null, "registrationId": "py-dev-01"}"#).unwrap();
        assert_eq!(b.registration_id.as_deref(), Some("py-dev-01"));
        let s = OperationStatus {
            operation_id: "4.x.y".into(),
            status: "assigned".into(),
            registration_state: Some(RegistrationState {
                registration_id: "d".into(),
                assigned_hub: Some("h".into()),
                device_id: Some("d".into()),
                status: "assigned".into(),
                substatus: Some("initialAssignment".into()),
                created_date_time_utc: Some("t".into()),
                last_updated_date_time_utc: Some("t".into()),
                ..Default::default()
            }),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["operationId"], "4.x.y");
        assert_eq!(v["registrationState"]["assignedHub"], "h");
        assert_eq!(v["registrationState"]["createdDateTimeUtc"], "t");
        assert_eq!(v["registrationState"]["lastUpdatedDateTimeUtc"], "t");
        assert!(v["registrationState"].get("errorCode").is_none());
        let e = serde_json::to_value(ErrorBody {
            error_code: 401002,
            tracking_id: "t".into(),
            message: "m".into(),
            timestamp_utc: "s".into(),
        })
        .unwrap();
        assert_eq!(e["errorCode"], 401002);
        assert_eq!(e["trackingId"], "t");
        assert_eq!(e["timestampUtc"], "s");
    }
}
