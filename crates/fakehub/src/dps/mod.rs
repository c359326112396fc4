//! The Device Provisioning Service: enrollments, registrations, and allocation over the hubs
//! linked to it.
//!
//! A [`Dps`] is shared by the hubs built with [`crate::HubBuilder::dps`]: each serves DPS on its
//! own listener (a CONNECT with a DPS username, `{idScope}/registrations/{id}/api-version=…`, is a
//! provisioning connection; everything else is a hub connection), and each is linked to the DPS,
//! which assigns registrations to them. When a registration is assigned the device is created (or
//! its keys updated) in the assigned hub's registry; when re-provisioning moves it to another hub,
//! its identity leaves the old hub (its live connection there is closed) and, by the enrollment's
//! reprovisioning policy, its twin moves with it (`migrate`), starts afresh (`reset`), or the
//! device stays where it was (`never`).
//!
//! * [`enrollment`]: who may register, and attestation (SAS or X.509).
//! * [`registration`]: the operations (`assigning` → `assigned`/`failed`/`disabled`), the
//!   registration records, the polling limit.
//! * [`allocation`]: hashed and static allocation.
//!
//! The device's MQTT side (topics, CONNACK, events) is the front door's; faults are consulted
//! there and given here as a `DpsVerdict`.

pub mod allocation;
pub mod enrollment;
pub mod registration;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use fakehub_protocol::dps::{RegisterBody, Request};
use fakehub_protocol::sas::SasToken;
use fakehub_protocol::username::DpsUsername;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The service's MQTT dialect (topics, bodies, group key derivation), from the protocol crate.
pub use fakehub_protocol::dps as wire;

pub use allocation::Allocation;
pub use enrollment::{
    Attested, EnrollmentError, EnrollmentRef, Enrollments, GroupEnrollment, IndividualEnrollment,
};
pub use registration::{Answer, Registration};

use crate::events::CloseCause;
use crate::faults::{ActiveFaults, DpsVerdict};
use crate::registry::{Device, Identity, IdentityRef, Registry, X509Auth};
use crate::services::Services;
use crate::sessions::{CloseRequest, Sessions, WireClose};
use allocation::Candidate;
use registration::{Assigned, Book};

fn default_scope() -> String {
    "0ne00FAKE00".to_owned()
}

fn default_name() -> String {
    "fakehub-dps".to_owned()
}

/// What happens when a device that was assigned registers again (the enrollments'
/// reprovisioning policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reprovision {
    /// Re-provision, and move the twin to the new hub (`deviceDataMigrated`): DPS's default.
    #[default]
    Migrate,
    /// Re-provision with a fresh twin (`deviceDataReset`).
    Reset,
    /// Never move the device: it stays on the hub it was first assigned.
    Never,
}

/// A provisioning service's configuration (the `dps:` of scenarios and `serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DpsConfig {
    /// The ID scope devices put in their username (default `0ne00FAKE00`).
    #[serde(default = "default_scope")]
    pub id_scope: String,
    /// The service's name in its records (default `fakehub-dps`).
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub individual: Vec<IndividualEnrollment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupEnrollment>,
    /// How registrations are spread over the hubs (default `{ policy: hashed }`).
    #[serde(default)]
    pub allocation: Allocation,
    #[serde(default)]
    pub reprovision: Reprovision,
    /// How long a registration stays `assigning` before DPS assigns it (default 0: the first
    /// poll gets the assignment).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub assign_after: Option<Duration>,
    /// The `retry-after` of `assigning` answers, whole seconds (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
}

impl Default for DpsConfig {
    fn default() -> Self {
        DpsConfig {
            id_scope: default_scope(),
            name: default_name(),
            individual: Vec::new(),
            groups: Vec::new(),
            allocation: Allocation::default(),
            reprovision: Reprovision::default(),
            assign_after: None,
            retry_after: None,
        }
    }
}

/// A hub linked to the service: what DPS needs of it to assign devices there.
pub(crate) struct LinkedHub {
    /// Its host name (its name in allocation, records and events).
    pub name: String,
    /// The host name devices are told to connect to (`assignedHub`).
    pub address: String,
    pub registry: Registry,
    pub faults: Arc<ActiveFaults>,
    pub sessions: Arc<Sessions>,
    pub services: Arc<Services>,
}

struct Inner {
    id_scope: String,
    name: String,
    enrollments: Enrollments,
    allocation: Allocation,
    reprovision: Reprovision,
    assign_after: Duration,
    retry_after: u32,
    hubs: RwLock<Vec<LinkedHub>>,
    certificate_authorities: RwLock<Vec<CertificateDer<'static>>>,
    book: Mutex<Book>,
}

/// A running provisioning service. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct Dps {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dps")
            .field("id_scope", &self.inner.id_scope)
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// The `retry-after` of `assigning` answers when the configuration does not say.
const DEFAULT_RETRY_AFTER: u32 = 3;

impl Dps {
    /// A service with these enrollments (keys left out are generated); `seed` draws its ids.
    pub fn new(config: &DpsConfig, seed: u64) -> Result<Dps, EnrollmentError> {
        let enrollments = Enrollments::new(&config.individual, &config.groups)?;
        Ok(Dps {
            inner: Arc::new(Inner {
                id_scope: config.id_scope.clone(),
                name: config.name.clone(),
                enrollments,
                allocation: config.allocation.clone(),
                reprovision: config.reprovision,
                assign_after: config.assign_after.unwrap_or_default(),
                retry_after: config.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                hubs: RwLock::new(Vec::new()),
                certificate_authorities: RwLock::new(Vec::new()),
                book: Mutex::new(Book::new(seed)),
            }),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.inner.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ID scope.
    pub fn id_scope(&self) -> &str {
        &self.inner.id_scope
    }

    /// The service's name (in its records).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The enrollments, keys included (never log them).
    pub fn enrollments(&self) -> &Enrollments {
        &self.inner.enrollments
    }

    /// The key a device registering as `registration_id` signs with: its individual enrollment's
    /// (`group` = `None`), or the one derived from the group's key. Never log it.
    pub fn device_key(&self, registration_id: &str, group: Option<&str>) -> Option<String> {
        self.inner.enrollments.device_key(registration_id, group)
    }

    /// DPS's record of a registration (after its first finished operation).
    pub fn registration(&self, registration_id: &str) -> Option<Registration> {
        self.book().registration(registration_id)
    }

    /// The linked hubs: each one's name and the host name devices are assigned.
    pub fn linked_hubs(&self) -> Vec<(String, String)> {
        self.inner
            .hubs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| (h.name.clone(), h.address.clone()))
            .collect()
    }

    /// The registration ids DPS knows: the individual enrollments' and every registered one.
    pub fn known_registration_ids(&self) -> Vec<String> {
        let mut ids = self.inner.enrollments.registration_ids();
        ids.extend(self.book().registration_ids());
        ids.sort();
        ids.dedup();
        ids
    }

    /// Link a hub (it starts assigning devices there).
    pub(crate) fn link(&self, hub: LinkedHub, ca: CertificateDer<'static>) {
        let mut cas = self
            .inner
            .certificate_authorities
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if !cas.contains(&ca) {
            cas.push(ca);
        }
        drop(cas);
        let mut hubs = self.inner.hubs.write().unwrap_or_else(|p| p.into_inner());
        hubs.retain(|h| !h.name.eq_ignore_ascii_case(&hub.name));
        hubs.push(hub);
    }

    /// Unlink a hub (when it stops).
    pub(crate) fn unlink(&self, name: &str) {
        self.inner
            .hubs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Attest a provisioning CONNECT: the ID scope, the client id (= the registration id), then
    /// the SAS token or the client certificate. The error is safe to log.
    pub(crate) fn attest(
        &self,
        username: &DpsUsername,
        client_id: &str,
        password: &str,
        certs: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<Attested, String> {
        if username.id_scope != self.inner.id_scope {
            return Err(format!(
                "unknown ID scope '{}' (this service is '{}')",
                username.id_scope, self.inner.id_scope
            ));
        }
        let registration = &username.registration_id;
        if client_id != registration {
            return Err(format!(
                "client id '{client_id}' is not the registration id '{registration}'"
            ));
        }
        if password.is_empty() {
            let cas = self
                .inner
                .certificate_authorities
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return self
                .inner
                .enrollments
                .attest_x509(registration, certs, &cas, now);
        }
        let token = SasToken::parse(password).map_err(|e| format!("bad SAS token: {e}"))?;
        self.inner
            .enrollments
            .attest_sas(&self.inner.id_scope, registration, &token, now)
    }

    /// Answer a request of an attested device, as the active faults' `verdict` says (a `Drop` is
    /// the caller's to carry out).
    pub(crate) fn answer(
        &self,
        attested: &Attested,
        request: &Request,
        body: &[u8],
        verdict: &DpsVerdict,
        (now, elapsed): (SystemTime, Duration),
    ) -> Answer {
        let mut book = self.book();
        if let DpsVerdict::Refuse {
            status,
            error_code,
            message,
            retry_after,
        } = verdict
        {
            return book.error(now, (*status, *error_code), message, *retry_after);
        }
        match request {
            Request::Register { .. } => {
                let parsed: Result<RegisterBody, _> = serde_json::from_slice(body);
                match parsed {
                    Err(e) => book.error(
                        now,
                        (400, 400_004),
                        &format!("the register body is not JSON of the expected shape: {e}"),
                        None,
                    ),
                    Ok(b)
                        if b.registration_id
                            .as_deref()
                            .is_some_and(|r| r != attested.registration_id) =>
                    {
                        book.error(
                            now,
                            (400, 400_004),
                            "the body's registrationId is not the connection's registration id",
                            None,
                        )
                    }
                    Ok(_) => book.register(
                        attested,
                        elapsed,
                        self.inner.assign_after,
                        self.inner.retry_after,
                    ),
                }
            }
            Request::Poll { operation_id, .. } => {
                if let Some(wait) = book.over_poll_limit(&attested.registration_id, elapsed) {
                    let message = format!(
                        "Throttled: more than {} operation-status requests in {}s",
                        registration::POLLS_PER_WINDOW,
                        registration::POLL_WINDOW.as_secs()
                    );
                    return book.error(now, (429, 429_001), &message, Some(wait));
                }
                let (hold_until, retry_after) = match verdict {
                    DpsVerdict::Assigning { until, retry_after } => (Some(*until), *retry_after),
                    _ => (None, self.inner.retry_after),
                };
                let disabled = matches!(verdict, DpsVerdict::Disabled);
                book.poll(
                    &attested.registration_id,
                    operation_id,
                    (now, elapsed),
                    retry_after,
                    hold_until,
                    disabled,
                    |a, previous| self.assign(a, previous),
                )
            }
        }
    }

    /// Allocate a hub and put the device there (see the module documentation).
    fn assign(&self, a: &Attested, previous: Option<&Registration>) -> Result<Assigned, String> {
        let hubs = self.inner.hubs.read().unwrap_or_else(|p| p.into_inner());
        let candidates: Vec<Candidate<'_>> = hubs
            .iter()
            .map(|h| Candidate {
                name: &h.name,
                down: h.faults.hub_unlinked(),
            })
            .collect();
        let before = previous
            .filter(|p| p.status == "assigned")
            .and_then(|p| p.hub.as_deref())
            .and_then(|name| hubs.iter().position(|h| h.name.eq_ignore_ascii_case(name)));
        let target = match (self.inner.reprovision, before) {
            (Reprovision::Never, Some(i)) => Some(i),
            _ => self.inner.allocation.pick(&a.registration_id, &candidates),
        };
        let Some(target) = target else {
            return Err(if hubs.is_empty() {
                "no IoT hub is linked to the provisioning service".to_owned()
            } else {
                "no linked IoT hub can take the registration (every one is out of rotation)"
                    .to_owned()
            });
        };
        let hub = &hubs[target];
        let who = IdentityRef::device(a.registration_id.clone());
        let substatus = match before {
            None => "initialAssignment".to_owned(),
            Some(i) if i == target => match self.inner.reprovision {
                Reprovision::Reset => {
                    hub.services.take_twin(&who);
                    "deviceDataReset".to_owned()
                }
                _ => previous
                    .and_then(|p| p.substatus.clone())
                    .unwrap_or_else(|| "initialAssignment".to_owned()),
            },
            Some(i) => {
                let old = &hubs[i];
                let twin = old.services.take_twin(&who);
                old.registry.remove_device(&who.device_id);
                old.sessions.close(
                    &who.client_id(),
                    CloseRequest {
                        wire: WireClose::Fin,
                        cause: CloseCause::Reprovisioned,
                        detail: format!("re-provisioned to {}", hub.name),
                        result: None,
                    },
                );
                match (self.inner.reprovision, twin) {
                    (Reprovision::Migrate, Some(twin)) => {
                        hub.services.put_twin(&who, twin);
                        "deviceDataMigrated".to_owned()
                    }
                    (Reprovision::Migrate, None) => "deviceDataMigrated".to_owned(),
                    _ => "deviceDataReset".to_owned(),
                }
            }
        };
        // Created, or its credentials brought up to date (an existing identity keeps its modules
        // and its enabled state).
        let (keys, x509) = match &a.keys {
            Some(keys) => (keys.clone(), None),
            None => (
                crate::registry::SymmetricKeys::generate(),
                Some(X509Auth::CertificateAuthority),
            ),
        };
        let updated = hub.registry.update(&who, |i| {
            i.keys = keys.clone();
            i.x509 = x509.clone();
        });
        if !updated {
            let mut identity = Identity::new(keys);
            identity.x509 = x509;
            hub.registry.insert_device(Device {
                id: who.device_id.clone(),
                identity,
                modules: Default::default(),
            });
        }
        Ok(Assigned {
            hub: hub.name.clone(),
            assigned_hub: hub.address.clone(),
            device_id: who.device_id,
            substatus,
        })
    }
}
