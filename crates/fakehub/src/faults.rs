//! The fault catalogue: every way the hub can misbehave on purpose, and which devices it hits.
//!
//! A fault is one small unit: a [`FaultKind`] (its parameters), a [`Selector`] (which devices), and
//! an optional duration. [`crate::HubHandle::inject`] starts it now and returns a [`FaultHandle`] that
//! ends it; a duration ends it by itself at its virtual instant. Fault start and end are events.
//!
//! Faults act at four points of a connection's life, each asking the [`FaultTable`]:
//! * accept (`outage` refusing TCP),
//! * CONNECT (`outage` answering CONNACK 3 or hanging, `connack` delay/withhold/refuse, `throttle`,
//!   `clock_skew`),
//! * every packet of a session (`blackhole`, `latency`, `drop_pingresp`, `drop_puback`,
//!   `delay_suback`),
//! * once at start, on live connections (`reset`, `close`, `mass_drop`, `takeover`, `disable`,
//!   `rotate_key`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::events::{CloseCause, EventKind, FaultAction, Stamp, Subject};
use crate::frontdoor::{Control, Shared, WireClose};
use crate::registry::{IdentityRef, SymmetricKeys};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// How new connections are refused during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// TCP connections are reset at once (the device sees "connection refused/reset").
    RefuseTcp,
    /// CONNECT is answered with CONNACK 3 (server unavailable): record 500001.
    Connack3,
    /// CONNECT is never answered; the connection is held until the device gives up: record 500008.
    Hang,
}

/// What a `connack` fault does to new CONNECTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ConnackMode {
    /// Answer after a delay (virtual elapsed time): IoT Hub's traffic shaping.
    Delay {
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Never answer: record 500008 when the device gives up.
    Withhold,
    /// Answer with this return code (1–5): 3 → record 500001, 4/5 → 401003, unless `result` says.
    Refuse {
        code: u8,
        #[serde(default)]
        result: Option<u32>,
    },
}

/// Which PUBACKs to withhold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DropPuback {
    /// Only the nth PUBACK (1-based) of each matching connection after the fault starts.
    #[serde(default)]
    pub nth: Option<u32>,
    /// Only PUBACKs for publishes whose topic contains this text.
    #[serde(default)]
    pub topic: Option<String>,
    /// At most this many per device.
    #[serde(default)]
    pub count: Option<u32>,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FaultKind {
    /// TCP reset: zero linger, no DISCONNECT, no TLS close_notify.
    Reset,
    /// TLS close_notify then FIN.
    Close,
    /// Stop reading and writing, keep TCP open: the keep-alive timeout ends it.
    Blackhole,
    /// The hub loses session state (as in a failover): CONNECTs while it lasts start clean
    /// (`sessionPresent=0`, no subscriptions, nothing queued), whatever CleanSession says.
    SessionLoss,
    /// Withhold PINGRESP.
    DropPingresp,
    /// Withhold PUBACKs to the device's publishes.
    DropPuback(DropPuback),
    /// Hold SUBACKs back for this long (virtual elapsed time).
    DelaySuback {
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Delay each packet in each direction (virtual elapsed time).
    Latency {
        #[schemars(with = "String")]
        #[serde(default, with = "humantime_serde")]
        inbound: Duration,
        #[schemars(with = "String")]
        #[serde(default, with = "humantime_serde")]
        outbound: Duration,
    },
    /// Change how new CONNECTs are answered.
    Connack(ConnackMode),
    /// Refuse new connections.
    Outage { mode: OutageMode },
    /// Drop the selected live connections at once.
    MassDrop {
        #[serde(default)]
        rst: bool,
    },
    /// Admit at most this many new connections per second; excess waits up to `shaping`, then is
    /// closed with 429002.
    Throttle {
        per_second: u32,
        #[schemars(with = "String")]
        #[serde(default = "default_shaping", with = "humantime_serde")]
        shaping: Duration,
    },
    /// A second connection with the same identity: the live one is closed (400027).
    Takeover,
    /// Disable the identity: live connections close, new ones get CONNACK 3.
    Disable,
    /// Replace the identity's keys: tokens signed with the old key are refused from now on.
    RotateKey,
    /// The device's clock is this much behind (positive) or ahead (negative) of the hub: its tokens
    /// are judged as if minted on that clock.
    ClockSkew {
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        behind: Duration,
    },
}

fn default_shaping() -> Duration {
    Duration::from_secs(10)
}

impl FaultKind {
    /// The catalogue name.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Reset => "reset",
            FaultKind::Close => "close",
            FaultKind::Blackhole => "blackhole",
            FaultKind::SessionLoss => "session_loss",
            FaultKind::DropPingresp => "drop_pingresp",
            FaultKind::DropPuback(_) => "drop_puback",
            FaultKind::DelaySuback { .. } => "delay_suback",
            FaultKind::Latency { .. } => "latency",
            FaultKind::Connack(_) => "connack",
            FaultKind::Outage { .. } => "outage",
            FaultKind::MassDrop { .. } => "mass_drop",
            FaultKind::Throttle { .. } => "throttle",
            FaultKind::Takeover => "takeover",
            FaultKind::Disable => "disable",
            FaultKind::RotateKey => "rotate_key",
            FaultKind::ClockSkew { .. } => "clock_skew",
        }
    }
}

/// Which devices a fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    #[default]
    All,
    /// These client ids (`device` or `device/module`).
    Ids(Vec<String>),
    /// Client ids matching a pattern with `*` and `?`.
    Glob(String),
    /// This share of the registered devices, drawn with the run's seed.
    Percent(u8),
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    #[serde(default)]
    pub devices: Selector,
    /// Ends by itself after this long (virtual wall time).
    #[schemars(with = "Option<String>")]
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
}

impl Fault {
    /// A fault for every device, until ended.
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            devices: Selector::All,
            duration: None,
        }
    }

    pub fn devices(mut self, selector: Selector) -> Fault {
        self.devices = selector;
        self
    }

    pub fn lasting(mut self, d: Duration) -> Fault {
        self.duration = Some(d);
        self
    }
}

/// A selector resolved against the registry: a fixed set for `percent`, a predicate otherwise.
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    All,
    Set(std::collections::BTreeSet<String>),
    Glob(wildmatch::WildMatch),
}

impl Matcher {
    pub(crate) fn resolve(selector: &Selector, registered: &[String], seed: u64) -> Matcher {
        match selector {
            Selector::All => Matcher::All,
            Selector::Ids(ids) => Matcher::Set(ids.iter().cloned().collect()),
            Selector::Glob(g) => Matcher::Glob(wildmatch::WildMatch::new(g)),
            Selector::Percent(p) => {
                let mut ids = registered.to_vec();
                ids.sort();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                ids.shuffle(&mut rng);
                let n = (ids.len() * (*p).min(100) as usize).div_ceil(100);
                Matcher::Set(ids.into_iter().take(n).collect())
            }
        }
    }

    pub(crate) fn matches(&self, client_id: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Set(s) => {
                s.contains(client_id) || client_id.split('/').next().is_some_and(|d| s.contains(d))
            }
            Matcher::Glob(g) => g.matches(client_id),
        }
    }
}

/// An active fault.
#[derive(Debug)]
pub(crate) struct Active {
    pub id: u64,
    pub kind: FaultKind,
    pub matcher: Matcher,
    /// Per-device counters (drop_puback).
    pub counters: HashMap<String, (u32, u32)>,
}

/// What a session must do to one packet or at one point, given the active faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub blackhole: bool,
    pub drop_pingresp: bool,
    pub delay_suback: Option<Duration>,
    pub latency_in: Duration,
    pub latency_out: Duration,
}

/// What to do with a new CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectVerdict {
    Proceed,
    /// Answer with this CONNACK code after closing is decided; `result` for the record.
    Refuse {
        code: u8,
        result: u32,
        reason: String,
    },
    /// Never answer; when the connection ends, record `result`.
    Hang {
        result: u32,
        reason: String,
    },
    /// Answer later.
    Delay(Duration),
}

/// The active faults of one hub.
#[derive(Debug)]
pub struct FaultTable {
    active: Mutex<Vec<Active>>,
    next_id: AtomicU64,
    /// Bumped on every change, so sessions can cache their effects and wake up.
    generation: tokio::sync::watch::Sender<u64>,
    /// Throttle state: (window start in virtual elapsed secs, admitted in window) per fault id.
    throttle: Mutex<HashMap<u64, ThrottleState>>,
}

#[derive(Debug, Clone, Copy)]
struct ThrottleState {
    /// Virtual elapsed time at which the next connection may be admitted.
    next_free: Duration,
}

impl Default for FaultTable {
    fn default() -> Self {
        FaultTable {
            active: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            generation: tokio::sync::watch::channel(0).0,
            throttle: Mutex::new(HashMap::new()),
        }
    }
}

impl FaultTable {
    fn lock(&self) -> MutexGuard<'_, Vec<Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn add(&self, active: Active) {
        self.lock().push(active);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Remove a fault; `None` if it already ended.
    pub(crate) fn take(&self, id: u64) -> Option<Active> {
        let mut a = self.lock();
        let i = a.iter().position(|f| f.id == id)?;
        let active = a.remove(i);
        drop(a);
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.generation.send_modify(|g| *g += 1);
        Some(active)
    }

    /// A receiver that wakes on every change of the active faults.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether a new TCP connection must be refused.
    pub fn refuse_tcp(&self) -> bool {
        self.lock().iter().any(|f| {
            matches!(
                f.kind,
                FaultKind::Outage {
                    mode: OutageMode::RefuseTcp
                }
            )
        })
    }

    /// The per-packet effects for a session.
    pub fn effects(&self, client_id: &str) -> Effects {
        let mut e = Effects::default();
        for f in self.lock().iter().filter(|f| f.matcher.matches(client_id)) {
            match &f.kind {
                FaultKind::Blackhole => e.blackhole = true,
                FaultKind::DropPingresp => e.drop_pingresp = true,
                FaultKind::DelaySuback { delay } => {
                    e.delay_suback = Some(e.delay_suback.unwrap_or_default().max(*delay))
                }
                FaultKind::Latency { inbound, outbound } => {
                    e.latency_in += *inbound;
                    e.latency_out += *outbound;
                }
                _ => {}
            }
        }
        e
    }

    /// Whether to withhold the PUBACK for a device publish on `topic` (and count it).
    pub fn drop_puback(&self, client_id: &str, topic: &str) -> bool {
        let mut drop_it = false;
        for f in self
            .lock()
            .iter_mut()
            .filter(|f| f.matcher.matches(client_id))
        {
            let FaultKind::DropPuback(rule) = &f.kind else {
                continue;
            };
            if rule.topic.as_deref().is_some_and(|t| !topic.contains(t)) {
                continue;
            }
            let (seen, dropped) = f.counters.entry(client_id.to_owned()).or_default();
            *seen += 1;
            let hit =
                rule.nth.is_none_or(|n| *seen == n) && rule.count.is_none_or(|c| *dropped < c);
            if hit {
                *dropped += 1;
                drop_it = true;
            }
        }
        drop_it
    }

    /// Whether a CONNECT from `client_id` must start a clean session.
    pub fn session_lost(&self, client_id: &str) -> bool {
        self.lock()
            .iter()
            .any(|f| matches!(f.kind, FaultKind::SessionLoss) && f.matcher.matches(client_id))
    }

    /// How long the clock of `client_id` is behind the hub's (for token checks).
    pub fn clock_skew(&self, client_id: &str) -> Option<Duration> {
        self.lock()
            .iter()
            .filter(|f| f.matcher.matches(client_id))
            .find_map(|f| match f.kind {
                FaultKind::ClockSkew { behind } => Some(behind),
                _ => None,
            })
    }

    /// What to do with a CONNECT from `client_id` arriving at virtual elapsed time `now`.
    pub fn on_connect(&self, client_id: &str, now: Duration) -> ConnectVerdict {
        let active = self.lock();
        let mut delay = Duration::ZERO;
        for f in active.iter().filter(|f| f.matcher.matches(client_id)) {
            match &f.kind {
                FaultKind::Outage {
                    mode: OutageMode::Connack3,
                } => {
                    return ConnectVerdict::Refuse {
                        code: 3,
                        result: 500001,
                        reason: "the hub is in an outage (server unavailable)".into(),
                    }
                }
                FaultKind::Outage {
                    mode: OutageMode::Hang,
                } => {
                    return ConnectVerdict::Hang {
                        result: 500008,
                        reason: "the hub is in an outage: the CONNECT timed out".into(),
                    }
                }
                FaultKind::Connack(ConnackMode::Withhold) => {
                    return ConnectVerdict::Hang {
                        result: 500008,
                        reason: "CONNACK withheld: the CONNECT timed out".into(),
                    }
                }
                FaultKind::Connack(ConnackMode::Refuse { code, result }) => {
                    let result = result.unwrap_or(if *code == 3 { 500001 } else { 401003 });
                    return ConnectVerdict::Refuse {
                        code: *code,
                        result,
                        reason: format!("CONNACK {code} by fault"),
                    };
                }
                FaultKind::Connack(ConnackMode::Delay { delay: d }) => delay = delay.max(*d),
                _ => {}
            }
        }
        // Throttling: admit at `per_second`; wait for a slot up to `shaping`, else refuse.
        let throttles: Vec<(u64, u32, Duration)> = active
            .iter()
            .filter(|f| f.matcher.matches(client_id))
            .filter_map(|f| match f.kind {
                FaultKind::Throttle {
                    per_second,
                    shaping,
                } => Some((f.id, per_second.max(1), shaping)),
                _ => None,
            })
            .collect();
        drop(active);
        let mut state = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        for (id, per_second, shaping) in throttles {
            let interval = Duration::from_secs(1) / per_second;
            let slot = state.entry(id).or_insert(ThrottleState { next_free: now });
            let at = slot.next_free.max(now);
            let wait = at - now;
            if wait > shaping {
                return ConnectVerdict::Hang {
                    result: 429002,
                    reason: format!("throttled: over {per_second} new connections/s beyond the {shaping:?} backlog"),
                };
            }
            slot.next_free = at + interval;
            delay = delay.max(wait);
        }
        if delay.is_zero() {
            ConnectVerdict::Proceed
        } else {
            ConnectVerdict::Delay(delay)
        }
    }
}

/// An in-band fault request (the `AzIoTHub_Fault*` message properties).
#[derive(Debug, Clone)]
pub(crate) struct InbandFault {
    pub op: String,
    pub delay: Duration,
    pub duration: Duration,
    pub client_id: String,
}

/// Start a fault on a running hub: record it, apply one-shot effects to live connections, keep the
/// rest in the table, and end it after its duration.
pub(crate) fn inject(shared: &Arc<Shared>, fault: Fault) -> FaultHandle {
    let id = shared.faults.next_id();
    let registered = shared.registry.client_ids();
    let matcher = Matcher::resolve(
        &fault.devices,
        &registered,
        shared.seed ^ id.rotate_left(17),
    );
    let name = fault.kind.name();
    let detail = serde_json::to_value(&fault).ok();
    shared.events.emit(
        &Subject::default(),
        EventKind::Fault {
            id,
            action: FaultAction::Started,
            fault: name.to_owned(),
            detail,
        },
    );
    let hit: Vec<String> = registered
        .iter()
        .filter(|c| matcher.matches(c))
        .cloned()
        .collect();
    let close = |wire: WireClose, cause: CloseCause| {
        let cmd = Control::Close {
            wire,
            cause,
            detail: format!("fault {id} ({name})"),
            result: None,
        };
        shared.sessions.control_where(|c| matcher.matches(c), &cmd);
    };
    match &fault.kind {
        FaultKind::Reset => close(WireClose::Rst, CloseCause::Fault),
        FaultKind::Close => close(WireClose::Fin, CloseCause::Fault),
        FaultKind::MassDrop { rst } => close(
            if *rst { WireClose::Rst } else { WireClose::Fin },
            CloseCause::Fault,
        ),
        FaultKind::Takeover => close(WireClose::Fin, CloseCause::Takeover),
        FaultKind::Disable => {
            for c in &hit {
                shared.set_enabled(&IdentityRef::from_client_id(c), false);
            }
        }
        FaultKind::RotateKey => {
            for c in &hit {
                shared
                    .registry
                    .update(&IdentityRef::from_client_id(c), |i| {
                        i.keys = SymmetricKeys::generate()
                    });
            }
        }
        _ => {}
    }
    shared.faults.add(Active {
        id,
        kind: fault.kind.clone(),
        matcher,
        counters: HashMap::new(),
    });
    // A one-shot fault has done its work: it ends at once unless it was given a duration.
    let one_shot = matches!(
        fault.kind,
        FaultKind::Reset
            | FaultKind::Close
            | FaultKind::MassDrop { .. }
            | FaultKind::Takeover
            | FaultKind::RotateKey
    );
    if one_shot && fault.duration.is_none() {
        end(shared, id, Stamp::Now);
    }
    if let Some(d) = fault.duration {
        let task_shared = shared.clone();
        let deadline = shared.clock.now() + d;
        let mut timer = shared.clock.timer(deadline);
        shared.tasks.spawn(async move {
            tokio::select! {
                fired = timer.wait() => {
                    end(&task_shared, id, Stamp::Wall(fired.at));
                    drop(fired);
                }
                _ = task_shared.shutdown.cancelled() => {}
            }
        });
    }
    let end_shared = Arc::downgrade(shared);
    FaultHandle {
        id,
        end: Arc::new(move |id| {
            if let Some(shared) = end_shared.upgrade() {
                end(&shared, id, Stamp::Now);
            }
        }),
    }
}

/// End a fault (once): undo what must be undone and record it.
pub(crate) fn end(shared: &Shared, id: u64, at: Stamp) {
    let Some(active) = shared.faults.take(id) else {
        return;
    };
    if matches!(active.kind, FaultKind::Disable) {
        for c in shared
            .registry
            .client_ids()
            .iter()
            .filter(|c| active.matcher.matches(c))
        {
            shared.set_enabled(&IdentityRef::from_client_id(c), true);
        }
    }
    shared.events.emit_stamped(
        &Subject::default(),
        EventKind::Fault {
            id,
            action: FaultAction::Ended,
            fault: active.kind.name().to_owned(),
            detail: None,
        },
        at,
    );
}

/// Start an in-band fault: after its delay the connection is closed the way the operation says, and
/// for throttling, quota and auth faults new CONNECTs of that device are refused for the duration.
pub(crate) fn start_inband(shared: &Arc<Shared>, f: InbandFault) {
    let (wire, result, refuse) = match f.op.as_str() {
        "KillTcp" => (WireClose::Rst, None, None),
        "ShutDownMqtt" => (WireClose::Fin, None, None),
        "InvokeThrottling" => (WireClose::Fin, Some(429001), Some((3, 429001))),
        "InvokeMaxMessageQuota" => (WireClose::Fin, Some(403002), Some((3, 403002))),
        "InvokeAuthError" => (WireClose::Fin, Some(401003), Some((5, 401003))),
        other => {
            tracing::info!(op = other, "unknown AzIoTHub_FaultOperationType ignored");
            return;
        }
    };
    let id = shared.faults.next_id();
    shared.events.emit(
        &Subject::default(),
        EventKind::Fault {
            id,
            action: FaultAction::Started,
            fault: format!("inband:{}", f.op),
            detail: Some(serde_json::json!({
                "device": f.client_id,
                "delay_secs": f.delay.as_secs_f64(),
                "duration_secs": f.duration.as_secs_f64(),
            })),
        },
    );
    let task_shared = shared.clone();
    let mut timer = shared.clock.timer(shared.clock.now() + f.delay);
    shared.tasks.spawn(async move {
        let fired = tokio::select! {
            fired = timer.wait() => fired,
            _ = task_shared.shutdown.cancelled() => return,
        };
        let cmd = Control::Close {
            wire,
            cause: CloseCause::Fault,
            detail: format!("in-band fault {}", f.op),
            result,
        };
        task_shared.sessions.control(&f.client_id, cmd);
        let refusing = match refuse {
            Some((code, result)) if !f.duration.is_zero() => {
                let kind = FaultKind::Connack(ConnackMode::Refuse {
                    code,
                    result: Some(result),
                });
                let matcher = Matcher::Set([f.client_id.clone()].into_iter().collect());
                task_shared.faults.add(Active {
                    id,
                    kind,
                    matcher,
                    counters: HashMap::new(),
                });
                true
            }
            _ => false,
        };
        let end_at = fired.at + f.duration;
        drop(fired);
        if refusing {
            let mut timer = task_shared.clock.timer(end_at);
            tokio::select! {
                fired = timer.wait() => {
                    task_shared.faults.take(id);
                    drop(fired);
                }
                _ = task_shared.shutdown.cancelled() => return,
            }
        }
        task_shared.events.emit_stamped(
            &Subject::default(),
            EventKind::Fault {
                id,
                action: FaultAction::Ended,
                fault: format!("inband:{}", f.op),
                detail: None,
            },
            Stamp::Wall(end_at),
        );
    });
}

/// Ends an injected fault (or does nothing if it already ended). Dropping it leaves the fault on.
#[derive(Clone)]
pub struct FaultHandle {
    pub(crate) id: u64,
    pub(crate) end: Arc<dyn Fn(u64) + Send + Sync>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl FaultHandle {
    /// The fault's id in events.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// End the fault now.
    pub fn end(&self) {
        (self.end)(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(kind: FaultKind, selector: Selector) -> Active {
        let registered: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        Active {
            id: 1,
            kind,
            matcher: Matcher::resolve(&selector, &registered, 42),
            counters: HashMap::new(),
        }
    }

    #[test]
    fn selectors() {
        let reg: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let m = Matcher::resolve(&Selector::Percent(30), &reg, 7);
        let hit: Vec<&String> = reg.iter().filter(|d| m.matches(d)).collect();
        assert_eq!(hit.len(), 3);
        let again = Matcher::resolve(&Selector::Percent(30), &reg, 7);
        assert!(
            reg.iter().all(|d| m.matches(d) == again.matches(d)),
            "same seed, same devices"
        );
        let g = Matcher::resolve(&Selector::Glob("sensor-?".into()), &reg, 0);
        assert!(g.matches("sensor-1") && !g.matches("sensor-10"));
        let ids = Matcher::resolve(&Selector::Ids(vec!["edge".into()]), &reg, 0);
        assert!(ids.matches("edge") && ids.matches("edge/module") && !ids.matches("edge2"));
    }

    #[test]
    fn drop_puback_nth_topic_count() {
        let t = FaultTable::default();
        t.add(active(
            FaultKind::DropPuback(DropPuback {
                nth: Some(2),
                topic: None,
                count: None,
            }),
            Selector::All,
        ));
        let drops: Vec<bool> = (0..4)
            .map(|_| t.drop_puback("d1", "devices/d1/messages/events/"))
            .collect();
        assert_eq!(drops, [false, true, false, false]);
        let t = FaultTable::default();
        t.add(active(
            FaultKind::DropPuback(DropPuback {
                nth: None,
                topic: Some("seq=".into()),
                count: Some(2),
            }),
            Selector::All,
        ));
        let drops: Vec<bool> = ["a", "x seq=1", "x seq=2", "x seq=3"]
            .iter()
            .map(|tp| t.drop_puback("d1", tp))
            .collect();
        assert_eq!(drops, [false, true, true, false]);
    }

    #[test]
    fn throttle_spaces_connections_then_refuses() {
        let t = FaultTable::default();
        t.add(active(
            FaultKind::Throttle {
                per_second: 10,
                shaping: Duration::from_millis(250),
            },
            Selector::All,
        ));
        let now = Duration::from_secs(100);
        let verdicts: Vec<ConnectVerdict> = (0..5).map(|_| t.on_connect("d1", now)).collect();
        assert_eq!(verdicts[0], ConnectVerdict::Proceed);
        assert_eq!(
            verdicts[1],
            ConnectVerdict::Delay(Duration::from_millis(100))
        );
        assert_eq!(
            verdicts[2],
            ConnectVerdict::Delay(Duration::from_millis(200))
        );
        assert!(
            matches!(verdicts[4], ConnectVerdict::Hang { result: 429002, .. }),
            "{verdicts:?}"
        );
    }

    #[test]
    fn outage_and_connack_verdicts() {
        let t = FaultTable::default();
        let mut w = t.watch();
        w.borrow_and_update();
        t.add(active(
            FaultKind::Outage {
                mode: OutageMode::Connack3,
            },
            Selector::Ids(vec!["d1".into()]),
        ));
        assert!(w.has_changed().unwrap(), "sessions are woken by a change");
        assert!(matches!(
            t.on_connect("d1", Duration::ZERO),
            ConnectVerdict::Refuse {
                code: 3,
                result: 500001,
                ..
            }
        ));
        assert_eq!(t.on_connect("d2", Duration::ZERO), ConnectVerdict::Proceed);
        assert!(t.take(1).is_some());
        assert!(t.take(1).is_none());
        assert_eq!(t.on_connect("d1", Duration::ZERO), ConnectVerdict::Proceed);
    }
}
