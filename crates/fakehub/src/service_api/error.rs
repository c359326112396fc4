//! Errors as IoT Hub answers them: a status, the `iothub-errorcode` header, and one of its two body
//! shapes — the legacy `{"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:…"}`
//! the registry and twins use (the shape the Node SDK's error mapping reads), or the wrapped
//! `{"Message":"{\"errorCode\":404103,…}","ExceptionMessage":""}` of direct methods.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{C2dError, MethodError, RegistryError, TwinError};

/// The two body shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Legacy,
    Wrapped,
}

/// An error answer of the service API. Its text never holds a key, token or signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// IoT Hub's six-digit code (e.g. 404001).
    pub code: u32,
    /// IoT Hub's name of it (e.g. `DeviceNotFound`), sent as `iothub-errorcode`.
    pub name: &'static str,
    pub message: String,
    pub shape: Shape,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: u32,
        name: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            name,
            message: message.into(),
            shape: Shape::Legacy,
        }
    }

    /// The same error in the wrapped shape (direct methods).
    pub fn wrapped(mut self) -> Self {
        self.shape = Shape::Wrapped;
        self
    }

    /// 400004 ArgumentInvalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, 400004, "ArgumentInvalid", message)
    }

    /// 401002 IotHubUnauthorizedAccess.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            401002,
            "IotHubUnauthorizedAccess",
            message,
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let now = std::time::SystemTime::now();
        let tracking = format!("{:032x}", rand::random::<u128>());
        match self.shape {
            Shape::Legacy => {
                // `TimeStamp:MM/dd/yyyy HH:mm:ss`, as IoT Hub writes it.
                let t = crate::clock::rfc3339_seconds(now);
                let stamp = match (t.get(0..4), t.get(5..7), t.get(8..10), t.get(11..19)) {
                    (Some(y), Some(mo), Some(d), Some(hms)) => format!("{mo}/{d}/{y} {hms}"),
                    _ => t.clone(),
                };
                json!({
                    "Message": format!("ErrorCode:{};{}", self.name, self.message),
                    "ExceptionMessage": format!("Tracking ID:{tracking}-G:0-TimeStamp:{stamp}"),
                })
            }
            Shape::Wrapped => {
                let inner = json!({
                    "errorCode": self.code,
                    "trackingId": tracking,
                    "message": self.message,
                    "info": {},
                    "timestampUtc": crate::clock::rfc3339_millis(now),
                });
                json!({ "Message": inner.to_string(), "ExceptionMessage": "" })
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.status.as_u16(),
            self.code,
            self.name,
            self.message
        )
    }
}

/// A JSON answer with the content type both SDKs need (`application/json; charset=utf-8`).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(self.status, &self.body());
        r.headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.name));
        r
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let text = e.to_string();
        // The hub's texts start with the code and the name; IoT Hub's message is what follows.
        let message = text
            .split_once(": ")
            .map_or(text.as_str(), |(_, m)| m)
            .to_owned();
        let (status, code, name) = match e {
            RegistryError::DeviceNotFound(_) => (StatusCode::NOT_FOUND, 404001, "DeviceNotFound"),
            RegistryError::ModuleNotFound(_) => (StatusCode::NOT_FOUND, 404010, "ModuleNotFound"),
            RegistryError::DeviceAlreadyExists(_) => {
                (StatusCode::CONFLICT, 409001, "DeviceAlreadyExists")
            }
            RegistryError::ModuleAlreadyExists(_) => {
                (StatusCode::CONFLICT, 409301, "ModuleAlreadyExistsOnDevice")
            }
            RegistryError::PreconditionFailed { .. } => (
                StatusCode::PRECONDITION_FAILED,
                412001,
                "PreconditionFailed",
            ),
            RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, 400004, "ArgumentInvalid"),
        };
        ApiError::new(status, code, name, message)
    }
}

impl From<TwinError> for ApiError {
    fn from(e: TwinError) -> Self {
        match e {
            TwinError::DeviceNotFound(id) => RegistryError::DeviceNotFound(id).into(),
            TwinError::Invalid(p) => ApiError::invalid(p.to_string()),
            TwinError::PreconditionFailed { current, given } => {
                RegistryError::PreconditionFailed { current, given }.into()
            }
            TwinError::HubStopped => stopped(),
        }
    }
}

impl From<C2dError> for ApiError {
    fn from(e: C2dError) -> Self {
        match e {
            C2dError::DeviceNotFound(id) => RegistryError::DeviceNotFound(id).into(),
            C2dError::QueueFull(_) => ApiError::new(
                StatusCode::FORBIDDEN,
                403004,
                "DeviceMaximumQueueDepthExceeded",
                e.to_string(),
            ),
            C2dError::TooLarge(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                413001,
                "MessageTooLarge",
                e.to_string(),
            ),
            C2dError::HubStopped => stopped(),
        }
    }
}

impl From<MethodError> for ApiError {
    fn from(e: MethodError) -> Self {
        let message = e.to_string();
        let (status, code, name) = match &e {
            MethodError::DeviceNotFound(_) => (StatusCode::NOT_FOUND, 404001, "DeviceNotFound"),
            MethodError::DeviceNotOnline(_) => (StatusCode::NOT_FOUND, 404103, "DeviceNotOnline"),
            MethodError::Timeout => (StatusCode::GATEWAY_TIMEOUT, 504101, "GatewayTimeout"),
            MethodError::Invalid(_) => (StatusCode::BAD_REQUEST, 400004, "ArgumentInvalid"),
            MethodError::HubStopped => return stopped().wrapped(),
        };
        let message = message
            .split_once(": ")
            .map_or(message.as_str(), |(_, m)| m);
        ApiError::new(status, code, name, message).wrapped()
    }
}

fn stopped() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        503001,
        "ServiceUnavailable",
        "the hub is stopping",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_bodies_split_as_the_node_sdk_splits_them() {
        let e: ApiError = RegistryError::DeviceNotFound("d1".into()).into();
        let body = e.body();
        let message = body["Message"].as_str().unwrap();
        let (code, text) = message.split_once(';').unwrap();
        assert_eq!(code, "ErrorCode:DeviceNotFound");
        assert_eq!(text, "the device 'd1' is not registered");
        let exception = body["ExceptionMessage"].as_str().unwrap();
        assert!(exception.starts_with("Tracking ID:"), "{exception}");
        assert!(exception.contains("-G:0-TimeStamp:"), "{exception}");
        // MM/dd/yyyy HH:mm:ss
        let stamp = exception.rsplit("TimeStamp:").next().unwrap();
        assert_eq!(stamp.len(), 19, "{stamp}");
        assert_eq!(&stamp[2..3], "/");
    }

    #[test]
    fn method_errors_are_wrapped() {
        let e: ApiError = MethodError::DeviceNotOnline("d1".into()).into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let inner: serde_json::Value =
            serde_json::from_str(e.body()["Message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["errorCode"], 404103);
        let e: ApiError = MethodError::Timeout.into();
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.code, 504101);
    }
}
