//! Who may call: SAS tokens of shared access policies, checked as IoT Hub checks them (research:
//! `notes/service-rest-api.md` §1).
//!
//! `Authorization: SharedAccessSignature sr=<host>&sig=<sig>&se=<epoch>&skn=<policy>`, the fields
//! in any order (Python and Node order them differently). The signature is HMAC-SHA256 over `sr`
//! exactly as sent, a newline and `se` (the same verification as device tokens: [`crate::sas`]);
//! `sig` is percent-decoded and may hold a raw `/` (Python leaves it unencoded). `sr` names the hub:
//! its host name, compared without case, with or without a `:port` (Python puts the port of
//! `HostName=host:port` in it) and with or without `https://`. The policy's rights must include the
//! call's ([`Right`]); anything else is 401.
//!
//! Expiry is judged on the real clock, not the hub's virtual one: the callers are test suites that
//! live in real time and mint their tokens from it, and an `advance` of the hub's clock must not
//! lock them out.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::registry::Right;
use crate::sas::SasToken;
use crate::HubHandle;

/// A permission a route needs, as a type (so a handler's signature says what it needs).
pub trait Permission {
    const RIGHT: Right;
}

/// `RegistryRead`.
pub struct RegistryRead;
/// `RegistryWrite` (`RegistryReadWrite`).
pub struct RegistryWrite;
/// `ServiceConnect`.
pub struct ServiceConnect;

impl Permission for RegistryRead {
    const RIGHT: Right = Right::RegistryRead;
}
impl Permission for RegistryWrite {
    const RIGHT: Right = Right::RegistryWrite;
}
impl Permission for ServiceConnect {
    const RIGHT: Right = Right::ServiceConnect;
}

/// An authenticated caller with permission `P`: the name of the policy its token was signed with.
pub struct Authorized<P> {
    pub policy: String,
    _needs: PhantomData<P>,
}

impl<P: Permission, S> FromRequestParts<S> for Authorized<P>
where
    Arc<HubHandle>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let hub = Arc::<HubHandle>::from_ref(state);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let policy = verify(&hub, header, P::RIGHT, SystemTime::now())?;
        Ok(Authorized {
            policy,
            _needs: PhantomData,
        })
    }
}

/// The host part of a token's audience: without `https://`, a trailing `/` or a `:port`.
fn audience_host(audience: &str) -> String {
    let a = audience.trim().to_ascii_lowercase();
    let a = a
        .strip_prefix("https://")
        .or_else(|| a.strip_prefix("amqps://"))
        .unwrap_or(&a)
        .trim_end_matches('/');
    match a.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_owned()
        }
        _ => a.to_owned(),
    }
}

/// Check an `Authorization` header for `needed` on `hub` at real time `now`; the policy name. The
/// error texts never hold the token, a key or a signature.
pub fn verify(
    hub: &HubHandle,
    header: Option<&str>,
    needed: Right,
    now: SystemTime,
) -> Result<String, ApiError> {
    let header = header
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header missing"))?;
    let token = SasToken::parse(header).map_err(|e| {
        ApiError::unauthorized(format!(
            "the Authorization header is not a valid SAS token: {e}"
        ))
    })?;
    let name = token.key_name().ok_or_else(|| {
        ApiError::unauthorized("the SAS token names no shared access policy (`skn`)")
    })?;
    let host = hub.host_name();
    if audience_host(token.audience()) != host.to_ascii_lowercase() {
        return Err(ApiError::unauthorized(format!(
            "the SAS token's resource `{}` is not this hub, `{host}`",
            token.audience()
        )));
    }
    let policy = hub
        .registry()
        .policy(name)
        .ok_or_else(|| ApiError::unauthorized(format!("no shared access policy '{name}'")))?;
    if !policy
        .keys
        .iter()
        .any(|k| token.verify_signature(k).is_ok())
    {
        return Err(ApiError::unauthorized(format!(
            "the SAS signature does not match the keys of policy '{name}'"
        )));
    }
    token
        .verify_not_expired(now)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if !policy.rights.allow(needed) {
        return Err(ApiError::unauthorized(format!(
            "Authorization rule '{name}' does not allow {needed}"
        )));
    }
    Ok(policy.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_name_the_host_with_or_without_scheme_and_port() {
        for a in [
            "myhub.azure-devices.net",
            "MyHub.Azure-Devices.net",
            "https://myhub.azure-devices.net/",
            "myhub.azure-devices.net:8443",
        ] {
            assert_eq!(audience_host(a), "myhub.azure-devices.net", "{a}");
        }
        assert_eq!(
            audience_host("myhub.azure-devices.net/devices/d"),
            "myhub.azure-devices.net/devices/d"
        );
    }
}
