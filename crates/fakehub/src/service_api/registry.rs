//! The identity registry over REST: devices and modules (`PUT/GET/DELETE /devices/{id}`, the
//! module forms, the lists), enabling and disabling and new keys (a `PUT` with `If-Match`: a
//! full replacement, where an empty key asks the hub for a fresh one, as IoT Hub does), the
//! statistics, and the C2D purge (`DELETE /devices/{id}/commands`).
//!
//! Status codes are IoT Hub's, which the Python SDK checks exactly: 200 for every read, create and
//! replace (not 201), 204 for a delete, 200 for a purge.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Authorized, RegistryRead, RegistryWrite, ServiceConnect};
use super::error::{json_response, ApiError};
use super::{body, if_match};
use crate::registry::{Identity, IdentityRef, X509Auth};
use crate::services::IdentitySpec;
use crate::HubHandle;

pub(super) fn routes() -> Router<Arc<HubHandle>> {
    Router::new()
        .route("/devices", get(list_devices))
        .route("/devices/", get(list_devices))
        .route(
            "/devices/{id}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route("/devices/{id}/modules", get(list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            get(get_module).put(put_module).delete(delete_module),
        )
        .route("/devices/{id}/commands", delete(purge_commands))
        .route("/statistics/devices", get(device_statistics))
        .route("/statistics/service", get(service_statistics))
}

/// `2021-04-12T08:15:00.000Z`, or IoT Hub's "never" (`0001-01-01T00:00:00Z`).
pub(super) fn time_or_never(t: Option<std::time::SystemTime>) -> String {
    t.map(crate::clock::rfc3339_millis)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned())
}

fn connection_state(hub: &HubHandle, who: &IdentityRef) -> &'static str {
    if hub.is_connected(who) {
        "Connected"
    } else {
        "Disconnected"
    }
}

/// The `authentication` object: keys for SAS identities (certificate ones have none anyone sees).
pub(super) fn authentication(i: &Identity) -> Value {
    let (primary, secondary) = match &i.x509 {
        Some(X509Auth::SelfSigned { primary, secondary }) => {
            (Some(primary.clone()), secondary.clone())
        }
        _ => (None, None),
    };
    let keys = match i.x509 {
        None => json!({"primaryKey": i.keys.primary_key, "secondaryKey": i.keys.secondary_key}),
        Some(_) => json!({"primaryKey": null, "secondaryKey": null}),
    };
    json!({
        "symmetricKey": keys,
        "x509Thumbprint": {"primaryThumbprint": primary, "secondaryThumbprint": secondary},
        "type": i.auth_type(),
    })
}

/// A device or module as the registry shows it.
async fn identity_json(hub: &HubHandle, who: &IdentityRef, i: &Identity) -> Value {
    let status = if i.enabled { "enabled" } else { "disabled" };
    match &who.module_id {
        None => json!({
            "deviceId": who.device_id,
            "generationId": i.generation_id,
            "etag": i.etag(),
            "connectionState": connection_state(hub, who),
            "status": status,
            "statusReason": i.status_reason,
            "statusUpdatedTime": time_or_never(i.status_updated),
            "cloudToDeviceMessageCount": hub.c2d_queue_depth(&who.device_id).await,
            "authentication": authentication(i),
            "capabilities": {"iotEdge": i.iot_edge},
            "deviceScope": null,
            "parentScopes": [],
        }),
        Some(m) => json!({
            "moduleId": m,
            "managedBy": i.managed_by,
            "deviceId": who.device_id,
            "generationId": i.generation_id,
            "etag": i.etag(),
            "connectionState": connection_state(hub, who),
            "cloudToDeviceMessageCount": 0,
            "authentication": authentication(i),
        }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Enabled,
    Disabled,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum AuthType {
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeysBody {
    #[serde(default)]
    primary_key: Option<String>,
    #[serde(default)]
    secondary_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThumbprintsBody {
    #[serde(default)]
    primary_thumbprint: Option<String>,
    #[serde(default)]
    secondary_thumbprint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthBody {
    #[serde(default, rename = "type")]
    kind: Option<AuthType>,
    #[serde(default)]
    symmetric_key: Option<KeysBody>,
    #[serde(default)]
    x509_thumbprint: Option<ThumbprintsBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities {
    #[serde(default)]
    iot_edge: bool,
}

/// A device or module as the SDKs send it. Fields the hub sets (etag, generationId,
/// connectionState, …) are read past.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityBody {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    module_id: Option<String>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    status_reason: Option<String>,
    #[serde(default)]
    authentication: Option<AuthBody>,
    #[serde(default)]
    capabilities: Option<Capabilities>,
    #[serde(default)]
    managed_by: Option<String>,
}

fn thumbprint(t: &Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    let Some(t) = t.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let hex: String = t.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if !(hex.len() == 40 || hex.len() == 64) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(format!(
            "`authentication.x509Thumbprint.{field}` must be a SHA-1 (40) or SHA-256 (64) hex thumbprint"
        )));
    }
    Ok(Some(hex.to_ascii_uppercase()))
}

impl IdentityBody {
    /// Check the body against the path and turn it into what the hub registers.
    fn spec(self, who: &IdentityRef) -> Result<IdentitySpec, ApiError> {
        if let Some(d) = self.device_id.as_deref().filter(|d| *d != who.device_id) {
            return Err(ApiError::invalid(format!(
                "the body's deviceId '{d}' is not the path's '{}'",
                who.device_id
            )));
        }
        if let (Some(m), Some(path)) = (self.module_id.as_deref(), who.module_id.as_deref()) {
            if m != path {
                return Err(ApiError::invalid(format!(
                    "the body's moduleId '{m}' is not the path's '{path}'"
                )));
            }
        }
        let auth = self.authentication.unwrap_or_default();
        let thumbs = auth.x509_thumbprint.unwrap_or_default();
        let primary = thumbprint(&thumbs.primary_thumbprint, "primaryThumbprint")?;
        let secondary = thumbprint(&thumbs.secondary_thumbprint, "secondaryThumbprint")?;
        let kind = match auth.kind {
            Some(k) => k,
            None if primary.is_some() => AuthType::SelfSigned,
            None => AuthType::Sas,
        };
        let keys = auth.symmetric_key.unwrap_or_default();
        let x509 = match kind {
            AuthType::Sas => None,
            AuthType::SelfSigned => Some(X509Auth::SelfSigned {
                primary: primary.ok_or_else(|| {
                    ApiError::invalid(
                        "`authentication.x509Thumbprint.primaryThumbprint` is needed for type selfSigned",
                    )
                })?,
                secondary,
            }),
            AuthType::CertificateAuthority => Some(X509Auth::CertificateAuthority),
            AuthType::None => {
                return Err(ApiError::invalid(
                    "`authentication.type` none is not supported: use sas, selfSigned or certificateAuthority",
                ))
            }
        };
        Ok(IdentitySpec {
            primary_key: keys.primary_key,
            secondary_key: keys.secondary_key,
            x509,
            enabled: !matches!(self.status, Some(Status::Disabled)),
            status_reason: self.status_reason,
            iot_edge: self.capabilities.is_some_and(|c| c.iot_edge),
            managed_by: self.managed_by,
        })
    }
}

fn module_ref(device: String, module: Option<String>) -> IdentityRef {
    IdentityRef {
        device_id: device,
        module_id: module,
    }
}

async fn show(hub: &HubHandle, who: &IdentityRef) -> Result<Response, ApiError> {
    let i = hub.registry().identity(who).ok_or_else(|| not_found(who))?;
    Ok(json_response(
        StatusCode::OK,
        &identity_json(hub, who, &i).await,
    ))
}

fn not_found(who: &IdentityRef) -> ApiError {
    match &who.module_id {
        None => crate::services::RegistryError::DeviceNotFound(who.device_id.clone()).into(),
        Some(_) => crate::services::RegistryError::ModuleNotFound(who.client_id()).into(),
    }
}

/// Create (no `If-Match`) or replace (with one) a device or module.
async fn put(
    hub: &HubHandle,
    who: &IdentityRef,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let body: IdentityBody = body::parse::<Option<IdentityBody>>(bytes)
        .map_err(|e| ApiError::invalid(e.to_string()))?
        .unwrap_or_default();
    let spec = body.spec(who)?;
    let identity = if headers.contains_key(header::IF_MATCH) {
        hub.replace_identity(who, &spec, if_match(headers).as_deref())?
    } else {
        hub.create_identity(who, &spec)?
    };
    Ok(json_response(
        StatusCode::OK,
        &identity_json(hub, who, &identity).await,
    ))
}

async fn remove(
    hub: &HubHandle,
    who: &IdentityRef,
    headers: &HeaderMap,
) -> Result<StatusCode, ApiError> {
    hub.delete_identity(who, if_match(headers).as_deref())?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    top: Option<usize>,
}

async fn list_devices(
    _: Authorized<RegistryRead>,
    State(hub): State<Arc<HubHandle>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let mut out = Vec::new();
    for d in hub
        .registry()
        .devices()
        .into_iter()
        .take(q.top.unwrap_or(usize::MAX))
    {
        let who = IdentityRef::device(&d.id);
        out.push(identity_json(&hub, &who, &d.identity).await);
    }
    json_response(StatusCode::OK, &Value::Array(out))
}

async fn get_device(
    _: Authorized<RegistryRead>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    show(&hub, &IdentityRef::device(&id)).await
}

async fn put_device(
    _: Authorized<RegistryWrite>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    put(&hub, &IdentityRef::device(&id), &headers, &bytes).await
}

async fn delete_device(
    _: Authorized<RegistryWrite>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    remove(&hub, &IdentityRef::device(&id), &headers).await
}

async fn list_modules(
    _: Authorized<RegistryRead>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = hub
        .registry()
        .device(&id)
        .ok_or_else(|| not_found(&IdentityRef::device(&id)))?;
    let mut out = Vec::new();
    for (m, i) in &d.modules {
        let who = module_ref(id.clone(), Some(m.clone()));
        out.push(identity_json(&hub, &who, i).await);
    }
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

async fn get_module(
    _: Authorized<RegistryRead>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    show(&hub, &module_ref(id, Some(mid))).await
}

async fn put_module(
    _: Authorized<RegistryWrite>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    put(&hub, &module_ref(id, Some(mid)), &headers, &bytes).await
}

async fn delete_module(
    _: Authorized<RegistryWrite>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    remove(&hub, &module_ref(id, Some(mid)), &headers).await
}

async fn purge_commands(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let count = hub.purge_c2d(&id)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"totalMessagesPurged": count, "deviceId": id, "moduleId": null}),
    ))
}

async fn device_statistics(
    _: Authorized<RegistryRead>,
    State(hub): State<Arc<HubHandle>>,
) -> Response {
    let devices = hub.registry().devices();
    let enabled = devices.iter().filter(|d| d.identity.enabled).count();
    json_response(
        StatusCode::OK,
        &json!({
            "totalDeviceCount": devices.len(),
            "enabledDeviceCount": enabled,
            "disabledDeviceCount": devices.len() - enabled,
        }),
    )
}

async fn service_statistics(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"connectedDeviceCount": hub.connected_count()}),
    )
}
