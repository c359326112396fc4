//! Twins over REST: `GET`, `PATCH` (merge patches of the tags and the desired properties; the
//! device gets the desired patch) and `PUT` (a replacement of both; the device gets the
//! difference) of `/twins/{id}` and `/twins/{id}/modules/{mid}`, with the twin's ETag in
//! `If-Match` (`"*"` for any). The service side cannot write reported properties (400).
//!
//! The twin document carries what the hub keeps: ids, `etag` and `deviceEtag`, status and
//! connection state, authentication type, `version`, `tags`, and `properties.desired` /
//! `properties.reported` each with its `$version` (no `$metadata`: the hub keeps no per-property
//! update times).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::{Authorized, ServiceConnect};
use super::error::{json_response, ApiError};
use super::registry::{authentication, time_or_never};
use super::{body, if_match};
use crate::registry::IdentityRef;
use crate::HubHandle;
use crate::{RegistryError, Twin};

pub(super) fn routes() -> Router<Arc<HubHandle>> {
    Router::new()
        .route(
            "/twins/{id}",
            get(get_device_twin)
                .patch(patch_device_twin)
                .put(put_device_twin),
        )
        .route(
            "/twins/{id}/modules/{mid}",
            get(get_module_twin)
                .patch(patch_module_twin)
                .put(put_module_twin),
        )
}

async fn twin_json(hub: &HubHandle, who: &IdentityRef, twin: &Twin) -> Result<Value, ApiError> {
    let i = hub.registry().identity(who).ok_or_else(|| not_found(who))?;
    let document = twin.document();
    let mut out = Map::new();
    out.insert("deviceId".into(), json!(who.device_id));
    if let Some(m) = &who.module_id {
        out.insert("moduleId".into(), json!(m));
    }
    out.insert("etag".into(), json!(twin.etag()));
    out.insert("deviceEtag".into(), json!(i.etag()));
    out.insert(
        "status".into(),
        json!(if i.enabled { "enabled" } else { "disabled" }),
    );
    out.insert("statusReason".into(), json!(i.status_reason));
    out.insert(
        "statusUpdateTime".into(),
        json!(time_or_never(i.status_updated)),
    );
    let state = if hub.is_connected(who) {
        "Connected"
    } else {
        "Disconnected"
    };
    out.insert("connectionState".into(), json!(state));
    if who.module_id.is_none() {
        out.insert(
            "cloudToDeviceMessageCount".into(),
            json!(hub.c2d_queue_depth(&who.device_id).await),
        );
    }
    out.insert("authenticationType".into(), json!(i.auth_type()));
    out.insert(
        "x509Thumbprint".into(),
        authentication(&i)["x509Thumbprint"].clone(),
    );
    out.insert("version".into(), json!(twin.version));
    out.insert("tags".into(), Value::Object(twin.tags.clone()));
    out.insert(
        "properties".into(),
        json!({"desired": document["desired"], "reported": document["reported"]}),
    );
    if who.module_id.is_none() {
        out.insert("capabilities".into(), json!({"iotEdge": i.iot_edge}));
    }
    Ok(Value::Object(out))
}

fn not_found(who: &IdentityRef) -> ApiError {
    match &who.module_id {
        None => RegistryError::DeviceNotFound(who.device_id.clone()).into(),
        Some(_) => RegistryError::ModuleNotFound(who.client_id()).into(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Properties {
    #[serde(default)]
    desired: Option<Value>,
    #[serde(default)]
    reported: Option<Value>,
}

/// What the SDKs send: a (partial) twin. Fields the hub sets are read past.
#[derive(Debug, Default, Deserialize)]
struct TwinBody {
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    properties: Option<Properties>,
}

fn read(bytes: &[u8]) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let b: TwinBody = body::parse::<Option<TwinBody>>(bytes)
        .map_err(|e| ApiError::invalid(e.to_string()))?
        .unwrap_or_default();
    let props = b.properties.unwrap_or_default();
    if props.reported.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(ApiError::invalid(
            "`properties.reported` belongs to the device: the service side writes only tags and desired properties",
        ));
    }
    let object = |v: Option<Value>, field: &str| match v {
        None | Some(Value::Null) => Ok(None),
        Some(o @ Value::Object(_)) => Ok(Some(o)),
        Some(_) => Err(ApiError::invalid(format!(
            "`{field}` must be a JSON object"
        ))),
    };
    Ok((
        object(b.tags, "tags")?,
        object(props.desired, "properties.desired")?,
    ))
}

async fn show(hub: &HubHandle, who: &IdentityRef) -> Result<Response, ApiError> {
    let twin = hub.twin(who).ok_or_else(|| not_found(who))?;
    Ok(json_response(
        StatusCode::OK,
        &twin_json(hub, who, &twin).await?,
    ))
}

async fn patch(
    hub: &HubHandle,
    who: &IdentityRef,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let (tags, desired) = read(bytes)?;
    let twin = hub.update_twin(
        who,
        tags.as_ref(),
        desired.as_ref(),
        if_match(headers).as_deref(),
    )?;
    Ok(json_response(
        StatusCode::OK,
        &twin_json(hub, who, &twin).await?,
    ))
}

async fn replace(
    hub: &HubHandle,
    who: &IdentityRef,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let (tags, desired) = read(bytes)?;
    let empty = Value::Object(Map::new());
    let twin = hub.replace_twin(
        who,
        tags.as_ref().unwrap_or(&empty),
        desired.as_ref().unwrap_or(&empty),
        if_match(headers).as_deref(),
    )?;
    Ok(json_response(
        StatusCode::OK,
        &twin_json(hub, who, &twin).await?,
    ))
}

fn module(id: String, mid: String) -> IdentityRef {
    IdentityRef {
        device_id: id,
        module_id: Some(mid),
    }
}

async fn get_device_twin(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    show(&hub, &IdentityRef::device(&id)).await
}

async fn patch_device_twin(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    patch(&hub, &IdentityRef::device(&id), &headers, &bytes).await
}

async fn put_device_twin(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    replace(&hub, &IdentityRef::device(&id), &headers, &bytes).await
}

async fn get_module_twin(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    show(&hub, &module(id, mid)).await
}

async fn patch_module_twin(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    patch(&hub, &module(id, mid), &headers, &bytes).await
}

async fn put_module_twin(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    replace(&hub, &module(id, mid), &headers, &bytes).await
}
