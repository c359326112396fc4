//! Enrollments, and attestation: who may register, with which key or certificate.
//!
//! An individual enrollment names one registration id and its symmetric keys (or says it attests
//! with an X.509 certificate). A group enrollment lets any registration id in whose key is derived
//! from the group key (`HMAC-SHA256(group key, registration id)`, as DPS derives it), or, for an
//! X.509 group, any certificate issued by a CA the service trusts (the hubs' CA) whose CN is the
//! registration id. SAS tokens are checked as DPS does: audience `{scope}/registrations/{id}`, the
//! signature over `sr` exactly as sent (Python percent-encodes it, Node does not), `skn` not
//! required, five minutes of clock skew.

use std::time::SystemTime;

use fakehub_protocol::dps;
use fakehub_protocol::sas::SasToken;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::registry::SymmetricKeys;

fn yes() -> bool {
    true
}

/// One device's enrollment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IndividualEnrollment {
    pub registration_id: String,
    /// Base64. Left out (and no `x509`): generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// Attest with a certificate issued by the hubs' CA (CN = the registration id) instead of keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub x509: bool,
    /// `false`: the enrollment is disabled (registrations end `disabled`).
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// A group of devices sharing a group key (or a CA).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupEnrollment {
    pub name: String,
    /// Base64. Left out (and no `x509`): generated. Each device signs with the key derived from
    /// it for its registration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// Any certificate issued by the hubs' CA, CN = the registration id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub x509: bool,
    /// `false`: the enrollment group is disabled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

macro_rules! redacted_debug {
    ($ty:ty, $field:ident) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field(stringify!($field), &self.$field)
                    .field("x509", &self.x509)
                    .field("enabled", &self.enabled)
                    .finish_non_exhaustive()
            }
        }
    };
}
redacted_debug!(IndividualEnrollment, registration_id);
redacted_debug!(GroupEnrollment, name);

/// Which enrollment a registration came in by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentRef {
    Individual(String),
    Group(String),
}

impl EnrollmentRef {
    /// For people: `individual enrollment 'x'` or `enrollment group 'g'`.
    pub fn describe(&self) -> String {
        match self {
            EnrollmentRef::Individual(id) => format!("individual enrollment '{id}'"),
            EnrollmentRef::Group(name) => format!("enrollment group '{name}'"),
        }
    }
}

/// How a registration proved who it is, and what its hub identity gets.
#[derive(Clone, PartialEq, Eq)]
pub struct Attested {
    pub registration_id: String,
    pub enrollment: EnrollmentRef,
    /// The device's keys (the enrollment's, or derived from the group's); `None` for X.509.
    pub keys: Option<SymmetricKeys>,
    /// Whether the enrollment is enabled.
    pub enabled: bool,
}

impl std::fmt::Debug for Attested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attested")
            .field("registration_id", &self.registration_id)
            .field("enrollment", &self.enrollment)
            .field("x509", &self.keys.is_none())
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// The enrollments of one service, with their keys filled in.
#[derive(Debug, Clone, Default)]
pub struct Enrollments {
    pub individual: Vec<IndividualEnrollment>,
    pub groups: Vec<GroupEnrollment>,
}

/// An enrollment that cannot be used as written. Never quotes a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentError {
    #[error("{0}: the key is not valid base64")]
    BadKey(String),
    #[error("{0}: an X.509 enrollment has no keys")]
    KeysWithX509(String),
    #[error("{0} is defined twice")]
    Duplicate(String),
    #[error("an enrollment needs a registration id or a group name")]
    Empty,
}

fn keys_of(
    what: String,
    primary: &Option<String>,
    secondary: &Option<String>,
    x509: bool,
) -> Result<(Option<String>, Option<String>), EnrollmentError> {
    if x509 {
        if primary.is_some() || secondary.is_some() {
            return Err(EnrollmentError::KeysWithX509(what));
        }
        return Ok((None, None));
    }
    for key in primary.iter().chain(secondary.iter()) {
        // Deriving a key checks it is base64 that HMAC can use.
        dps::derive_device_key(key, "check").map_err(|_| EnrollmentError::BadKey(what.clone()))?;
    }
    let primary = primary
        .clone()
        .unwrap_or_else(fakehub_protocol::sas::generate_key);
    Ok((Some(primary), secondary.clone()))
}

impl Enrollments {
    /// Check the enrollments and generate the keys left out.
    pub fn new(
        individual: &[IndividualEnrollment],
        groups: &[GroupEnrollment],
    ) -> Result<Enrollments, EnrollmentError> {
        let mut out = Enrollments::default();
        let mut seen = std::collections::BTreeSet::new();
        // A name given once, and its keys (generated when left out).
        let mut admit = |what: String,
                         name: &str,
                         primary: &Option<String>,
                         secondary: &Option<String>,
                         x509: bool| {
            if name.is_empty() {
                return Err(EnrollmentError::Empty);
            }
            if !seen.insert(what.clone()) {
                return Err(EnrollmentError::Duplicate(what));
            }
            keys_of(what, primary, secondary, x509)
        };
        for e in individual {
            let what = format!("individual enrollment '{}'", e.registration_id);
            let (primary_key, secondary_key) = admit(
                what,
                &e.registration_id,
                &e.primary_key,
                &e.secondary_key,
                e.x509,
            )?;
            out.individual.push(IndividualEnrollment {
                primary_key,
                secondary_key,
                ..e.clone()
            });
        }
        for g in groups {
            let what = format!("enrollment group '{}'", g.name);
            let (primary_key, secondary_key) =
                admit(what, &g.name, &g.primary_key, &g.secondary_key, g.x509)?;
            out.groups.push(GroupEnrollment {
                primary_key,
                secondary_key,
                ..g.clone()
            });
        }
        Ok(out)
    }

    /// The key a device registering as `registration_id` signs with: its individual enrollment's
    /// primary key, or the key derived from the group's primary key (`group`: which group).
    pub fn device_key(&self, registration_id: &str, group: Option<&str>) -> Option<String> {
        match group {
            None => self
                .individual
                .iter()
                .find(|e| e.registration_id == registration_id)
                .and_then(|e| e.primary_key.clone()),
            Some(name) => self
                .groups
                .iter()
                .find(|g| g.name == name)
                .and_then(|g| g.primary_key.as_deref())
                .and_then(|k| dps::derive_device_key(k, registration_id).ok()),
        }
    }

    /// Attest a SAS registration: the token must be scoped to the registration and signed with its
    /// individual key, or with a key derived from a group's key.
    pub fn attest_sas(
        &self,
        id_scope: &str,
        registration_id: &str,
        token: &SasToken,
        now: SystemTime,
    ) -> Result<Attested, String> {
        token
            .verify_audience(&dps::resource_uri(id_scope, registration_id))
            .map_err(|e| e.to_string())?;
        if token.verify_not_expired(now).is_err() {
            return Err("the SAS token has expired".into());
        }
        let signed = |keys: &[&str]| keys.iter().any(|k| token.verify_signature(k).is_ok());
        if let Some(e) = self
            .individual
            .iter()
            .find(|e| e.registration_id == registration_id)
        {
            let keys: Vec<&str> = e
                .primary_key
                .iter()
                .chain(e.secondary_key.iter())
                .map(String::as_str)
                .collect();
            if e.x509 {
                return Err(format!(
                    "individual enrollment '{registration_id}' attests with an X.509 certificate"
                ));
            }
            if !signed(&keys) {
                return Err(format!(
                    "the SAS signature does not match the keys of individual enrollment '{registration_id}'"
                ));
            }
            return Ok(Attested {
                registration_id: registration_id.to_owned(),
                enrollment: EnrollmentRef::Individual(registration_id.to_owned()),
                keys: e.primary_key.clone().map(|p| SymmetricKeys {
                    primary_key: p,
                    secondary_key: e.secondary_key.clone(),
                }),
                enabled: e.enabled,
            });
        }
        for g in self.groups.iter().filter(|g| !g.x509) {
            let derive = |k: &Option<String>| {
                k.as_deref()
                    .and_then(|k| dps::derive_device_key(k, registration_id).ok())
            };
            let (primary, secondary) = (derive(&g.primary_key), derive(&g.secondary_key));
            let keys: Vec<&str> = primary
                .iter()
                .chain(secondary.iter())
                .map(String::as_str)
                .collect();
            if signed(&keys) {
                return Ok(Attested {
                    registration_id: registration_id.to_owned(),
                    enrollment: EnrollmentRef::Group(g.name.clone()),
                    keys: primary.map(|p| SymmetricKeys {
                        primary_key: p,
                        secondary_key: secondary.clone(),
                    }),
                    enabled: g.enabled,
                });
            }
        }
        Err(format!(
            "no enrollment for '{registration_id}': no individual enrollment, and the signature matches no enrollment group's derived key"
        ))
    }

    /// Attest an X.509 registration: the certificate must chain to a trusted CA and name the
    /// registration id as its CN; then an individual X.509 enrollment for it, or an X.509 group.
    pub fn attest_x509(
        &self,
        registration_id: &str,
        chain: &[CertificateDer<'static>],
        cas: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<Attested, String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no SAS token and no client certificate".into());
        };
        crate::tls::verify_client_chain(leaf, intermediates, cas, now)
            .map_err(|e| format!("the client certificate is not issued by a trusted CA: {e}"))?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("");
        if cn != registration_id {
            return Err(format!(
                "the client certificate's CN '{cn}' is not the registration id '{registration_id}'"
            ));
        }
        let individual = self
            .individual
            .iter()
            .find(|e| e.registration_id == registration_id);
        let (enrollment, enabled) = match individual {
            Some(e) if e.x509 => (
                EnrollmentRef::Individual(registration_id.to_owned()),
                e.enabled,
            ),
            Some(_) => {
                return Err(format!(
                    "individual enrollment '{registration_id}' attests with symmetric keys"
                ))
            }
            None => match self.groups.iter().find(|g| g.x509) {
                Some(g) => (EnrollmentRef::Group(g.name.clone()), g.enabled),
                None => return Err(format!("no X.509 enrollment for '{registration_id}'")),
            },
        };
        Ok(Attested {
            registration_id: registration_id.to_owned(),
            enrollment,
            keys: None,
            enabled,
        })
    }

    /// The registration ids of the individual enrollments.
    pub fn registration_ids(&self) -> Vec<String> {
        self.individual
            .iter()
            .map(|e| e.registration_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const SCOPE: &str = "0ne00000001";
    const GROUP_KEY: &str = "Z3JvdXBrZXlncm91cGtleWdyb3Vwa2V5Z3JvdXBrZXk=";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn token(registration: &str, key: &str) -> SasToken {
        let t = fakehub_protocol::sas::mint(
            &dps::resource_uri(SCOPE, registration),
            key,
            Some("registration"),
            now() + Duration::from_secs(3600),
        )
        .unwrap();
        SasToken::parse(&t).unwrap()
    }

    fn enrollments() -> Enrollments {
        Enrollments::new(
            &[IndividualEnrollment {
                registration_id: "solo".into(),
                primary_key: None,
                secondary_key: None,
                x509: false,
                enabled: true,
            }],
            &[GroupEnrollment {
                name: "fleet".into(),
                primary_key: Some(GROUP_KEY.into()),
                secondary_key: None,
                x509: false,
                enabled: false,
            }],
        )
        .unwrap()
    }

    #[test]
    fn individual_and_group_keys_attest_and_others_do_not() {
        let e = enrollments();
        let solo_key = e.device_key("solo", None).unwrap();
        let a = e
            .attest_sas(SCOPE, "solo", &token("solo", &solo_key), now())
            .unwrap();
        assert_eq!(a.enrollment, EnrollmentRef::Individual("solo".into()));
        assert!(a.enabled);
        // The documented derivation: any registration id, with its own derived key.
        let derived = e.device_key("dev-01", Some("fleet")).unwrap();
        assert_eq!(derived, "UbTx9Haqnr1lNBI/FN3tMT5KRSGmiH0e4h9ExF/SyWA=");
        let g = e
            .attest_sas(SCOPE, "dev-01", &token("dev-01", &derived), now())
            .unwrap();
        assert_eq!(g.enrollment, EnrollmentRef::Group("fleet".into()));
        assert!(
            !g.enabled,
            "a disabled group still attests; registration ends disabled"
        );
        assert_eq!(g.keys.unwrap().primary_key, derived);
        // Another device's derived key, the group key itself, a wrong scope: refused.
        assert!(e
            .attest_sas(SCOPE, "dev-02", &token("dev-02", &derived), now())
            .is_err());
        assert!(e
            .attest_sas(SCOPE, "dev-01", &token("dev-01", GROUP_KEY), now())
            .is_err());
        assert!(e
            .attest_sas("0ne0other", "dev-01", &token("dev-01", &derived), now())
            .is_err());
        let late = now() + Duration::from_secs(3600 + 301);
        let r = e
            .attest_sas(SCOPE, "dev-01", &token("dev-01", &derived), late)
            .unwrap_err();
        assert!(r.contains("expired"), "{r}");
        assert!(!r.contains(&derived));
    }

    #[test]
    fn bad_enrollments_are_refused_without_quoting_keys() {
        let bad = Enrollments::new(
            &[],
            &[GroupEnrollment {
                name: "g".into(),
                primary_key: Some("s3cr3t!!".into()),
                secondary_key: None,
                x509: false,
                enabled: true,
            }],
        )
        .unwrap_err();
        assert!(!bad.to_string().contains("s3cr3t"), "{bad}");
        let twice = IndividualEnrollment {
            registration_id: "d".into(),
            primary_key: None,
            secondary_key: None,
            x509: false,
            enabled: true,
        };
        assert!(matches!(
            Enrollments::new(&[twice.clone(), twice], &[]),
            Err(EnrollmentError::Duplicate(_))
        ));
    }

    #[test]
    fn x509_needs_a_trusted_certificate_named_after_the_registration() {
        let hub = crate::tls::HubCertificates::generate("h").unwrap();
        let e = Enrollments::new(
            &[],
            &[GroupEnrollment {
                name: "certs".into(),
                primary_key: None,
                secondary_key: None,
                x509: true,
                enabled: true,
            }],
        )
        .unwrap();
        let cas = [hub.ca_der()];
        let cert = hub.issue_device_certificate("cam-1").unwrap();
        let a = e
            .attest_x509(
                "cam-1",
                std::slice::from_ref(&cert.cert_der),
                &cas,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(a.enrollment, EnrollmentRef::Group("certs".into()));
        assert!(a.keys.is_none());
        assert!(e
            .attest_x509(
                "cam-2",
                std::slice::from_ref(&cert.cert_der),
                &cas,
                SystemTime::now()
            )
            .is_err());
        let stranger = crate::tls::DeviceCertificate::self_signed("cam-1").unwrap();
        assert!(e
            .attest_x509(
                "cam-1",
                std::slice::from_ref(&stranger.cert_der),
                &cas,
                SystemTime::now()
            )
            .is_err());
    }
}
