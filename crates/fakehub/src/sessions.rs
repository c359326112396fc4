//! Device sessions: the hub's message core.
//!
//! IoT Hub's device side is not a general broker: a device only ever receives what the hub sends
//! it (C2D messages, twin responses, desired-property patches, method requests), each on a topic
//! of one of five documented kinds. So the core is a table keyed by client id:
//!
//! * the **live link** of each identity — at most one connection; a new one takes over (the old
//!   one is asked to close with [`CloseCause::Takeover`] and waited for);
//! * the **session** — its subscriptions by kind, and the QoS 1 messages sent but not yet
//!   acknowledged — kept between connections for CleanSession=0 (`sessionPresent=1`, and the
//!   unacknowledged messages resent with DUP and their packet ids, MQTT 3.1.1 §4.4);
//! * each device's **C2D queue** (held until the device is connected and subscribed, at most
//!   [`MAX_QUEUE_DEPTH`] unacknowledged, completed by the device's PUBACK);
//! * the **connected-devices count**.
//!
//! Everything is one lock and plain maps (ordered, so iteration is deterministic); nothing here
//! waits except [`Sessions::attach`], for a predecessor to go.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fakehub_protocol::topics::SubscriptionKind;
use fakehub_protocol::ResultCode;
use tokio::sync::{mpsc, watch, Notify};

use crate::clock::VirtualClock;
use crate::events::{CloseCause, CloseHow, EventKind, EventLog, Stamp, Subject};

/// The most C2D messages a device may have unacknowledged (IoT Hub: 50).
pub const MAX_QUEUE_DEPTH: usize = 50;

/// How long a new connection waits (virtual elapsed time) for the connection it takes over to
/// close before it replaces it regardless.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// How the hub ends a connection on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireClose {
    /// TLS close_notify, then TCP FIN.
    Fin,
    /// TCP RST (zero linger): no close_notify, no DISCONNECT.
    Rst,
}

impl WireClose {
    /// How the close looks in the `closed` event.
    pub fn how(self) -> CloseHow {
        match self {
            WireClose::Fin => CloseHow::Fin,
            WireClose::Rst => CloseHow::Rst,
        }
    }
}

/// A request to close a live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub wire: WireClose,
    pub cause: CloseCause,
    pub detail: String,
    /// The IoT Hub code to log beyond 404104 (a fault's), if any.
    pub result: Option<ResultCode>,
}

/// Where a close request waits for its connection. Set synchronously, so nothing more is served
/// on the connection from the moment it is set, whenever its task gets to close it.
#[derive(Default)]
pub struct CloseSlot {
    request: Mutex<Option<CloseRequest>>,
    /// Set once `request` holds one: a live connection asks before every packet, and asking
    /// then takes no lock.
    set: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl CloseSlot {
    /// Ask the connection to close. The first request wins.
    pub fn request(&self, r: CloseRequest) {
        let mut slot = self.request.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(r);
        }
        self.set.store(true, std::sync::atomic::Ordering::Release);
        drop(slot);
        // Every waiter: a live connection waits in its loop and, while it writes, in the write.
        self.notify.notify_waiters();
    }

    /// The pending request, if any.
    pub fn pending(&self) -> Option<CloseRequest> {
        if !self.set.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait for a request.
    pub async fn requested(&self) -> CloseRequest {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.pending() {
                return r;
            }
            notified.await;
        }
    }
}

/// A packet the hub sends a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    /// 0 or 1.
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
    pub payload: Bytes,
}

/// A C2D message in a device's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dMessage {
    pub message_id: String,
    pub topic: String,
    pub payload: Bytes,
}

/// A QoS 1 message sent and not yet acknowledged.
#[derive(Debug, Clone)]
struct Inflight {
    message: C2dMessage,
}

/// One identity's MQTT session.
#[derive(Default)]
struct Session {
    /// The last CONNECT said CleanSession=0: keep the session when the connection ends.
    persistent: bool,
    /// Filter → (kind, granted QoS).
    subscriptions: BTreeMap<String, (SubscriptionKind, u8)>,
    inflight: BTreeMap<u16, Inflight>,
    next_pkid: u16,
    live: Option<Link>,
}

impl Session {
    fn subscribed(&self, kind: SubscriptionKind) -> bool {
        self.subscriptions.values().any(|(k, _)| *k == kind)
    }

    fn alloc_pkid(&mut self) -> u16 {
        // At most MAX_QUEUE_DEPTH are in flight, so a free id is always near.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

/// The live connection of a session.
struct Link {
    conn: u64,
    /// Boxed: a channel allocates its first block of 32 slots at once, and a held connection
    /// should not pay 32 × a packet for a queue that is empty almost always.
    tx: mpsc::UnboundedSender<Box<Outgoing>>,
    close: Arc<CloseSlot>,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct Table {
    sessions: BTreeMap<String, Session>,
    /// Device id → C2D messages not yet handed to the device's session.
    c2d: BTreeMap<String, VecDeque<C2dMessage>>,
    connected: usize,
}

/// What a connection gets when it attaches to its session.
pub struct Attached {
    pub session_present: bool,
    /// Unacknowledged QoS 1 messages to resend first (DUP set, original packet ids).
    pub resend: Vec<Outgoing>,
    /// Everything else the hub sends this connection.
    pub outgoing: mpsc::UnboundedReceiver<Box<Outgoing>>,
    pub close: Arc<CloseSlot>,
    /// Dropping it tells a successor waiting to take over that this connection is gone.
    pub gone: watch::Sender<bool>,
}

/// Why a C2D message was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRefusal {
    Full,
}

/// The hub's sessions.
pub struct Sessions {
    table: Mutex<Table>,
    events: EventLog,
    clock: VirtualClock,
}

fn device_subject(device: &str) -> Subject {
    Subject {
        conn: None,
        device: Some(device.into()),
        module: None,
    }
}

impl Sessions {
    pub fn new(events: EventLog, clock: VirtualClock) -> Sessions {
        Sessions {
            table: Mutex::new(Table::default()),
            events,
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `conn` the live connection of `client_id`. A live predecessor is asked to close
    /// ([`CloseCause::Takeover`]) and waited for, so its session is saved before this one starts.
    /// `clean` discards any saved session.
    pub async fn attach(&self, client_id: &str, conn: u64, clean: bool) -> Attached {
        loop {
            let mut waiting = {
                let mut t = self.lock();
                let session = t.sessions.entry(client_id.to_owned()).or_default();
                match &session.live {
                    Some(old) if old.conn != conn && !*old.done.borrow() => {
                        old.close.request(CloseRequest {
                            wire: WireClose::Fin,
                            cause: CloseCause::Takeover,
                            detail: format!(
                                "a new connection ({conn}) authenticated as '{client_id}'"
                            ),
                            result: None,
                        });
                        old.done.clone()
                    }
                    _ => return self.attach_now(&mut t, client_id, conn, clean),
                }
            };
            // The old connection closes at once; the bound only protects against a wedged task,
            // which is then replaced regardless.
            let gone = waiting.wait_for(|d| *d);
            let waited = tokio::select! {
                biased;
                r = gone => r.is_ok(),
                _ = self.clock.sleep(TAKEOVER_WAIT) => false,
            };
            if !waited {
                let mut t = self.lock();
                if let Some(s) = t.sessions.get_mut(client_id) {
                    if s.live.as_ref().is_some_and(|l| l.conn != conn) {
                        s.live = None;
                    }
                }
            }
        }
    }

    fn attach_now(&self, t: &mut Table, client_id: &str, conn: u64, clean: bool) -> Attached {
        let (tx, outgoing) = mpsc::unbounded_channel();
        let (gone, done) = watch::channel(false);
        let close = Arc::new(CloseSlot::default());
        let Some(session) = t.sessions.get_mut(client_id) else {
            // Unreachable: the caller just made the entry; stay total regardless.
            return Attached {
                session_present: false,
                resend: Vec::new(),
                outgoing,
                close,
                gone,
            };
        };
        let had_session = session.persistent;
        let mut requeue = Vec::new();
        if clean {
            // MQTT: a clean session discards the old one. IoT Hub keeps C2D messages whatever
            // the session: what was in flight waits in the device's queue again.
            requeue = std::mem::take(&mut session.inflight)
                .into_values()
                .map(|i| i.message)
                .collect();
            session.subscriptions.clear();
        }
        session.persistent = !clean;
        session.live = Some(Link {
            conn,
            tx,
            close: close.clone(),
            done,
        });
        let resend = session
            .inflight
            .iter()
            .map(|(pkid, i)| Outgoing {
                topic: i.message.topic.clone(),
                qos: 1,
                pkid: *pkid,
                dup: true,
                payload: i.message.payload.clone(),
            })
            .collect();
        if !requeue.is_empty() {
            let queue = t.c2d.entry(client_id.to_owned()).or_default();
            for m in requeue.into_iter().rev() {
                queue.push_front(m);
            }
        }
        // A resumed session that is subscribed gets what waited for it (after the resends).
        Self::pump(t, client_id);
        Attached {
            session_present: !clean && had_session,
            resend,
            outgoing,
            close,
            gone,
        }
    }

    /// The connection ended: let go of the link (only if it is still `conn`'s), and forget the
    /// session unless it is persistent.
    pub fn detach(&self, client_id: &str, conn: u64) {
        let mut t = self.lock();
        let Some(session) = t.sessions.get_mut(client_id) else {
            return;
        };
        if session.live.as_ref().is_some_and(|l| l.conn == conn) {
            session.live = None;
            if !session.persistent {
                let requeue: Vec<C2dMessage> = std::mem::take(&mut session.inflight)
                    .into_values()
                    .map(|i| i.message)
                    .collect();
                t.sessions.remove(client_id);
                if !requeue.is_empty() {
                    let queue = t.c2d.entry(client_id.to_owned()).or_default();
                    for m in requeue.into_iter().rev() {
                        queue.push_front(m);
                    }
                }
            }
        }
    }

    /// Record subscriptions; returns the granted QoS per filter. C2D waiting for the device goes
    /// out once it is subscribed.
    pub fn subscribe(
        &self,
        client_id: &str,
        filters: &[(String, SubscriptionKind, u8)],
    ) -> Vec<u8> {
        let mut t = self.lock();
        let Some(session) = t.sessions.get_mut(client_id) else {
            return filters.iter().map(|_| 0x80).collect();
        };
        let granted = filters
            .iter()
            .map(|(filter, kind, qos)| {
                let q = (*qos).min(1);
                session.subscriptions.insert(filter.clone(), (*kind, q));
                q
            })
            .collect();
        Self::pump(&mut t, client_id);
        granted
    }

    /// How many distinct filters the session would hold with `extra` added.
    pub fn distinct_filters_with(&self, client_id: &str, extra: &[String]) -> usize {
        let t = self.lock();
        let mut all: BTreeSet<&str> = extra.iter().map(String::as_str).collect();
        if let Some(s) = t.sessions.get(client_id) {
            all.extend(s.subscriptions.keys().map(String::as_str));
        }
        all.len()
    }

    /// Remove subscriptions (unknown filters are fine).
    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) {
        let mut t = self.lock();
        if let Some(session) = t.sessions.get_mut(client_id) {
            for f in filters {
                session.subscriptions.remove(f);
            }
        }
    }

    /// The device acknowledged a QoS 1 delivery. Returns the message id of a completed C2D
    /// message. An unknown packet id is ignored.
    pub fn puback(&self, client_id: &str, pkid: u16) -> Option<String> {
        let mut t = self.lock();
        let done = t.sessions.get_mut(client_id)?.inflight.remove(&pkid)?;
        Self::pump(&mut t, client_id);
        drop(t);
        let message_id = done.message.message_id;
        self.events.emit(
            &device_subject(client_id),
            EventKind::C2dCompleted {
                message_id: message_id.clone(),
            },
        );
        Some(message_id)
    }

    /// Queue a C2D message (`size` bytes of body) for a device and record it: it goes out now if
    /// the device is connected and subscribed, else when it is. Refused when the device already
    /// has the most waiting. Returns the new queue depth.
    pub fn queue_c2d(
        &self,
        device_id: &str,
        message: C2dMessage,
        size: usize,
    ) -> Result<usize, QueueRefusal> {
        let mut t = self.lock();
        let depth = Self::depth(&t, device_id);
        if depth >= MAX_QUEUE_DEPTH {
            return Err(QueueRefusal::Full);
        }
        // Recorded under the lock, before the message can reach the device.
        self.events.emit(
            &device_subject(device_id),
            EventKind::C2dQueued {
                message_id: message.message_id.clone(),
                size,
                queue_depth: depth.saturating_add(1),
            },
        );
        t.c2d
            .entry(device_id.to_owned())
            .or_default()
            .push_back(message);
        Self::pump(&mut t, device_id);
        Ok(depth.saturating_add(1))
    }

    fn depth(t: &Table, device_id: &str) -> usize {
        let held = t.c2d.get(device_id).map_or(0, VecDeque::len);
        let inflight = t.sessions.get(device_id).map_or(0, |s| s.inflight.len());
        held.saturating_add(inflight)
    }

    /// How many C2D messages a device has not acknowledged.
    pub fn c2d_depth(&self, device_id: &str) -> usize {
        Self::depth(&self.lock(), device_id)
    }

    /// Hand a device's waiting C2D messages to its live, subscribed session.
    fn pump(t: &mut Table, device_id: &str) {
        let Some(session) = t.sessions.get_mut(device_id) else {
            return;
        };
        if session.live.is_none() || !session.subscribed(SubscriptionKind::CloudToDevice) {
            return;
        }
        let Some(queue) = t.c2d.get_mut(device_id) else {
            return;
        };
        while let Some(message) = queue.pop_front() {
            let pkid = session.alloc_pkid();
            let out = Outgoing {
                topic: message.topic.clone(),
                qos: 1,
                pkid,
                dup: false,
                payload: message.payload.clone(),
            };
            session.inflight.insert(pkid, Inflight { message });
            if let Some(link) = &session.live {
                let _ = link.tx.send(Box::new(out));
            }
        }
    }

    /// Send a QoS 0 message on one of the session's subscriptions. False when the identity is not
    /// connected or not subscribed to that kind (the message is dropped, as IoT Hub does).
    pub fn send(
        &self,
        client_id: &str,
        kind: SubscriptionKind,
        topic: String,
        payload: Bytes,
    ) -> bool {
        let t = self.lock();
        let Some(session) = t.sessions.get(client_id) else {
            return false;
        };
        let Some(link) = session.live.as_ref().filter(|_| session.subscribed(kind)) else {
            return false;
        };
        link.tx
            .send(Box::new(Outgoing {
                topic,
                qos: 0,
                pkid: 0,
                dup: false,
                payload,
            }))
            .is_ok()
    }

    /// Whether the identity is connected and subscribed to `kind`.
    pub fn reachable(&self, client_id: &str, kind: SubscriptionKind) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.live.is_some() && s.subscribed(kind))
    }

    /// Ask the live connection of `client_id` to close. False when there is none.
    pub fn close(&self, client_id: &str, request: CloseRequest) -> bool {
        let t = self.lock();
        match t.sessions.get(client_id).and_then(|s| s.live.as_ref()) {
            Some(link) => {
                link.close.request(request);
                true
            }
            None => false,
        }
    }

    /// Ask every live connection whose client id `pick`s to close; how many were asked.
    pub fn close_where(&self, pick: impl Fn(&str) -> bool, request: &CloseRequest) -> usize {
        let t = self.lock();
        let mut n = 0usize;
        for (id, s) in &t.sessions {
            if let Some(link) = s.live.as_ref().filter(|_| pick(id)) {
                link.close.request(request.clone());
                n = n.saturating_add(1);
            }
        }
        n
    }

    /// Throw away every C2D message of a device that it has not acknowledged (waiting or in
    /// flight; a late PUBACK for one is then ignored); how many.
    pub fn purge_c2d(&self, device_id: &str) -> usize {
        let mut t = self.lock();
        let waiting = t.c2d.remove(device_id).map_or(0, |q| q.len());
        let inflight = t
            .sessions
            .get_mut(device_id)
            .map_or(0, |s| std::mem::take(&mut s.inflight).len());
        waiting.saturating_add(inflight)
    }

    /// Forget an identity that was deleted: its C2D messages, and its session once the live
    /// connection (asked to close) has gone.
    pub fn forget(&self, client_id: &str) {
        let mut t = self.lock();
        t.c2d.remove(client_id);
        let live = match t.sessions.get_mut(client_id) {
            Some(s) => {
                s.persistent = false;
                s.inflight.clear();
                s.subscriptions.clear();
                s.live.is_some()
            }
            None => return,
        };
        if !live {
            t.sessions.remove(client_id);
        }
    }

    /// Whether the identity has a live connection.
    pub fn is_live(&self, client_id: &str) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.live.is_some())
    }

    /// Client ids with a live connection, in order.
    pub fn live_clients(&self) -> Vec<String> {
        self.lock()
            .sessions
            .iter()
            .filter(|(_, s)| s.live.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Client ids of saved sessions with the given subscription kind (for tests of persistence).
    pub fn subscribed_clients(&self, kind: SubscriptionKind) -> BTreeSet<String> {
        self.lock()
            .sessions
            .iter()
            .filter(|(_, s)| s.subscribed(kind))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Count a connection as connected (after CONNACK 0) or no longer connected, and record the
    /// new count (stamped like the change that caused it).
    pub fn set_connected(&self, up: bool, at: Stamp) {
        let mut t = self.lock();
        t.connected = if up {
            t.connected.saturating_add(1)
        } else {
            t.connected.saturating_sub(1)
        };
        let count = t.connected;
        // Emitted under the lock so the counts in the log are in order.
        self.events.emit_stamped(
            &Subject::default(),
            EventKind::ConnectedDevices { count },
            at,
        );
    }

    /// The number of connected identities.
    pub fn connected(&self) -> usize {
        self.lock().connected
    }
}

#[cfg(test)]
mod tests;
