//! The timeline steps that act on a running hub's service side — `fault`, `c2d`, `desired`,
//! `method` — done one way for the scenario runner and the control API of `fakehub serve`, so YAML
//! and HTTP mean the same thing by the same words.
//!
//! A step has taken effect when [`apply`] returns: a fault is active (or, one-shot, done), a C2D
//! message is queued, a desired patch is applied and sent, a method call has its answer or its
//! error. What the hub refuses (a full queue, an offline device, a timeout) is the step's outcome,
//! not a failure of the caller: the event log has it too.

use std::sync::Arc;
use std::time::Duration;

use fakehub::iothub::c2d::CloudMessage;
use fakehub::{HubHandle, IdentityRef};
use schemars::JsonSchema;
use serde::Serialize;

use crate::scenario::Step;

/// How long a method step waits for the device when it says nothing.
pub const DEFAULT_METHOD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a service-side step did.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// A fault started: its id (for `DELETE /fakehub/faults/{id}`), name, and whether it is still
    /// active (a one-shot fault such as `reset` without a `duration` is already over).
    Fault { id: u64, name: String, active: bool },
    /// A C2D message is queued for the device.
    C2d { message_id: String },
    /// The desired properties are patched; the new desired `$version`.
    Desired { version: u64 },
    /// The device answered the method.
    Method {
        status: i32,
        payload: serde_json::Value,
    },
    /// The hub refused the step: IoT Hub's code (404103, 504101, 403004, …) where it has one.
    Refused { code: Option<u32>, error: String },
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Fault { id, name, active } => {
                write!(
                    f,
                    "fault {id} ({name}){}",
                    if *active { " active" } else { " done" }
                )
            }
            Applied::C2d { message_id } => write!(f, "queued as {message_id}"),
            Applied::Desired { version } => write!(f, "desired $version {version}"),
            Applied::Method { status, .. } => write!(f, "status {status}"),
            Applied::Refused { error, .. } => f.write_str(error),
        }
    }
}

/// The hub a device belongs to: the one it is connected to, else the one that registers it, else
/// the first.
fn hub_of<'a>(hubs: &'a [Arc<HubHandle>], device: &str) -> Option<&'a Arc<HubHandle>> {
    let who = IdentityRef::from_client_id(device);
    hubs.iter()
        .find(|h| h.connected_clients().iter().any(|c| c == device))
        .or_else(|| hubs.iter().find(|h| h.registry().identity(&who).is_some()))
        .or_else(|| hubs.first())
}

/// Carry out a service-side step on the run's hubs (a fault on every hub its `hub:` names, or all;
/// the other steps on the device's hub); `None` for steps that are not service-side (time and
/// device processes, which each caller handles in its own way).
pub async fn apply(hubs: &[Arc<HubHandle>], step: &Step) -> Option<Applied> {
    let refused = |code: Option<u32>, e: &dyn std::fmt::Display| Applied::Refused {
        code,
        error: e.to_string(),
    };
    let device = match step {
        Step::C2d(c) => c.device.as_str(),
        Step::Desired(d) => d.device.as_str(),
        Step::Method(m) => m.device.as_str(),
        _ => "",
    };
    let Some(hub) = hub_of(hubs, device) else {
        return Some(refused(None, &"no hub"));
    };
    Some(match step {
        Step::Fault(f) => {
            let mut first = None;
            for h in hubs.iter().filter(|h| {
                f.hub
                    .as_deref()
                    .is_none_or(|name| name.eq_ignore_ascii_case(h.host_name()))
            }) {
                let handle = h.inject(f.fault.clone());
                first.get_or_insert(handle);
            }
            match first {
                Some(handle) => Applied::Fault {
                    id: handle.id(),
                    name: f.fault.kind.name().to_owned(),
                    active: handle.is_active(),
                },
                None => refused(
                    None,
                    &format!("no hub named `{}`", f.hub.as_deref().unwrap_or_default()),
                ),
            }
        }
        Step::C2d(c) => {
            let mut message = CloudMessage::new(c.body.clone().into_bytes());
            message.message_id = c.message_id.clone();
            message.properties = c.properties.clone();
            match hub.send_c2d(&c.device, message).await {
                Ok(message_id) => Applied::C2d { message_id },
                Err(e) => refused(e.code(), &e),
            }
        }
        Step::Desired(d) => {
            let who = IdentityRef::from_client_id(&d.device);
            match hub.patch_desired(&who, d.patch.clone()).await {
                Ok(version) => Applied::Desired { version },
                Err(e) => refused(None, &e),
            }
        }
        Step::Method(m) => {
            let who = IdentityRef::from_client_id(&m.device);
            let timeout = m.timeout.unwrap_or(DEFAULT_METHOD_TIMEOUT);
            match hub
                .invoke_method(&who, &m.name, m.payload.clone(), timeout)
                .await
            {
                Ok(r) => Applied::Method {
                    status: r.status,
                    payload: r.json().unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&r.payload).into_owned())
                    }),
                },
                Err(e) => refused(e.code(), &e),
            }
        }
        Step::Advance(_) | Step::Wait(_) | Step::Crash(_) | Step::Restart(_) | Step::Stop(_) => {
            return None
        }
    })
}
