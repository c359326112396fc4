//! The hub services: what IoT Hub's service side does for devices — twins, direct methods,
//! cloud-to-device messages, enabling and disabling identities — and the device requests they
//! answer (twin GET, reported-properties PATCH, method responses).
//!
//! They keep their own state (twins, pending method calls) and reach devices through
//! `Sessions`, which knows who is connected and subscribed; nothing here reads the event log.

pub mod c2d;
pub mod identities;
pub mod methods;
pub mod twin;

pub use identities::{IdentitySpec, RegistryError};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fakehub_protocol::topics::{DevicePublish, SubscriptionKind};
use fakehub_protocol::ResultCode;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::clock::VirtualClock;
use crate::events::{EventKind, EventLog, Subject, TwinSection};
use crate::registry::{IdentityRef, Registry};
use crate::sessions::{C2dMessage, QueueRefusal, Sessions};
use c2d::CloudMessage;
use methods::{MethodError, MethodResponse};
use twin::{PatchError, Twin};

/// Why a C2D message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2dError {
    #[error("404001 DeviceNotFound: '{0}' is not a registered device")]
    DeviceNotFound(String),
    #[error("403004 DeviceMaximumQueueDepthExceeded: '{0}' already has {max} messages waiting", max = c2d::MAX_QUEUE_DEPTH)]
    QueueFull(String),
    #[error("the message body is {0} bytes; IoT Hub allows {max}", max = c2d::MAX_MESSAGE_BYTES)]
    TooLarge(usize),
    #[error("the hub is not running")]
    HubStopped,
}

impl C2dError {
    /// The IoT Hub error code, where the hub has one.
    pub fn code(&self) -> Option<u32> {
        self.result_code().map(ResultCode::code)
    }

    /// The IoT Hub result code, where the hub has one.
    pub fn result_code(&self) -> Option<ResultCode> {
        match self {
            C2dError::DeviceNotFound(_) => Some(ResultCode::DeviceNotFound),
            C2dError::QueueFull(_) => Some(ResultCode::DeviceMaximumQueueDepthExceeded),
            C2dError::TooLarge(_) | C2dError::HubStopped => None,
        }
    }
}

/// Why a desired-properties patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    #[error("404001 DeviceNotFound: '{0}' is not registered")]
    DeviceNotFound(String),
    #[error("400 the patch was refused: {0}")]
    Invalid(#[from] PatchError),
    #[error("412001 PreconditionFailed: Precondition failed: the ETag '{given}' does not match the twin's '{current}'")]
    PreconditionFailed { current: String, given: String },
    #[error("the hub is not running")]
    HubStopped,
}

fn subject(who: &IdentityRef) -> Subject {
    Subject {
        conn: None,
        device: Some(who.device_id.as_str().into()),
        module: who.module_id.as_deref().map(std::sync::Arc::from),
    }
}

/// How often a method call that waits for its device to come online looks again.
const CONNECT_POLL: Duration = Duration::from_millis(100);

struct PendingMethod {
    who: IdentityRef,
    name: String,
    started: Duration,
    response: oneshot::Sender<MethodResponse>,
}

/// The service side of a running hub.
pub struct Services {
    registry: Registry,
    sessions: Arc<Sessions>,
    events: EventLog,
    clock: VirtualClock,
    twins: Mutex<BTreeMap<IdentityRef, Twin>>,
    methods: Mutex<BTreeMap<String, PendingMethod>>,
    next_rid: AtomicU64,
    /// Generated message ids, drawn from the run's seed so runs repeat.
    rng: Mutex<StdRng>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Services {
    pub fn new(
        registry: Registry,
        sessions: Arc<Sessions>,
        events: EventLog,
        clock: VirtualClock,
        seed: u64,
    ) -> Services {
        Services {
            registry,
            sessions,
            events,
            clock,
            twins: Mutex::new(BTreeMap::new()),
            methods: Mutex::new(BTreeMap::new()),
            next_rid: AtomicU64::new(1),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xc2d0_c2d0)),
        }
    }

    fn registered(&self, who: &IdentityRef) -> bool {
        self.registry.identity(who).is_some()
    }

    /// Send a C2D message to a device; its message id once the hub holds it.
    pub fn send_c2d(&self, device: &str, message: CloudMessage) -> Result<String, C2dError> {
        let who = IdentityRef::device(device);
        if !self.registered(&who) {
            return Err(C2dError::DeviceNotFound(device.to_owned()));
        }
        if message.payload.len() > c2d::MAX_MESSAGE_BYTES {
            return Err(C2dError::TooLarge(message.payload.len()));
        }
        let message_id = match &message.message_id {
            Some(id) => id.clone(),
            None => c2d::new_message_id(&mut *lock(&self.rng)),
        };
        let size = message.payload.len();
        let queued = C2dMessage {
            topic: message.topic(device, &message_id),
            message_id: message_id.clone(),
            payload: Bytes::from(message.payload),
        };
        match self.sessions.queue_c2d(device, queued, size) {
            Ok(_) => Ok(message_id),
            Err(QueueRefusal::Full) => Err(self.refuse_c2d(&who, message_id)),
        }
    }

    fn refuse_c2d(&self, who: &IdentityRef, message_id: String) -> C2dError {
        let err = C2dError::QueueFull(who.device_id.clone());
        self.events.emit(
            &subject(who),
            EventKind::C2dRefused {
                message_id,
                result: ResultCode::DeviceMaximumQueueDepthExceeded,
                reason: err.to_string(),
            },
        );
        err
    }

    /// How many C2D messages a device has not acknowledged yet.
    pub fn c2d_queue_depth(&self, device: &str) -> usize {
        self.sessions.c2d_depth(device)
    }

    /// Patch an identity's desired properties; the new desired `$version`. A connected,
    /// subscribed device gets the patch.
    pub fn patch_desired(&self, who: &IdentityRef, patch: &Value) -> Result<u64, TwinError> {
        let twin = self.update_twin(who, None, Some(patch), None)?;
        Ok(twin.desired_version)
    }

    /// The service side's partial twin update (merge patches of the tags and the desired
    /// section) if `if_match` matches the twin's ETag (`None` or `*`: any); the updated twin. A
    /// desired change goes to the connected, subscribed device.
    pub fn update_twin(
        &self,
        who: &IdentityRef,
        tags: Option<&Value>,
        desired: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Twin, TwinError> {
        self.change_twin(who, if_match, |t| t.service_update(tags, desired))
    }

    /// The service side's replacement of a twin's tags and desired section (the device gets the
    /// difference), if `if_match` matches; the new twin.
    pub fn replace_twin(
        &self,
        who: &IdentityRef,
        tags: &Value,
        desired: &Value,
        if_match: Option<&str>,
    ) -> Result<Twin, TwinError> {
        self.change_twin(who, if_match, |t| t.replace(tags, desired))
    }

    fn change_twin(
        &self,
        who: &IdentityRef,
        if_match: Option<&str>,
        change: impl FnOnce(&mut Twin) -> Result<Option<(u64, Value)>, PatchError>,
    ) -> Result<Twin, TwinError> {
        if !self.registered(who) {
            return Err(TwinError::DeviceNotFound(who.client_id()));
        }
        let mut twins = lock(&self.twins);
        let twin = twins.entry(who.clone()).or_default();
        identities::check_etag(&twin.etag(), if_match).map_err(|e| match e {
            RegistryError::PreconditionFailed { current, given } => {
                TwinError::PreconditionFailed { current, given }
            }
            other => TwinError::DeviceNotFound(other.to_string()),
        })?;
        let notification = change(twin)?;
        let after = twin.clone();
        drop(twins);
        if let Some((version, notification)) = notification {
            self.events.emit(
                &subject(who),
                EventKind::TwinUpdated {
                    section: TwinSection::Desired,
                    version,
                    acknowledges: None,
                },
            );
            let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
            self.sessions.send(
                &who.client_id(),
                SubscriptionKind::DesiredProperties,
                topic,
                Bytes::from(notification.to_string()),
            );
        }
        Ok(after)
    }

    /// Throw away a device's C2D messages not yet acknowledged; how many.
    pub fn purge_c2d(&self, device: &str) -> Result<usize, C2dError> {
        let who = IdentityRef::device(device);
        if !self.registered(&who) {
            return Err(C2dError::DeviceNotFound(device.to_owned()));
        }
        let count = self.sessions.purge_c2d(device);
        self.events
            .emit(&subject(&who), EventKind::C2dPurged { count });
        Ok(count)
    }

    /// Whether the identity has a live connection.
    pub fn is_connected(&self, who: &IdentityRef) -> bool {
        self.sessions.is_live(&who.client_id())
    }

    /// An identity's twin (`None` when it is not registered).
    pub fn twin(&self, who: &IdentityRef) -> Option<Twin> {
        if !self.registered(who) {
            return None;
        }
        Some(lock(&self.twins).get(who).cloned().unwrap_or_default())
    }

    /// Take an identity's twin out (it leaves this hub: re-provisioned elsewhere, or reset).
    pub(crate) fn take_twin(&self, who: &IdentityRef) -> Option<Twin> {
        lock(&self.twins).remove(who)
    }

    /// Give an identity a twin (migrated from another hub).
    pub(crate) fn put_twin(&self, who: &IdentityRef, twin: Twin) {
        lock(&self.twins).insert(who.clone(), twin);
    }

    /// Invoke a direct method and wait (virtual elapsed time) up to `timeout` for the answer.
    pub async fn invoke_method(
        &self,
        who: &IdentityRef,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        methods::check_name(name)?;
        let payload =
            serde_json::to_vec(payload).map_err(|e| MethodError::Invalid(e.to_string()))?;
        if payload.len() > methods::MAX_PAYLOAD_BYTES {
            return Err(MethodError::Invalid(format!(
                "the payload is {} bytes; IoT Hub allows {}",
                payload.len(),
                methods::MAX_PAYLOAD_BYTES
            )));
        }
        if !self.registered(who) {
            return Err(MethodError::DeviceNotFound(who.client_id()));
        }
        let started = self.clock.elapsed();
        let client = who.client_id();
        if !self.sessions.reachable(&client, SubscriptionKind::Methods) {
            self.method_result(
                who,
                name,
                None,
                None,
                Some(ResultCode::DeviceNotOnline),
                started,
            );
            return Err(MethodError::DeviceNotOnline(client));
        }
        let rid = self.next_rid.fetch_add(1, Ordering::Relaxed).to_string();
        let (response, answered) = oneshot::channel();
        lock(&self.methods).insert(
            rid.clone(),
            PendingMethod {
                who: who.clone(),
                name: name.to_owned(),
                started,
                response,
            },
        );
        self.events.emit(
            &subject(who),
            EventKind::MethodInvoked {
                name: name.to_owned(),
                rid: rid.clone(),
                size: payload.len(),
            },
        );
        let topic = format!("$iothub/methods/POST/{name}/?$rid={rid}");
        self.sessions.send(
            &client,
            SubscriptionKind::Methods,
            topic,
            Bytes::from(payload),
        );
        let deadline = started.saturating_add(timeout);
        tokio::select! {
            biased;
            r = answered => r.map_err(|_| MethodError::HubStopped),
            _ = self.clock.sleep_until_elapsed(deadline) => {
                if let Some(m) = lock(&self.methods).remove(&rid) {
                    self.method_result(&m.who, &m.name, Some(rid), None, Some(ResultCode::GatewayTimeout), m.started);
                }
                Err(MethodError::Timeout)
            }
        }
    }

    /// Invoke a direct method on a device that may not be online yet: wait up to `connect_timeout`
    /// (the hub clock's elapsed time) for it to connect and subscribe to methods, then as
    /// [`Services::invoke_method`].
    pub async fn invoke_method_connecting(
        &self,
        who: &IdentityRef,
        name: &str,
        payload: &Value,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        let deadline = self.clock.elapsed().saturating_add(connect_timeout);
        while self.registered(who)
            && !self
                .sessions
                .reachable(&who.client_id(), SubscriptionKind::Methods)
            && self.clock.elapsed() < deadline
        {
            self.clock.sleep(CONNECT_POLL).await;
        }
        self.invoke_method(who, name, payload, timeout).await
    }

    fn method_result(
        &self,
        who: &IdentityRef,
        name: &str,
        rid: Option<String>,
        status: Option<i32>,
        result: Option<ResultCode>,
        started: Duration,
    ) {
        let duration = self.clock.elapsed().saturating_sub(started);
        self.events.emit(
            &subject(who),
            EventKind::MethodResult {
                name: name.to_owned(),
                rid,
                status,
                result,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            },
        );
    }

    /// Enable or disable an identity. Disabling closes its live connection (and refuses the next
    /// CONNECTs with CONNACK 3). False when it is not registered.
    pub fn set_enabled(&self, who: &IdentityRef, enabled: bool) -> bool {
        let now = self.clock.now();
        let updated = self.registry.update(who, |i| {
            if i.enabled != enabled {
                i.status_updated = Some(now);
            }
            i.enabled = enabled;
        });
        if !updated {
            return false;
        }
        self.status_changed(who, enabled);
        true
    }

    /// A device's request on `$iothub/…`: answer twin GETs and reported patches, take method
    /// responses. Telemetry is not for the services.
    pub fn on_device_request(&self, who: &IdentityRef, request: &DevicePublish, body: &[u8]) {
        let client = who.client_id();
        let reply = |topic: String, body: Vec<u8>| {
            self.sessions.send(
                &client,
                SubscriptionKind::TwinResponses,
                topic,
                Bytes::from(body),
            );
        };
        match request {
            DevicePublish::TwinGet { rid } => {
                let document = lock(&self.twins).entry(who.clone()).or_default().document();
                reply(
                    format!("$iothub/twin/res/200/?$rid={rid}"),
                    document.to_string().into_bytes(),
                );
            }
            DevicePublish::TwinPatchReported { rid } => {
                let patched = lock(&self.twins)
                    .entry(who.clone())
                    .or_default()
                    .patch_reported(body);
                match patched {
                    Ok(version) => {
                        self.events.emit(
                            &subject(who),
                            EventKind::TwinUpdated {
                                section: TwinSection::Reported,
                                version,
                                acknowledges: twin::acknowledged_version(body),
                            },
                        );
                        reply(
                            format!("$iothub/twin/res/204/?$rid={rid}&$version={version}"),
                            Vec::new(),
                        );
                    }
                    Err(e) => {
                        let body = serde_json::json!({ "message": e.to_string() });
                        reply(
                            format!("$iothub/twin/res/400/?$rid={rid}"),
                            body.to_string().into_bytes(),
                        );
                    }
                }
            }
            DevicePublish::MethodResponse { status, rid } => {
                let mut pending = lock(&self.methods);
                let mine = pending.get(rid).is_some_and(|m| &m.who == who);
                let Some(m) = mine.then(|| pending.remove(rid)).flatten() else {
                    return;
                };
                drop(pending);
                self.method_result(
                    who,
                    &m.name,
                    Some(rid.clone()),
                    Some(*status),
                    None,
                    m.started,
                );
                let _ = m.response.send(MethodResponse {
                    status: *status,
                    payload: body.to_vec(),
                });
            }
            DevicePublish::Telemetry(_) => {}
        }
    }
}
