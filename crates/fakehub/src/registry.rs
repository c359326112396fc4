//! Device and module identities, shared access policies, and their state (enabled, keys).
//!
//! The registry is shared between the front door (which reads it on every CONNECT) and the service
//! API and faults (which change it: disable a device, rotate a key). It is a plain map behind a lock;
//! every read copies out what it needs, so no lock is held across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

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
    /// Bumped by every change made through [`Registry::update`]: the identity's ETag.
    pub version: u64,
    /// Tells apart identities that had the same id (one deleted, another created): .NET ticks of
    /// when it was registered, as IoT Hub shows them.
    pub generation_id: String,
    /// Why it was disabled or enabled (the service side says).
    pub status_reason: Option<String>,
    /// When `enabled` last changed (virtual wall time); `None`: never.
    pub status_updated: Option<SystemTime>,
    /// Registered as an IoT Edge device (`capabilities.iotEdge`).
    pub iot_edge: bool,
    /// For modules: who manages it (`managedBy`).
    pub managed_by: Option<String>,
}

impl Identity {
    /// An enabled identity with these keys and no X.509 authentication.
    pub fn new(keys: SymmetricKeys) -> Self {
        Identity {
            keys,
            enabled: true,
            x509: None,
            version: 1,
            generation_id: String::new(),
            status_reason: None,
            status_updated: None,
            iot_edge: false,
            managed_by: None,
        }
    }

    /// The ETag of the identity, as IoT Hub writes it: the base64 of a decimal version.
    pub fn etag(&self) -> String {
        B64.encode(self.version.to_string())
    }

    /// How it authenticates, in the registry's words: `sas`, `selfSigned` or
    /// `certificateAuthority`.
    pub fn auth_type(&self) -> &'static str {
        match self.x509 {
            None => "sas",
            Some(X509Auth::SelfSigned { .. }) => "selfSigned",
            Some(X509Auth::CertificateAuthority) => "certificateAuthority",
        }
    }
}

/// .NET ticks (100 ns since 0001-01-01) of `t`, how IoT Hub writes generation ids.
pub fn dotnet_ticks(t: SystemTime) -> u64 {
    const UNIX_EPOCH_TICKS: u64 = 621_355_968_000_000_000;
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ticks = since.as_secs().saturating_mul(10_000_000) + u64::from(since.subsec_nanos() / 100);
    UNIX_EPOCH_TICKS.saturating_add(ticks)
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
    pub rights: Rights,
}

/// What a shared access policy's tokens may do (IoT Hub's permissions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    /// Read the identity registry (`RegistryRead`).
    #[serde(default)]
    pub registry_read: bool,
    /// Change the identity registry (`RegistryReadWrite`; it includes reading).
    #[serde(default)]
    pub registry_write: bool,
    /// Twins, direct methods, cloud-to-device messages (`ServiceConnect`).
    #[serde(default)]
    pub service_connect: bool,
    /// Connect as any device (`DeviceConnect`).
    #[serde(default)]
    pub device_connect: bool,
}

impl Rights {
    /// Everything (`iothubowner`).
    pub const ALL: Rights = Rights {
        registry_read: true,
        registry_write: true,
        service_connect: true,
        device_connect: true,
    };

    /// Only connecting as devices (the `device` policy).
    pub const DEVICE_CONNECT: Rights = Rights {
        registry_read: false,
        registry_write: false,
        service_connect: false,
        device_connect: true,
    };

    /// Whether these rights include `needed`.
    pub fn allow(self, needed: Right) -> bool {
        match needed {
            Right::RegistryRead => self.registry_read || self.registry_write,
            Right::RegistryWrite => self.registry_write,
            Right::ServiceConnect => self.service_connect,
            Right::DeviceConnect => self.device_connect,
        }
    }
}

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Right::RegistryRead => "RegistryRead",
            Right::RegistryWrite => "RegistryWrite",
            Right::ServiceConnect => "ServiceConnect",
            Right::DeviceConnect => "DeviceConnect",
        })
    }
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
    /// A registry with this content; identities without a generation id get one (registered now).
    pub fn new(mut data: RegistryData) -> Self {
        let ticks = dotnet_ticks(SystemTime::now());
        let mut n = 0u64;
        for d in data.devices.values_mut() {
            for i in std::iter::once(&mut d.identity).chain(d.modules.values_mut()) {
                if i.generation_id.is_empty() {
                    i.generation_id = ticks.saturating_add(n).to_string();
                    n += 1;
                }
            }
        }
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

    /// A device with its modules.
    pub fn device(&self, id: &str) -> Option<Device> {
        self.read().devices.get(id).cloned()
    }

    /// Every device with its modules, in id order.
    pub fn devices(&self) -> Vec<Device> {
        self.read().devices.values().cloned().collect()
    }

    /// Every policy, in name order.
    pub fn policies(&self) -> Vec<Policy> {
        self.read().policies.values().cloned().collect()
    }

    /// Register a new identity: a device (without modules), or a module of a registered device.
    pub fn insert_new(&self, who: &IdentityRef, identity: Identity) -> Result<(), InsertError> {
        let mut data = self.write();
        match &who.module_id {
            None => {
                if data.devices.contains_key(&who.device_id) {
                    return Err(InsertError::Exists);
                }
                data.devices.insert(
                    who.device_id.clone(),
                    Device {
                        id: who.device_id.clone(),
                        identity,
                        modules: BTreeMap::new(),
                    },
                );
            }
            Some(m) => {
                let device = data
                    .devices
                    .get_mut(&who.device_id)
                    .ok_or(InsertError::NoDevice)?;
                if device.modules.contains_key(m) {
                    return Err(InsertError::Exists);
                }
                device.modules.insert(m.clone(), identity);
            }
        }
        Ok(())
    }

    /// Take an identity out (a device goes with its modules); what was removed.
    pub fn remove(&self, who: &IdentityRef) -> Option<Identity> {
        let mut data = self.write();
        match &who.module_id {
            None => data.devices.remove(&who.device_id).map(|d| d.identity),
            Some(m) => data.devices.get_mut(&who.device_id)?.modules.remove(m),
        }
    }

    /// Remove a device (and its modules); what was removed.
    pub fn remove_device(&self, id: &str) -> Option<Device> {
        self.write().devices.remove(id)
    }

    /// Change one identity in place (its version moves on); returns false when it does not exist.
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
        identity.version = identity.version.wrapping_add(1);
        true
    }
}

/// Why [`Registry::insert_new`] did not register an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The id is taken.
    Exists,
    /// A module of a device that is not registered.
    NoDevice,
}
