//! Device and module identities, shared access policies, and their state (enabled, keys).
//!
//! The registry is shared between the front door (which reads it on every CONNECT) and the service
//! API and faults (which change it: disable a device, rotate a key). It is a plain map behind a lock;
//! every read copies out what it needs, so no lock is held across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::sas;

/// The symmetric keys of an identity or a policy. Either key signs valid tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymmetricKeys {
    pub primary_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for SymmetricKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymmetricKeys(<redacted>)")
    }
}

impl SymmetricKeys {
    /// A fresh random primary and secondary key.
    pub fn generate() -> Self {
        SymmetricKeys {
            primary_key: sas::generate_key(),
            secondary_key: Some(sas::generate_key()),
        }
    }

    /// Keys with just a primary.
    pub fn primary(key: impl Into<String>) -> Self {
        SymmetricKeys {
            primary_key: key.into(),
            secondary_key: None,
        }
    }

    /// The keys in the order the hub tries them.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary_key.as_str()).chain(self.secondary_key.as_deref())
    }
}

/// A device or module identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub keys: SymmetricKeys,
    pub enabled: bool,
    /// How the identity may authenticate with a client certificate; `None`: SAS only.
    pub x509: Option<X509Auth>,
}

impl Identity {
    /// An enabled identity with these keys and no X.509 authentication.
    pub fn new(keys: SymmetricKeys) -> Self {
        Identity {
            keys,
            enabled: true,
            x509: None,
        }
    }
}

/// X.509 authentication of an identity, as IoT Hub registers it (research §1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X509Auth {
    /// Self-signed certificates, recognised by thumbprint (SHA-1 or SHA-256 of the DER, hex).
    SelfSigned {
        primary: String,
        secondary: Option<String>,
    },
    /// Certificates issued by a CA the hub trusts, whose subject CN is the device id (or
    /// `device/module`).
    CertificateAuthority,
}

/// A device: its own identity and its modules.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub identity: Identity,
    pub modules: BTreeMap<String, Identity>,
}

/// A shared access policy (e.g. `device`, `iothubowner`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub keys: SymmetricKeys,
    /// Whether tokens signed with this policy may connect as any device (`DeviceConnect`).
    pub device_connect: bool,
}

pub use fakehub_protocol::IdentityRef;

/// The registry contents.
#[derive(Debug, Clone, Default)]
pub struct RegistryData {
    pub devices: BTreeMap<String, Device>,
    pub policies: BTreeMap<String, Policy>,
    /// The CA certificates (DER) the hub trusts for [`X509Auth::CertificateAuthority`] identities
    /// ("verified" CAs in IoT Hub terms). The hub adds its own CA when it starts.
    pub certificate_authorities: Vec<CertificateDer<'static>>,
}

/// A shared, mutable registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<RegistryData>>,
}

impl Registry {
    pub fn new(data: RegistryData) -> Self {
        Registry {
            inner: Arc::new(RwLock::new(data)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RegistryData> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RegistryData> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity, if it exists.
    pub fn identity(&self, who: &IdentityRef) -> Option<Identity> {
        let data = self.read();
        let device = data.devices.get(&who.device_id)?;
        match &who.module_id {
            None => Some(device.identity.clone()),
            Some(m) => device.modules.get(m).cloned(),
        }
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.read().policies.get(name).cloned()
    }

    /// Every client id (devices, then `device/module` for their modules), in order.
    pub fn client_ids(&self) -> Vec<String> {
        let data = self.read();
        let mut out = Vec::new();
        for d in data.devices.values() {
            out.push(d.id.clone());
            out.extend(d.modules.keys().map(|m| format!("{}/{m}", d.id)));
        }
        out
    }

    /// The CA certificates the hub trusts for CA-signed device certificates.
    pub fn certificate_authorities(&self) -> Vec<CertificateDer<'static>> {
        self.read().certificate_authorities.clone()
    }

    /// Trust one more CA for CA-signed device certificates.
    pub fn trust_certificate_authority(&self, ca: CertificateDer<'static>) {
        let mut data = self.write();
        if !data.certificate_authorities.contains(&ca) {
            data.certificate_authorities.push(ca);
        }
    }

    /// Every device id, in order.
    pub fn device_ids(&self) -> Vec<String> {
        self.read().devices.keys().cloned().collect()
    }

    /// Add (or replace) a device.
    pub fn insert_device(&self, device: Device) {
        self.write().devices.insert(device.id.clone(), device);
    }

    /// Remove a device (and its modules); what was removed.
    pub fn remove_device(&self, id: &str) -> Option<Device> {
        self.write().devices.remove(id)
    }

    /// Change one identity in place; returns false when it does not exist.
    pub fn update(&self, who: &IdentityRef, f: impl FnOnce(&mut Identity)) -> bool {
        let mut data = self.write();
        let Some(device) = data.devices.get_mut(&who.device_id) else {
            return false;
        };
        let identity = match &who.module_id {
            None => &mut device.identity,
            Some(m) => match device.modules.get_mut(m) {
                Some(i) => i,
                None => return false,
            },
        };
        f(identity);
        true
    }
}
