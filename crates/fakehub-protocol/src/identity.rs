//! Who a connection is: a device, or a module of a device, and its MQTT client id.

use serde::{Deserialize, Serialize};

/// Which identity a connection claims: a device, or a module of a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentityRef {
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
}

impl IdentityRef {
    /// A device identity.
    pub fn device(id: impl Into<String>) -> Self {
        IdentityRef {
            device_id: id.into(),
            module_id: None,
        }
    }

    /// A module identity.
    pub fn module(device_id: impl Into<String>, module_id: impl Into<String>) -> Self {
        IdentityRef {
            device_id: device_id.into(),
            module_id: Some(module_id.into()),
        }
    }

    /// The identity of an MQTT client id (`device` or `device/module`; device ids have no `/`).
    pub fn from_client_id(client_id: &str) -> Self {
        match client_id.split_once('/') {
            Some((d, m)) => IdentityRef::module(d, m),
            None => IdentityRef::device(client_id),
        }
    }

    /// The MQTT client id of this identity: `device` or `device/module`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{}", self.device_id, m),
            None => self.device_id.clone(),
        }
    }
}

impl std::fmt::Display for IdentityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.client_id())
    }
}
