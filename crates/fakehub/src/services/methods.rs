//! Direct methods: the hub publishes `$iothub/methods/POST/{name}/?$rid={rid}` at QoS 0 and matches
//! the device's `$iothub/methods/res/{status}/?$rid={rid}` (research §4.1). A device that is not
//! connected, or not subscribed to `$iothub/methods/POST/#`, fails the call at once with 404103
//! DeviceNotOnline; a device that does not answer in time fails it with 504101 GatewayTimeout
//! ("Timed out waiting for the response from device.", as the service reports it).

/// The largest method request payload (IoT Hub: 128 KB).
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// What the device answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodResponse {
    /// The status the device put in the response topic.
    pub status: i32,
    /// The response body as the device sent it (JSON, or empty).
    pub payload: Vec<u8>,
}

impl MethodResponse {
    /// The body as JSON (`null` when empty).
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        if self.payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.payload)
    }
}

/// Why a method call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("404001 DeviceNotFound: '{0}' is not registered")]
    DeviceNotFound(String),
    #[error("404103 DeviceNotOnline: '{0}' is not connected or not subscribed to methods")]
    DeviceNotOnline(String),
    #[error("504101 GatewayTimeout: Timed out waiting for the response from device.")]
    Timeout,
    #[error("the method call is not valid: {0}")]
    Invalid(String),
    #[error("the hub is not running")]
    HubStopped,
}

impl MethodError {
    /// The IoT Hub error code, where the hub has one.
    pub fn code(&self) -> Option<u32> {
        match self {
            MethodError::DeviceNotFound(_) => Some(404001),
            MethodError::DeviceNotOnline(_) => Some(404103),
            MethodError::Timeout => Some(504101),
            MethodError::Invalid(_) | MethodError::HubStopped => None,
        }
    }
}

/// Check a method name: it becomes a topic level, so it must be one.
pub fn check_name(name: &str) -> Result<(), MethodError> {
    if name.is_empty() || name.contains(['/', '+', '#', '\0']) {
        return Err(MethodError::Invalid(format!(
            "the method name '{name}' is empty or contains `/`, `+`, `#` or NUL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bodies() {
        assert!(check_name("reboot").is_ok());
        for bad in ["", "a/b", "a+", "#"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let r = MethodResponse {
            status: 200,
            payload: b"{\"ok\":true}".to_vec(),
        };
        assert_eq!(r.json().unwrap()["ok"], true);
        let empty = MethodResponse {
            status: 204,
            payload: Vec::new(),
        };
        assert_eq!(empty.json().unwrap(), serde_json::Value::Null);
        assert_eq!(MethodError::Timeout.code(), Some(504101));
    }
}
