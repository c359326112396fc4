//! The active faults of one hub, and what the front door asks of them.
//!
//! The set is consulted synchronously: at accept, at CONNECT, and by each live connection before
//! every packet (a connection keeps its faults' hooks and refreshes them when the set's generation
//! moved), so a fault acts from the moment [`ActiveFaults::insert`] returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::mqttbytes::v4 as mq;

use super::selector::Matcher;
use super::unit::{
    ConnectAttempt, ConnectVerdict, ConnectionHook, DpsAttempt, DpsVerdict, FaultUnit,
    PacketVerdict,
};

struct Entry {
    id: u64,
    name: String,
    unit: Arc<dyn FaultUnit>,
    matcher: Matcher,
}

/// What the active faults say about a CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectDecision {
    pub verdict: ConnectVerdict,
    /// How far behind the hub the device's clock is (for its token checks).
    pub clock_behind: Option<Duration>,
    /// The session must start clean whatever the CONNECT asks.
    pub force_clean: bool,
}

/// The active faults.
pub struct ActiveFaults {
    entries: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
    /// Bumped on every change (connections refresh their hooks when it moved).
    generation: AtomicU64,
}

impl Default for ActiveFaults {
    fn default() -> Self {
        ActiveFaults {
            entries: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }
}

impl ActiveFaults {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn insert(&self, id: u64, name: &str, unit: Arc<dyn FaultUnit>, matcher: Matcher) {
        self.lock().push(Entry {
            id,
            name: name.to_owned(),
            unit,
            matcher,
        });
        self.bump();
    }

    /// Take a fault out; its name and unit, or `None` if it already ended.
    pub fn remove(&self, id: u64) -> Option<(String, Arc<dyn FaultUnit>)> {
        let mut entries = self.lock();
        let i = entries.iter().position(|e| e.id == id)?;
        let e = entries.remove(i);
        drop(entries);
        self.bump();
        Some((e.name, e.unit))
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().iter().any(|e| e.id == id)
    }

    /// The ids and names of the active faults, in the order they started.
    pub fn list(&self) -> Vec<(u64, String)> {
        self.lock().iter().map(|e| (e.id, e.name.clone())).collect()
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a new TCP connection must be reset before anything is read.
    pub fn refuse_tcp(&self) -> bool {
        self.lock().iter().any(|e| e.unit.refuses_tcp())
    }

    /// What to do with a CONNECT: the first refusal or hang of the faults that select it, in the
    /// order they started, else the longest delay.
    pub fn on_connect(&self, attempt: &ConnectAttempt<'_>) -> ConnectDecision {
        let entries = self.lock();
        let mut decision = ConnectDecision {
            verdict: ConnectVerdict::Proceed,
            clock_behind: None,
            force_clean: false,
        };
        let mut delay = Duration::ZERO;
        for e in entries
            .iter()
            .filter(|e| e.matcher.matches(attempt.client_id))
        {
            decision.force_clean |= e.unit.forces_clean_session();
            if decision.clock_behind.is_none() {
                decision.clock_behind = e.unit.clock_behind();
            }
            match e.unit.on_connect(attempt) {
                ConnectVerdict::Proceed => {}
                ConnectVerdict::Delay(d) => delay = delay.max(d),
                stop @ (ConnectVerdict::Refuse { .. } | ConnectVerdict::Hang { .. }) => {
                    decision.verdict = stop;
                    return decision;
                }
            }
        }
        if !delay.is_zero() {
            decision.verdict = ConnectVerdict::Delay(delay);
        }
        decision
    }

    /// What to do with a request to the provisioning service: the first refusal or drop of the
    /// faults that select the registration, in the order they started; else `disabled`; else the
    /// longest `assigning` hold.
    pub fn on_dps(&self, attempt: &DpsAttempt<'_>) -> DpsVerdict {
        let entries = self.lock();
        let mut disabled = false;
        let mut hold: Option<DpsVerdict> = None;
        for e in entries
            .iter()
            .filter(|e| e.matcher.matches(attempt.registration_id))
        {
            match e.unit.on_dps(attempt) {
                DpsVerdict::Proceed => {}
                stop @ (DpsVerdict::Refuse { .. } | DpsVerdict::Drop { .. }) => return stop,
                DpsVerdict::Disabled => disabled = true,
                DpsVerdict::Assigning { until, retry_after } => {
                    let longer = match &hold {
                        Some(DpsVerdict::Assigning { until: u, .. }) => until > *u,
                        _ => true,
                    };
                    if longer {
                        hold = Some(DpsVerdict::Assigning { until, retry_after });
                    }
                }
            }
        }
        if disabled {
            DpsVerdict::Disabled
        } else {
            hold.unwrap_or(DpsVerdict::Proceed)
        }
    }

    /// Whether a fault holds the hub out of the provisioning service's rotation.
    pub fn hub_unlinked(&self) -> bool {
        self.lock().iter().any(|e| e.unit.unlinks_hub())
    }

    /// The packet hooks of the faults that select `client_id`, as they are now.
    pub fn hooks(&self, client_id: &str) -> FaultHooks {
        let mut hooks = FaultHooks {
            client_id: client_id.to_owned(),
            generation: u64::MAX,
            hooks: Vec::new(),
        };
        hooks.refresh(self);
        hooks
    }
}

/// One connection's hooks into the active faults, each with the state it keeps for it.
pub struct FaultHooks {
    client_id: String,
    generation: u64,
    hooks: Vec<(u64, Box<dyn ConnectionHook>)>,
}

impl FaultHooks {
    /// Catch up with the active set: drop the hooks of ended faults, attach the new ones.
    pub fn refresh(&mut self, active: &ActiveFaults) {
        let generation = active.generation();
        if generation == self.generation {
            return;
        }
        let entries = active.lock();
        self.hooks
            .retain(|(id, _)| entries.iter().any(|e| e.id == *id));
        for e in entries
            .iter()
            .filter(|e| e.matcher.matches(&self.client_id))
        {
            if self.hooks.iter().any(|(id, _)| *id == e.id) {
                continue;
            }
            if let Some(hook) = e.unit.attach(&self.client_id) {
                self.hooks.push((e.id, hook));
            }
        }
        self.generation = generation;
    }

    /// Whether the hub reads from the device.
    pub fn reads(&self) -> bool {
        self.hooks.iter().all(|(_, h)| h.reads())
    }

    /// Whether the hub writes to the device.
    pub fn writes(&self) -> bool {
        self.hooks.iter().all(|(_, h)| h.writes())
    }

    fn combine(verdicts: Vec<PacketVerdict>) -> PacketVerdict {
        let mut delay = Duration::ZERO;
        for v in verdicts {
            match v {
                PacketVerdict::Withhold => return PacketVerdict::Withhold,
                PacketVerdict::Delay(d) => delay = delay.saturating_add(d),
                PacketVerdict::Pass => {}
            }
        }
        if delay.is_zero() {
            PacketVerdict::Pass
        } else {
            PacketVerdict::Delay(delay)
        }
    }

    /// What the faults do to a packet from the device (every hook sees it; delays add up; one
    /// withholding wins).
    pub fn inbound(&mut self, packet: &mq::Packet) -> PacketVerdict {
        Self::combine(
            self.hooks
                .iter_mut()
                .map(|(_, h)| h.inbound(packet))
                .collect(),
        )
    }

    /// What the faults do to a packet the hub is about to send.
    pub fn outbound(&mut self, packet: &mq::Packet) -> PacketVerdict {
        Self::combine(
            self.hooks
                .iter_mut()
                .map(|(_, h)| h.outbound(packet))
                .collect(),
        )
    }
}
