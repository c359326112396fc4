//! The identity registry as the service side changes it: registering, replacing and deleting
//! devices and modules, with IoT Hub's optimistic concurrency (an ETag a change must match, or
//! `*`), and what each change does to live connections, twins and C2D queues.

use crate::events::{CloseCause, EventKind, IdentityChange};
use crate::registry::{dotnet_ticks, Identity, IdentityRef, InsertError, SymmetricKeys, X509Auth};
use crate::sessions::CloseRequest;
use crate::WireClose;

use super::{lock, subject, Services};

/// Why a registry change was refused. The text follows IoT Hub's messages and holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("404001 DeviceNotFound: the device '{0}' is not registered")]
    DeviceNotFound(String),
    #[error("404010 ModuleNotFound: the module '{0}' is not registered")]
    ModuleNotFound(String),
    #[error("409001 DeviceAlreadyExists: A device with ID '{0}' is already registered.")]
    DeviceAlreadyExists(String),
    #[error("409301 ModuleAlreadyExistsOnDevice: A module with ID '{0}' is already registered.")]
    ModuleAlreadyExists(String),
    #[error("412001 PreconditionFailed: Precondition failed: the ETag '{given}' does not match the current '{current}'")]
    PreconditionFailed { current: String, given: String },
    #[error("400004 ArgumentInvalid: {0}")]
    Invalid(String),
}

impl RegistryError {
    fn not_found(who: &IdentityRef) -> RegistryError {
        match &who.module_id {
            None => RegistryError::DeviceNotFound(who.device_id.clone()),
            Some(_) => RegistryError::ModuleNotFound(who.client_id()),
        }
    }
}

/// What the service side says an identity is: everything a registration or a full replacement
/// sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySpec {
    /// The SAS keys; an empty key (or none) is generated, as IoT Hub does.
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    /// Certificate authentication instead of keys (the identity keeps random keys no one sees).
    pub x509: Option<X509Auth>,
    pub enabled: bool,
    pub status_reason: Option<String>,
    pub iot_edge: bool,
    pub managed_by: Option<String>,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        IdentitySpec {
            primary_key: None,
            secondary_key: None,
            x509: None,
            enabled: true,
            status_reason: None,
            iot_edge: false,
            managed_by: None,
        }
    }
}

fn key_or_new(key: &Option<String>) -> Result<String, RegistryError> {
    match key.as_deref().map(str::trim) {
        None | Some("") => Ok(crate::sas::generate_key()),
        Some(k) => {
            if crate::sas::mint("check", k, None, std::time::UNIX_EPOCH).is_err() {
                return Err(RegistryError::Invalid(
                    "a symmetric key is not valid base64".to_owned(),
                ));
            }
            Ok(k.to_owned())
        }
    }
}

impl IdentitySpec {
    fn keys(&self) -> Result<SymmetricKeys, RegistryError> {
        Ok(SymmetricKeys {
            primary_key: key_or_new(&self.primary_key)?,
            secondary_key: Some(key_or_new(&self.secondary_key)?),
        })
    }
}

/// Whether `given` (an ETag a request must match, without quotes; `None` or `*`: any) matches.
pub fn check_etag(current: &str, given: Option<&str>) -> Result<(), RegistryError> {
    match given {
        None | Some("*") => Ok(()),
        Some(g) if g == current => Ok(()),
        Some(g) => Err(RegistryError::PreconditionFailed {
            current: current.to_owned(),
            given: g.chars().take(64).collect(),
        }),
    }
}

impl Services {
    /// Register a device (or a module of a registered device); the registered identity.
    pub fn create_identity(
        &self,
        who: &IdentityRef,
        spec: &IdentitySpec,
    ) -> Result<Identity, RegistryError> {
        let mut identity = Identity::new(spec.keys()?);
        identity.x509 = spec.x509.clone();
        identity.enabled = spec.enabled;
        identity.status_reason = spec.status_reason.clone();
        identity.iot_edge = spec.iot_edge;
        identity.managed_by = spec.managed_by.clone();
        identity.generation_id = dotnet_ticks(self.clock.now()).to_string();
        self.registry
            .insert_new(who, identity.clone())
            .map_err(|e| match (e, &who.module_id) {
                (InsertError::Exists, None) => {
                    RegistryError::DeviceAlreadyExists(who.device_id.clone())
                }
                (InsertError::Exists, Some(_)) => {
                    RegistryError::ModuleAlreadyExists(who.client_id())
                }
                (InsertError::NoDevice, _) => RegistryError::DeviceNotFound(who.device_id.clone()),
            })?;
        // A new identity starts with a new twin and an empty queue.
        lock(&self.twins).remove(who);
        self.events.emit(
            &subject(who),
            EventKind::IdentityChanged {
                change: IdentityChange::Created,
            },
        );
        Ok(identity)
    }

    /// Replace a registered identity (keys, authentication, status) if `if_match` matches its
    /// ETag. Disabling it closes its live connection, as [`Services::set_enabled`] does.
    pub fn replace_identity(
        &self,
        who: &IdentityRef,
        spec: &IdentitySpec,
        if_match: Option<&str>,
    ) -> Result<Identity, RegistryError> {
        let current = self
            .registry
            .identity(who)
            .ok_or_else(|| RegistryError::not_found(who))?;
        check_etag(&current.etag(), if_match)?;
        let keys = spec.keys()?;
        let now = self.clock.now();
        let status_changed = current.enabled != spec.enabled;
        let mut replaced = None;
        self.registry.update(who, |i| {
            i.keys = keys;
            i.x509 = spec.x509.clone();
            i.enabled = spec.enabled;
            i.status_reason = spec.status_reason.clone();
            i.iot_edge = spec.iot_edge;
            i.managed_by = spec.managed_by.clone();
            if status_changed {
                i.status_updated = Some(now);
            }
            replaced = Some(i.clone());
        });
        let mut replaced = replaced.ok_or_else(|| RegistryError::not_found(who))?;
        // `update` moves the version on after the closure saw it.
        replaced.version = replaced.version.wrapping_add(1);
        self.events.emit(
            &subject(who),
            EventKind::IdentityChanged {
                change: IdentityChange::Replaced,
            },
        );
        if status_changed {
            self.status_changed(who, spec.enabled);
        }
        Ok(replaced)
    }

    /// Delete a registered identity (a device with its modules) if `if_match` matches its ETag:
    /// its live connections close, its twins and C2D messages go.
    pub fn delete_identity(
        &self,
        who: &IdentityRef,
        if_match: Option<&str>,
    ) -> Result<(), RegistryError> {
        let current = self
            .registry
            .identity(who)
            .ok_or_else(|| RegistryError::not_found(who))?;
        check_etag(&current.etag(), if_match)?;
        let mut gone = vec![who.clone()];
        if who.module_id.is_none() {
            if let Some(d) = self.registry.device(&who.device_id) {
                gone.extend(d.modules.keys().map(|m| IdentityRef {
                    device_id: who.device_id.clone(),
                    module_id: Some(m.clone()),
                }));
            }
        }
        self.registry
            .remove(who)
            .ok_or_else(|| RegistryError::not_found(who))?;
        self.events.emit(
            &subject(who),
            EventKind::IdentityChanged {
                change: IdentityChange::Deleted,
            },
        );
        let mut twins = lock(&self.twins);
        for id in &gone {
            twins.remove(id);
        }
        drop(twins);
        for id in &gone {
            let client = id.client_id();
            self.sessions.close(
                &client,
                CloseRequest {
                    wire: WireClose::Fin,
                    cause: CloseCause::Deleted,
                    detail: format!("'{client}' was deleted from the registry"),
                    result: None,
                },
            );
            self.sessions.forget(&client);
        }
        Ok(())
    }

    /// Record a status change and, for a disabled identity, close its live connection.
    pub(super) fn status_changed(&self, who: &IdentityRef, enabled: bool) {
        self.events
            .emit(&subject(who), EventKind::IdentityStatus { enabled });
        if !enabled {
            self.sessions.close(
                &who.client_id(),
                CloseRequest {
                    wire: WireClose::Fin,
                    cause: CloseCause::Disabled,
                    detail: format!("'{who}' was disabled"),
                    result: None,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_exactly_or_by_wildcard() {
        assert!(check_etag("MQ==", None).is_ok());
        assert!(check_etag("MQ==", Some("*")).is_ok());
        assert!(check_etag("MQ==", Some("MQ==")).is_ok());
        assert!(matches!(
            check_etag("MQ==", Some("Mg==")),
            Err(RegistryError::PreconditionFailed { .. })
        ));
    }
}
