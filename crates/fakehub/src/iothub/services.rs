//! The hub services: twins, direct methods and cloud-to-device messages, and the service-side API
//! behind [`crate::HubHandle`].
//!
//! They run as one task that is an in-process client of the message core (its own router session,
//! under a name no device can take): it subscribes to every device's twin requests and method
//! responses (`iothub/+/twin/GET/#`, `iothub/+/twin/PATCH/properties/reported/#`,
//! `iothub/+/methods/res/#`, the internal form of `$iothub/…`) and publishes answers, desired
//! patches, method requests and C2D messages into the device's own namespace, so each reaches only
//! its device.
//!
//! What the service side needs to know about device sessions (is the device connected, is its
//! session subscribed to methods or C2D, which C2D message did it acknowledge) it reads from the
//! event log, which the front door writes for every packet: the task follows the log and, before it
//! answers a call, catches up with everything already in it. So the front door knows nothing of the
//! services, and the services need no hooks into connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::core::{escape_client_id, topic_to_core, unescape_client_id, CoreError, CoreSession};
use crate::events::{Direction, Event, EventKind, EventLog, EventStream, Subject, TwinSection};
use crate::frontdoor::Shared;
use crate::iothub::c2d::{self, Admit, CloudMessage, DeviceQueue, Queued};
use crate::iothub::methods::{self, MethodError, MethodResponse};
use crate::iothub::topics::{self, DevicePublish, SubscriptionKind};
use crate::iothub::twin::{PatchError, Twin};
use crate::registry::IdentityRef;

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
        match self {
            C2dError::DeviceNotFound(_) => Some(404001),
            C2dError::QueueFull(_) => Some(403004),
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
    #[error("the hub is not running")]
    HubStopped,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    SendC2d {
        device: String,
        message: CloudMessage,
        reply: Reply<Result<String, C2dError>>,
    },
    QueueDepth {
        device: String,
        reply: Reply<usize>,
    },
    PatchDesired {
        who: IdentityRef,
        patch: Value,
        reply: Reply<Result<u64, TwinError>>,
    },
    Invoke {
        who: IdentityRef,
        name: String,
        payload: Vec<u8>,
        reply: Reply<Result<String, MethodError>>,
        response: Reply<MethodResponse>,
    },
    /// The caller stopped waiting for a method response.
    TimedOut {
        rid: String,
    },
}

/// The service side of a running hub.
pub struct Services {
    commands: mpsc::UnboundedSender<Command>,
    twins: Twins,
    shared: Arc<Shared>,
}

/// Every identity's twin, shared between the services task and readers.
#[derive(Clone, Default)]
struct Twins(Arc<Mutex<HashMap<IdentityRef, Twin>>>);

impl Twins {
    fn lock(&self) -> MutexGuard<'_, HashMap<IdentityRef, Twin>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn subject(who: &IdentityRef) -> Subject {
    Subject {
        conn: None,
        device: Some(who.device_id.clone()),
        module: who.module_id.clone(),
    }
}

/// The service filters, in the core's internal form of `$iothub/…`.
const SERVICE_FILTERS: [&str; 3] = [
    "iothub/+/twin/GET/#",
    "iothub/+/twin/PATCH/properties/reported/#",
    "iothub/+/methods/res/#",
];

impl Services {
    /// Open the services' core session and subscribe (so no device request can arrive before the
    /// services listen), then run the services task until the hub shuts down.
    pub async fn start(shared: &Arc<Shared>) -> Result<Services, CoreError> {
        let mut session = shared.core.open_service_session().await?;
        let filters: Vec<(String, QoS)> = SERVICE_FILTERS
            .iter()
            .map(|f| (f.to_string(), QoS::AtMostOnce))
            .collect();
        session.subscribe(1, &filters).await?;
        loop {
            if let mq::Packet::SubAck(_) = session.next().await? {
                break;
            }
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let twins = Twins::default();
        let task = Task {
            session,
            events: shared.events.clone(),
            stream: shared.events.stream(),
            shared: shared.clone(),
            twins: twins.clone(),
            view: SessionView::default(),
            queues: HashMap::new(),
            methods: HashMap::new(),
            next_rid: 1,
            next_pkid: 0,
            acks: VecDeque::new(),
        };
        shared.tasks.spawn(task.run(rx));
        Ok(Services {
            commands,
            twins,
            shared: shared.clone(),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).ok()?;
        rx.await.ok()
    }

    fn registered(&self, who: &IdentityRef) -> bool {
        self.shared.registry.identity(who).is_some()
    }

    /// Send a C2D message to a device; its message id once the hub holds it.
    pub async fn send_c2d(&self, device: &str, message: CloudMessage) -> Result<String, C2dError> {
        let device = device.to_owned();
        self.call(|reply| Command::SendC2d {
            device,
            message,
            reply,
        })
        .await
        .unwrap_or(Err(C2dError::HubStopped))
    }

    /// How many C2D messages a device has not acknowledged yet.
    pub async fn c2d_queue_depth(&self, device: &str) -> usize {
        let device = device.to_owned();
        self.call(|reply| Command::QueueDepth { device, reply })
            .await
            .unwrap_or(0)
    }

    /// Patch an identity's desired properties; the new desired `$version`.
    pub async fn patch_desired(&self, who: &IdentityRef, patch: Value) -> Result<u64, TwinError> {
        let who = who.clone();
        self.call(|reply| Command::PatchDesired { who, patch, reply })
            .await
            .unwrap_or(Err(TwinError::HubStopped))
    }

    /// An identity's twin (`None` when it is not registered).
    pub fn twin(&self, who: &IdentityRef) -> Option<Twin> {
        if !self.registered(who) {
            return None;
        }
        Some(self.twins.lock().get(who).cloned().unwrap_or_default())
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
        let clock = &self.shared.clock;
        let deadline = clock.elapsed() + timeout;
        let (response, answered) = oneshot::channel();
        let rid = self
            .call(|reply| Command::Invoke {
                who: who.clone(),
                name: name.to_owned(),
                payload,
                reply,
                response,
            })
            .await
            .unwrap_or(Err(MethodError::HubStopped))?;
        tokio::select! {
            r = answered => r.map_err(|_| MethodError::HubStopped),
            _ = clock.sleep_until_elapsed(deadline) => {
                let _ = self.commands.send(Command::TimedOut { rid });
                Err(MethodError::Timeout)
            }
        }
    }

    /// Enable or disable an identity. Disabling closes its live connection (and refuses the next
    /// CONNECTs with CONNACK 3). False when it is not registered.
    pub fn set_enabled(&self, who: &IdentityRef, enabled: bool) -> bool {
        self.shared.set_enabled(who, enabled)
    }
}

/// What the services know about one client id's session (from the event log).
#[derive(Debug, Default)]
struct ClientState {
    /// The live connection, if any.
    live: Option<u64>,
    /// Subscriptions the core holds for the session (acknowledged by a SUBACK).
    subscribed: HashSet<SubscriptionKind>,
}

/// One connection, from its CONNECT until it closes.
#[derive(Debug)]
struct ConnState {
    who: IdentityRef,
    clean: bool,
    /// SUBSCRIBEs not yet acknowledged, by packet id: what each filter is for.
    pending: HashMap<u16, Vec<Option<SubscriptionKind>>>,
}

/// What a change in a session means for the services.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    /// The core discarded the session (CleanSession=1).
    SessionReset(IdentityRef),
    /// The session now has a C2D subscription in the core.
    C2dSubscribed(String),
    /// The session dropped its C2D subscription.
    C2dUnsubscribed(String),
    /// The device acknowledged (or received at QoS 0) a C2D message.
    Delivered { device: String, message_id: String },
}

/// Device sessions as the event log tells them.
#[derive(Debug, Default)]
struct SessionView {
    clients: HashMap<String, ClientState>,
    conns: HashMap<u64, ConnState>,
    /// C2D deliveries awaiting the device's PUBACK: (connection, packet id) → message id.
    deliveries: HashMap<(u64, u16), String>,
}

impl SessionView {
    /// Whether `who` is connected and its session is (or is being) subscribed for `kind`.
    fn reachable(&self, who: &IdentityRef, kind: SubscriptionKind) -> bool {
        let Some(state) = self.clients.get(&who.client_id()) else {
            return false;
        };
        let Some(conn) = state.live.and_then(|c| self.conns.get(&c)) else {
            return false;
        };
        state.subscribed.contains(&kind)
            || conn
                .pending
                .values()
                .any(|kinds| kinds.contains(&Some(kind)))
    }

    fn observe(&mut self, e: &Event) -> Vec<Effect> {
        let Some(conn) = e.conn else {
            return Vec::new();
        };
        if let EventKind::Connect { clean_session, .. } = &e.kind {
            let Some(device) = &e.device else {
                return Vec::new();
            };
            let who = IdentityRef {
                device_id: device.clone(),
                module_id: e.module.clone(),
            };
            self.conns.insert(
                conn,
                ConnState {
                    who,
                    clean: *clean_session,
                    pending: HashMap::new(),
                },
            );
            return Vec::new();
        }
        let Some(info) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let who = info.who.clone();
        let client = who.client_id();
        let is_device = who.module_id.is_none();
        let mut effects = Vec::new();
        match &e.kind {
            EventKind::Connack { code: 0, .. } => {
                let state = self.clients.entry(client).or_default();
                state.live = Some(conn);
                if info.clean {
                    state.subscribed.clear();
                    effects.push(Effect::SessionReset(who));
                }
            }
            EventKind::Connack { .. } => {
                self.conns.remove(&conn);
            }
            EventKind::Subscribe { pkid, filters } => {
                let kinds = filters
                    .iter()
                    .map(|(f, _)| topics::classify_filter(&who, f).ok())
                    .collect();
                info.pending.insert(*pkid, kinds);
            }
            EventKind::Suback { pkid, codes } => {
                let kinds = info.pending.remove(pkid).unwrap_or_default();
                let state = self.clients.entry(client).or_default();
                for (kind, code) in kinds.into_iter().zip(codes) {
                    if let (Some(kind), true) = (kind, *code != 0x80) {
                        state.subscribed.insert(kind);
                        if kind == SubscriptionKind::CloudToDevice && is_device {
                            effects.push(Effect::C2dSubscribed(who.device_id.clone()));
                        }
                    }
                }
            }
            EventKind::Unsubscribe { filters, .. } => {
                let state = self.clients.entry(client).or_default();
                for kind in filters
                    .iter()
                    .filter_map(|f| topics::classify_filter(&who, f).ok())
                {
                    state.subscribed.remove(&kind);
                    if kind == SubscriptionKind::CloudToDevice && is_device {
                        effects.push(Effect::C2dUnsubscribed(who.device_id.clone()));
                    }
                }
            }
            EventKind::Publish {
                dir: Direction::Out,
                topic,
                qos,
                pkid,
                message_id: Some(mid),
                ..
            } if is_device && topic.starts_with(&topics::devicebound_prefix(&who.device_id)) => {
                if *qos == 0 {
                    effects.push(Effect::Delivered {
                        device: who.device_id.clone(),
                        message_id: mid.clone(),
                    });
                } else {
                    self.deliveries.insert((conn, *pkid), mid.clone());
                }
            }
            EventKind::Puback {
                dir: Direction::In,
                pkid,
            } => {
                if let Some(mid) = self.deliveries.remove(&(conn, *pkid)) {
                    effects.push(Effect::Delivered {
                        device: who.device_id.clone(),
                        message_id: mid,
                    });
                }
            }
            EventKind::Closed { .. } => {
                self.conns.remove(&conn);
                if let Some(state) = self.clients.get_mut(&client) {
                    if state.live == Some(conn) {
                        state.live = None;
                    }
                }
                self.deliveries.retain(|(c, _), _| *c != conn);
            }
            _ => {}
        }
        effects
    }
}

struct PendingMethod {
    who: IdentityRef,
    name: String,
    started: Duration,
    response: Reply<MethodResponse>,
}

/// A QoS 1 publish of ours the core has not acknowledged yet.
struct Unacked {
    pkid: u16,
    /// The C2D caller waiting for the core to hold the message, with its message id.
    reply: Option<(Reply<Result<String, C2dError>>, String)>,
}

/// The services task.
struct Task {
    session: CoreSession,
    events: EventLog,
    stream: EventStream,
    shared: Arc<Shared>,
    twins: Twins,
    view: SessionView,
    queues: HashMap<String, DeviceQueue>,
    methods: HashMap<String, PendingMethod>,
    next_rid: u64,
    next_pkid: u16,
    acks: VecDeque<Unacked>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let shutdown = self.shared.shutdown.clone();
        let result: Result<(), CoreError> = async {
            loop {
                // Unbiased: a busy event log must not starve commands or device requests.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    e = self.stream.next() => self.on_event(&e).await?,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => {
                            self.catch_up().await?;
                            self.on_command(cmd).await?;
                        }
                        None => return Ok(()),
                    },
                    packet = self.session.next() => self.on_core(packet?).await?,
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "the hub services lost the message core");
        }
    }

    /// Take in every event already logged, so a call sees the sessions as they are now.
    async fn catch_up(&mut self) -> Result<(), CoreError> {
        while let Some(e) = self.stream.try_next() {
            self.on_event(&e).await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, e: &Event) -> Result<(), CoreError> {
        for effect in self.view.observe(e) {
            match effect {
                Effect::SessionReset(who) if who.module_id.is_none() => {
                    self.queues.entry(who.device_id).or_default().session_lost();
                }
                Effect::SessionReset(_) => {}
                Effect::C2dUnsubscribed(device) => {
                    self.queues.entry(device).or_default().session_lost();
                }
                Effect::C2dSubscribed(device) => {
                    let flushed = self.queues.entry(device).or_default().subscribed();
                    for m in flushed {
                        self.route(m, None).await?;
                    }
                }
                Effect::Delivered { device, message_id } => {
                    if self
                        .queues
                        .entry(device.clone())
                        .or_default()
                        .complete(&message_id)
                    {
                        self.events.emit(
                            &subject(&IdentityRef::device(device)),
                            EventKind::C2dCompleted { message_id },
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        topic: String,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<u16, CoreError> {
        let mut p = mq::Publish::new(topic, qos, payload);
        if qos != QoS::AtMostOnce {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            p.pkid = self.next_pkid;
        }
        self.session.publish(&p).await?;
        Ok(p.pkid)
    }

    /// Publish a C2D message into the core (QoS 1; the core acknowledges once it holds it).
    async fn route(
        &mut self,
        m: Queued,
        reply: Option<(Reply<Result<String, C2dError>>, String)>,
    ) -> Result<(), CoreError> {
        let pkid = self.publish(m.topic, QoS::AtLeastOnce, m.payload).await?;
        self.acks.push_back(Unacked { pkid, reply });
        Ok(())
    }

    /// Publish to a device's `$iothub/…` topic (QoS 0, as IoT Hub sends them).
    async fn send_to_device(
        &mut self,
        who: &IdentityRef,
        iothub_topic: &str,
        payload: Vec<u8>,
    ) -> Result<(), CoreError> {
        let topic = topic_to_core(&escape_client_id(&who.client_id()), iothub_topic);
        self.publish(topic, QoS::AtMostOnce, payload).await?;
        Ok(())
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), CoreError> {
        match cmd {
            Command::SendC2d {
                device,
                message,
                reply,
            } => self.send_c2d(device, message, reply).await?,
            Command::QueueDepth { device, reply } => {
                let depth = self.queues.get(&device).map_or(0, DeviceQueue::depth);
                let _ = reply.send(depth);
            }
            Command::PatchDesired { who, patch, reply } => {
                let r = self.patch_desired(&who, &patch).await?;
                let _ = reply.send(r);
            }
            Command::Invoke {
                who,
                name,
                payload,
                reply,
                response,
            } => {
                let r = self.invoke(who, name, payload, response).await?;
                let _ = reply.send(r);
            }
            Command::TimedOut { rid } => {
                if let Some(m) = self.methods.remove(&rid) {
                    self.method_result(&m, Some(rid), None, Some(504101));
                }
            }
        }
        Ok(())
    }

    async fn send_c2d(
        &mut self,
        device: String,
        message: CloudMessage,
        reply: Reply<Result<String, C2dError>>,
    ) -> Result<(), CoreError> {
        let who = IdentityRef::device(device.clone());
        if self.shared.registry.identity(&who).is_none() {
            let _ = reply.send(Err(C2dError::DeviceNotFound(device)));
            return Ok(());
        }
        if message.payload.len() > c2d::MAX_MESSAGE_BYTES {
            let _ = reply.send(Err(C2dError::TooLarge(message.payload.len())));
            return Ok(());
        }
        let message_id = message
            .message_id
            .clone()
            .unwrap_or_else(c2d::new_message_id);
        let queued = Queued {
            topic: message.topic(&device, &message_id),
            message_id: message_id.clone(),
            payload: message.payload,
        };
        let size = queued.payload.len();
        let queue = self.queues.entry(device.clone()).or_default();
        let admitted = queue.admit(queued);
        let queue_depth = queue.depth();
        match admitted {
            Err(_) => {
                let err = C2dError::QueueFull(device);
                self.events.emit(
                    &subject(&who),
                    EventKind::C2dRefused {
                        message_id,
                        result: 403004,
                        reason: err.to_string(),
                    },
                );
                let _ = reply.send(Err(err));
            }
            Ok(admit) => {
                self.events.emit(
                    &subject(&who),
                    EventKind::C2dQueued {
                        message_id: message_id.clone(),
                        size,
                        queue_depth,
                    },
                );
                match admit {
                    Admit::Route(m) => self.route(m, Some((reply, message_id))).await?,
                    Admit::Held => {
                        let _ = reply.send(Ok(message_id));
                    }
                }
            }
        }
        Ok(())
    }

    async fn patch_desired(
        &mut self,
        who: &IdentityRef,
        patch: &Value,
    ) -> Result<Result<u64, TwinError>, CoreError> {
        if self.shared.registry.identity(who).is_none() {
            return Ok(Err(TwinError::DeviceNotFound(who.client_id())));
        }
        let patched = self
            .twins
            .lock()
            .entry(who.clone())
            .or_default()
            .patch_desired(patch);
        let (version, notification) = match patched {
            Ok(p) => p,
            Err(e) => return Ok(Err(e.into())),
        };
        self.events.emit(
            &subject(who),
            EventKind::TwinUpdated {
                section: TwinSection::Desired,
                version,
            },
        );
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        self.send_to_device(who, &topic, notification.to_string().into_bytes())
            .await?;
        Ok(Ok(version))
    }

    async fn invoke(
        &mut self,
        who: IdentityRef,
        name: String,
        payload: Vec<u8>,
        response: Reply<MethodResponse>,
    ) -> Result<Result<String, MethodError>, CoreError> {
        if self.shared.registry.identity(&who).is_none() {
            return Ok(Err(MethodError::DeviceNotFound(who.client_id())));
        }
        let started = self.shared.clock.elapsed();
        if !self.view.reachable(&who, SubscriptionKind::Methods) {
            let m = PendingMethod {
                who: who.clone(),
                name,
                started,
                response,
            };
            self.method_result(&m, None, None, Some(404103));
            return Ok(Err(MethodError::DeviceNotOnline(who.client_id())));
        }
        let rid = self.next_rid.to_string();
        self.next_rid += 1;
        self.events.emit(
            &subject(&who),
            EventKind::MethodInvoked {
                name: name.clone(),
                rid: rid.clone(),
                size: payload.len(),
            },
        );
        let topic = format!("$iothub/methods/POST/{name}/?$rid={rid}");
        self.send_to_device(&who, &topic, payload).await?;
        self.methods.insert(
            rid.clone(),
            PendingMethod {
                who,
                name,
                started,
                response,
            },
        );
        Ok(Ok(rid))
    }

    fn method_result(
        &self,
        m: &PendingMethod,
        rid: Option<String>,
        status: Option<i32>,
        result: Option<u32>,
    ) {
        let duration = self.shared.clock.elapsed().saturating_sub(m.started);
        self.events.emit(
            &subject(&m.who),
            EventKind::MethodResult {
                name: m.name.clone(),
                rid,
                status,
                result,
                duration_ms: duration.as_millis() as u64,
            },
        );
    }

    /// A packet from the core: a device's twin request or method response, or the core's PUBACK of
    /// a C2D message.
    async fn on_core(&mut self, packet: mq::Packet) -> Result<(), CoreError> {
        match packet {
            mq::Packet::PubAck(ack) => {
                if let Some(i) = self.acks.iter().position(|u| u.pkid == ack.pkid) {
                    if let Some(Unacked {
                        reply: Some((reply, mid)),
                        ..
                    }) = self.acks.remove(i)
                    {
                        let _ = reply.send(Ok(mid));
                    }
                }
            }
            mq::Packet::Publish(p) => self.on_device_request(&p.topic, &p.payload).await?,
            _ => {}
        }
        Ok(())
    }

    async fn on_device_request(&mut self, topic: &str, body: &[u8]) -> Result<(), CoreError> {
        // `iothub/{escaped client id}/…` → the identity and the topic it published.
        let Some((escaped, rest)) = topic
            .strip_prefix("iothub/")
            .and_then(|t| t.split_once('/'))
        else {
            return Ok(());
        };
        let who = IdentityRef::from_client_id(&unescape_client_id(escaped));
        let device_topic = format!("$iothub/{rest}");
        match topics::classify_publish(&who, &device_topic) {
            Ok(DevicePublish::TwinGet { rid }) => {
                let document = self.twins.lock().entry(who.clone()).or_default().document();
                let topic = format!("$iothub/twin/res/200/?$rid={rid}");
                self.send_to_device(&who, &topic, document.to_string().into_bytes())
                    .await?;
            }
            Ok(DevicePublish::TwinPatchReported { rid }) => {
                let patched = self
                    .twins
                    .lock()
                    .entry(who.clone())
                    .or_default()
                    .patch_reported(body);
                match patched {
                    Ok(version) => {
                        self.events.emit(
                            &subject(&who),
                            EventKind::TwinUpdated {
                                section: TwinSection::Reported,
                                version,
                            },
                        );
                        let topic = format!("$iothub/twin/res/204/?$rid={rid}&$version={version}");
                        self.send_to_device(&who, &topic, Vec::new()).await?;
                    }
                    Err(e) => {
                        let topic = format!("$iothub/twin/res/400/?$rid={rid}");
                        let body = serde_json::json!({ "message": e.to_string() });
                        self.send_to_device(&who, &topic, body.to_string().into_bytes())
                            .await?;
                    }
                }
            }
            Ok(DevicePublish::MethodResponse { status, rid }) => {
                let mine = self.methods.get(&rid).is_some_and(|m| m.who == who);
                if let Some(m) = mine.then(|| self.methods.remove(&rid)).flatten() {
                    self.method_result(&m, Some(rid), Some(status), None);
                    let _ = m.response.send(MethodResponse {
                        status,
                        payload: body.to_vec(),
                    });
                }
            }
            Ok(DevicePublish::Telemetry(_)) | Err(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn event(conn: u64, device: &str, kind: EventKind) -> Event {
        Event {
            seq: 0,
            time: SystemTime::UNIX_EPOCH,
            elapsed: Duration::ZERO,
            conn: Some(conn),
            device: Some(device.to_owned()),
            module: None,
            kind,
        }
    }

    fn connect(clean: bool) -> EventKind {
        EventKind::Connect {
            client_id: "d".into(),
            username: String::new(),
            keep_alive: 60,
            clean_session: clean,
            auth: crate::events::AuthKind::Sas,
            sdk: None,
            token_expiry: None,
            will: false,
        }
    }

    fn connack(code: u8) -> EventKind {
        EventKind::Connack {
            code,
            session_present: false,
            result: None,
            reason: None,
        }
    }

    fn closed() -> EventKind {
        EventKind::Closed {
            by: crate::events::Closer::Device,
            how: crate::events::CloseHow::Rst,
            cause: crate::CloseCause::DeviceClosed,
            detail: None,
            result: None,
        }
    }

    #[test]
    fn sessions_from_events() {
        let mut v = SessionView::default();
        let d = IdentityRef::device("d");
        let methods = SubscriptionKind::Methods;
        v.observe(&event(1, "d", connect(false)));
        assert!(!v.reachable(&d, methods), "not yet connected");
        v.observe(&event(1, "d", connack(0)));
        v.observe(&event(
            1,
            "d",
            EventKind::Subscribe {
                pkid: 7,
                filters: vec![
                    ("$iothub/methods/POST/#".into(), 1),
                    ("devices/d/messages/devicebound/#".into(), 1),
                ],
            },
        ));
        assert!(v.reachable(&d, methods), "a SUBSCRIBE on its way counts");
        let fx = v.observe(&event(
            1,
            "d",
            EventKind::Suback {
                pkid: 7,
                codes: vec![1, 1],
            },
        ));
        assert_eq!(fx, [Effect::C2dSubscribed("d".into())]);
        // A C2D delivery and its PUBACK.
        v.observe(&event(
            1,
            "d",
            EventKind::Publish {
                dir: Direction::Out,
                topic: "devices/d/messages/devicebound/%24.mid=x".into(),
                qos: 1,
                pkid: 3,
                dup: false,
                retain: false,
                size: 0,
                message_id: Some("x".into()),
                properties: Default::default(),
            },
        ));
        let fx = v.observe(&event(
            1,
            "d",
            EventKind::Puback {
                dir: Direction::In,
                pkid: 3,
            },
        ));
        assert_eq!(
            fx,
            [Effect::Delivered {
                device: "d".into(),
                message_id: "x".into()
            }]
        );
        // Offline: not reachable; back with CleanSession=0: the subscription is still there.
        v.observe(&event(1, "d", closed()));
        assert!(!v.reachable(&d, methods));
        v.observe(&event(2, "d", connect(false)));
        v.observe(&event(2, "d", connack(0)));
        assert!(v.reachable(&d, methods));
        // A refused CONNECT changes nothing; CleanSession=1 forgets the subscriptions.
        v.observe(&event(3, "d", connect(true)));
        v.observe(&event(3, "d", connack(5)));
        assert!(v.reachable(&d, methods));
        v.observe(&event(2, "d", closed()));
        v.observe(&event(4, "d", connect(true)));
        let fx = v.observe(&event(4, "d", connack(0)));
        assert_eq!(fx, [Effect::SessionReset(d.clone())]);
        assert!(!v.reachable(&d, methods));
    }
}
