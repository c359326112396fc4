//! IoT Hub result codes: the six-digit numbers its diagnostic logs and error bodies carry
//! (`404104 DeviceConnectionClosedRemotely`), with their names and HTTP-style status.
//!
//! In JSON (events, records) a code is its number; a number fakehub does not know is kept as
//! [`ResultCode::Other`], so logs from elsewhere read back unchanged.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IoT Hub result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResultCode {
    /// 400004: a request argument is not valid.
    ArgumentInvalid,
    /// 400027: the connection was closed because another one with the same identity opened.
    ConnectionForcefullyClosedOnNewConnection,
    /// 401003: the credentials were refused (expired, wrong key, wrong audience, disabled CA).
    IoTHubUnauthorized,
    /// 403002: the hub's daily message quota is used up.
    IoTHubQuotaExceeded,
    /// 403004: the device already has the most cloud-to-device messages waiting that it may.
    DeviceMaximumQueueDepthExceeded,
    /// 404001: the device (or module) is not registered.
    DeviceNotFound,
    /// 404103: the device is not online (or not subscribed) for a direct method.
    DeviceNotOnline,
    /// 404104: the connection was closed without an MQTT DISCONNECT.
    DeviceConnectionClosedRemotely,
    /// 409001: the device already exists.
    DeviceAlreadyExists,
    /// 412002: the ETag in `If-Match` does not match.
    PreconditionFailed,
    /// 429001: throttled.
    ThrottlingException,
    /// 429002: throttled, and the shaping backlog is full.
    ThrottleBacklogLimitExceeded,
    /// 500001: an internal error of the hub.
    ServerError,
    /// 500008: a hub operation timed out.
    GenericTimeout,
    /// 504101: the device did not answer a direct method in time.
    GatewayTimeout,
    /// A code this table does not name.
    Other(u32),
}

use ResultCode::*;

/// Every named code with its number, name, HTTP-style status and a short description.
const TABLE: &[(ResultCode, u32, &str, u16, &str)] = &[
    (
        ArgumentInvalid,
        400004,
        "ArgumentInvalid",
        400,
        "a request argument is not valid",
    ),
    (
        ConnectionForcefullyClosedOnNewConnection,
        400027,
        "ConnectionForcefullyClosedOnNewConnection",
        400,
        "closed because a new connection with the same identity opened",
    ),
    (
        IoTHubUnauthorized,
        401003,
        "IoTHubUnauthorized",
        401,
        "the credentials were refused",
    ),
    (
        IoTHubQuotaExceeded,
        403002,
        "IoTHubQuotaExceeded",
        403,
        "the daily message quota is used up",
    ),
    (
        DeviceMaximumQueueDepthExceeded,
        403004,
        "DeviceMaximumQueueDepthExceeded",
        403,
        "the device's cloud-to-device queue is full",
    ),
    (
        DeviceNotFound,
        404001,
        "DeviceNotFound",
        404,
        "the identity is not registered",
    ),
    (
        DeviceNotOnline,
        404103,
        "DeviceNotOnline",
        404,
        "the device is not online",
    ),
    (
        DeviceConnectionClosedRemotely,
        404104,
        "DeviceConnectionClosedRemotely",
        404,
        "the connection closed without an MQTT DISCONNECT",
    ),
    (
        DeviceAlreadyExists,
        409001,
        "DeviceAlreadyExists",
        409,
        "the device already exists",
    ),
    (
        PreconditionFailed,
        412002,
        "PreconditionFailed",
        412,
        "the ETag does not match",
    ),
    (
        ThrottlingException,
        429001,
        "ThrottlingException",
        429,
        "throttled",
    ),
    (
        ThrottleBacklogLimitExceeded,
        429002,
        "ThrottleBacklogLimitExceeded",
        429,
        "throttled beyond the shaping backlog",
    ),
    (
        ServerError,
        500001,
        "ServerError",
        500,
        "an internal error of the hub",
    ),
    (
        GenericTimeout,
        500008,
        "GenericTimeout",
        500,
        "a hub operation timed out",
    ),
    (
        GatewayTimeout,
        504101,
        "GatewayTimeout",
        504,
        "the device did not answer in time",
    ),
];

impl ResultCode {
    fn entry(self) -> Option<&'static (ResultCode, u32, &'static str, u16, &'static str)> {
        TABLE.iter().find(|e| e.0 == self)
    }

    /// The code for a number (named when the table knows it).
    pub fn from_code(code: u32) -> ResultCode {
        TABLE
            .iter()
            .find(|e| e.1 == code)
            .map(|e| e.0)
            .unwrap_or(Other(code))
    }

    /// The six-digit number.
    pub fn code(self) -> u32 {
        match self {
            Other(n) => n,
            named => named.entry().map_or(0, |e| e.1),
        }
    }

    /// IoT Hub's name for it (`DeviceConnectionClosedRemotely`); `Error` for an unknown code.
    pub fn name(self) -> &'static str {
        self.entry().map_or("Error", |e| e.2)
    }

    /// The HTTP-style status (its first three digits for an unknown code).
    pub fn status(self) -> u16 {
        match self.entry() {
            Some(e) => e.3,
            None => u16::try_from(self.code() / 1000).unwrap_or(500),
        }
    }

    /// What it means, in a few words.
    pub fn description(self) -> &'static str {
        self.entry().map_or("an error of the hub", |e| e.4)
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

impl From<u32> for ResultCode {
    fn from(code: u32) -> Self {
        ResultCode::from_code(code)
    }
}

impl PartialEq<u32> for ResultCode {
    fn eq(&self, other: &u32) -> bool {
        self.code() == *other
    }
}

impl Serialize for ResultCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.code())
    }
}

impl<'de> Deserialize<'de> for ResultCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(ResultCode::from_code)
    }
}

impl schemars::JsonSchema for ResultCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ResultCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "minimum": 100000,
            "maximum": 999999,
            "description": "an IoT Hub result code, e.g. 404104"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_statuses_round_trip() {
        for e in TABLE {
            assert_eq!(ResultCode::from_code(e.1), e.0);
            assert_eq!(e.0.code(), e.1);
            assert_eq!(u32::from(e.0.status()), e.1 / 1000, "{}", e.2);
        }
        assert_eq!(
            ResultCode::from_code(404104).name(),
            "DeviceConnectionClosedRemotely"
        );
        let unknown = ResultCode::from_code(503999);
        assert_eq!(unknown, Other(503999));
        assert_eq!(
            (unknown.code(), unknown.status(), unknown.name()),
            (503999, 503, "Error")
        );
    }

    #[test]
    fn json_is_the_number() {
        let v = serde_json::to_string(&IoTHubUnauthorized).ok();
        assert_eq!(v.as_deref(), Some("401003"));
        let back: Option<ResultCode> = serde_json::from_str("429002").ok();
        assert_eq!(back, Some(ThrottleBacklogLimitExceeded));
    }
}
