//! Direct methods over REST: `POST /twins/{id}/methods` and `/twins/{id}/modules/{mid}/methods`
//! with `{"methodName", "payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}`,
//! answered 200 with the device's `{"status", "payload"}` (whatever status the device gave), or
//! 404103 when the device is not online (after `connectTimeoutInSeconds`, default 0), 504101 when it
//! does not answer within `responseTimeoutInSeconds` (default 30; IoT Hub allows 5–300), in the
//! wrapped error shape IoT Hub uses for methods. Timeouts run on the hub's clock.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Authorized, ServiceConnect};
use super::body;
use super::error::{json_response, ApiError};
use crate::registry::IdentityRef;
use crate::HubHandle;

pub(super) fn routes() -> Router<Arc<HubHandle>> {
    Router::new()
        .route("/twins/{id}/methods", post(device_method))
        .route("/twins/{id}/modules/{mid}/methods", post(module_method))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodBody {
    method_name: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    response_timeout_in_seconds: Option<u64>,
    #[serde(default)]
    connect_timeout_in_seconds: Option<u64>,
}

async fn invoke(hub: &HubHandle, who: &IdentityRef, bytes: &[u8]) -> Result<Response, ApiError> {
    let b: MethodBody =
        body::parse(bytes).map_err(|e| ApiError::invalid(e.to_string()).wrapped())?;
    let response = b.response_timeout_in_seconds.unwrap_or(30);
    if !(5..=300).contains(&response) {
        return Err(ApiError::invalid(format!(
            "`responseTimeoutInSeconds` is {response}; IoT Hub allows 5 to 300"
        ))
        .wrapped());
    }
    let connect = b.connect_timeout_in_seconds.unwrap_or(0);
    if connect > 300 {
        return Err(ApiError::invalid(format!(
            "`connectTimeoutInSeconds` is {connect}; IoT Hub allows 0 to 300"
        ))
        .wrapped());
    }
    let answer = hub
        .invoke_method_connecting(
            who,
            &b.method_name,
            b.payload,
            Duration::from_secs(connect),
            Duration::from_secs(response),
        )
        .await?;
    // The device's body as JSON; a body that is not JSON comes back as text.
    let payload = answer
        .json()
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.payload).into_owned()));
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": answer.status, "payload": payload}),
    ))
}

async fn device_method(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    invoke(&hub, &IdentityRef::device(&id), &bytes).await
}

async fn module_method(
    _: Authorized<ServiceConnect>,
    State(hub): State<Arc<HubHandle>>,
    Path((id, mid)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let who = IdentityRef {
        device_id: id,
        module_id: Some(mid),
    };
    invoke(&hub, &who, &bytes).await
}
