//! A fault schedule: a timeline in the scenario's own vocabulary, the fleet it runs against and
//! the run's seed — and the rules that keep every schedule runnable and fair ([`Vocabulary::fit`]).
//!
//! Generated and shrunk schedules both go through `fit`, so whatever the generator or the shrinker
//! proposes, what runs is valid (devices that exist, bounded durations) and asks nothing of a
//! device that no device could do:
//!
//! * faults that keep devices from a working connection (`outage`, `disable`, `blackhole`,
//!   `half_open`, `throttle`, `connack` refusing or withholding) always end by themselves, and
//!   together never keep devices out longer than [`Vocabulary::max_block`] at a stretch (blocks
//!   less than [`Vocabulary::settle`] apart count as one stretch), so a `recovers: within` can be
//!   met;
//! * a `connack` or `delay_suback` delay stays within 20 s: past a device's own timeout (30 s for
//!   the sample device) the answer reaches a device that gave up, and the hub records a connection
//!   that never was (CONNACK 0, then an abrupt close), which the rules that time retries cannot
//!   tell from a drop;
//! * `rotate_key` is never generated: a device keeps the key it was given, so after a rotation no
//!   device can ever connect again;
//! * every lasting fault ends by itself (5 minutes when proposed without a duration, at most
//!   30), so the end of the run is quiet;
//! * `clock_skew` stays within 5 minutes (a device whose clock is further behind has its token
//!   expire, by the hub's reckoning, before it renews it), `latency` within 100 ms each way (the
//!   hub times a device's retries by when its packets arrive: more latency blurs the delays
//!   `backoff` judges);
//! * a service step (`method`, `c2d`, `desired`) comes only when the devices have had
//!   [`Vocabulary::settle`] to get back since the last drop or block, and none starts within
//!   [`Vocabulary::service_window`] after it (a method for a device that is offline fails with
//!   404103 whatever the device does);
//! * in-process devices neither crash nor stop (a stopped in-process device is gone for good);
//!   a device process that crashes or stops is restarted at once;
//! * every schedule ends with [`Vocabulary::quiet`] of quiet time after its last step and after
//!   its last fault ended, so rules that judge "the end of the run" can judge it.

use std::collections::BTreeMap;
use std::time::Duration;

use fakehub::faults::{Connack, Fault, FaultKind, Selector};
use fakehub_assert::Expectation;

use crate::scenario::{DeviceSpec, FaultStep, Scenario, Step};

/// The longest a CONNACK or SUBACK is delayed: past a device's own timeout (30 s for the sample
/// device) the answer reaches a device that gave up, and the hub records a connection that never
/// was (CONNACK 0, then an abrupt close), which the rules that time retries cannot tell from a drop.
pub(crate) const SLOW_ACK: Duration = Duration::from_secs(20);
/// The furthest a device's clock may be behind.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
/// The most latency each way: the hub times a device's reconnects by when its packets arrive, so
/// more latency would blur the delays `backoff` judges.
pub(crate) const MAX_LATENCY: Duration = Duration::from_millis(100);
/// The longest `retry-after` the provisioning service's faults ask for.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest a registration is held `assigning` (well within a device's own patience: the
/// sample device gives up after 5 minutes).
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(60);
/// The longest a lasting fault that keeps no device out is given.
pub(crate) const MAX_LASTING: Duration = Duration::from_secs(30 * 60);
/// How long a lasting fault proposed without a duration lasts.
const DEFAULT_LASTING: Duration = Duration::from_secs(5 * 60);

/// One entry of the scenario's `devices:` as schedules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    /// The fleet size in the scenario (`None`: a single device).
    pub count: Option<usize>,
    /// It runs as a process (`run:`): it can crash, stop and restart.
    pub process: bool,
}

impl Entry {
    fn of(d: &DeviceSpec) -> Entry {
        Entry {
            id: d.id.clone(),
            count: d.count,
            process: d.run.is_some(),
        }
    }

    /// The ids this entry stands for with a fleet of `count`.
    fn ids(&self, count: Option<usize>) -> Vec<String> {
        match count {
            Some(n) => (0..n).map(|i| format!("{}-{i}", self.id)).collect(),
            None => vec![self.id.clone()],
        }
    }
}

/// What schedules for one scenario are made of, and the bounds that keep them fair (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub entries: Vec<Entry>,
    /// At most this many steps are generated (before the quiet end).
    pub max_steps: usize,
    /// Generate direct methods, C2D messages and desired-property patches.
    pub service: bool,
    /// The longest stretch faults may keep devices from a working connection.
    pub max_block: Duration,
    /// How long after a drop or a block ends devices are given to be back.
    pub settle: Duration,
    /// No drop or block starts this soon after a service step.
    pub service_window: Duration,
    /// Quiet time at the end of every schedule.
    pub quiet: Duration,
    /// The scenario has a provisioning service: its faults are generated too.
    pub dps: bool,
    /// The host names of the scenario's hubs, when it has several (`hub_down` picks one).
    pub hubs: Vec<String>,
}

/// The `within` an expectation gives, if any (with the rules' defaults).
fn within(e: &Expectation) -> Option<Duration> {
    match e {
        Expectation::Recovers { within, .. } => Some(*within),
        Expectation::Resubscribes { within, .. } | Expectation::Method { within, .. } => {
            Some(within.unwrap_or(Duration::from_secs(30)))
        }
        Expectation::C2dDelivered { within, .. } | Expectation::DesiredApplied { within, .. } => {
            Some(within.unwrap_or(Duration::from_secs(60)))
        }
        _ => None,
    }
}

impl Vocabulary {
    /// The vocabulary of a scenario: its devices, and bounds from its expectations (the tightest
    /// `recovers: within` bounds how long faults may keep devices out; the longest `within` of any
    /// rule sets the quiet end).
    pub fn of(scenario: &Scenario) -> Vocabulary {
        let settle = Duration::from_secs(150);
        let recovers = scenario
            .expect
            .iter()
            .filter_map(|e| match e {
                Expectation::Recovers { within, .. } => Some(*within),
                _ => None,
            })
            .min();
        let max_block = match recovers {
            Some(w) => w.saturating_sub(settle).min(Duration::from_secs(600)),
            None => Duration::from_secs(300),
        };
        let service_window = scenario
            .expect
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Expectation::Method { .. }
                        | Expectation::C2dDelivered { .. }
                        | Expectation::DesiredApplied { .. }
                )
            })
            .filter_map(within)
            .max()
            .unwrap_or(Duration::from_secs(60))
            + Duration::from_secs(30);
        let longest = scenario
            .expect
            .iter()
            .filter_map(within)
            .max()
            .unwrap_or_default();
        let quiet = longest.max(service_window).max(settle) + Duration::from_secs(30);
        Vocabulary {
            entries: scenario.devices.iter().map(Entry::of).collect(),
            max_steps: 8,
            service: true,
            max_block,
            settle,
            service_window,
            quiet,
            dps: scenario.dps.is_some(),
            hubs: scenario
                .hubs
                .iter()
                .filter_map(|h| h.host_name.clone())
                .collect(),
        }
    }

    /// The fleet sizes of the scenario itself.
    pub fn full_fleet(&self) -> Vec<Option<usize>> {
        self.entries.iter().map(|e| e.count).collect()
    }

    /// Every device id with the scenario's own fleet sizes.
    pub fn all_ids(&self) -> Vec<String> {
        self.ids(&self.full_fleet())
    }

    fn ids(&self, fleet: &[Option<usize>]) -> Vec<String> {
        self.entries
            .iter()
            .zip(fleet)
            .flat_map(|(e, n)| e.ids(*n))
            .collect()
    }

    /// Make a schedule of proposed steps runnable and fair (see the module documentation): clamp
    /// the fleet sizes, point every device reference at a device of that fleet, bound durations,
    /// drop what cannot be asked, merge adjacent time steps and end in quiet time.
    pub fn fit(&self, fleet: Vec<Option<usize>>, steps: Vec<Step>, seed: u64) -> Schedule {
        let fleet: Vec<Option<usize>> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.count.map(|max| {
                    fleet
                        .get(i)
                        .copied()
                        .flatten()
                        .unwrap_or(max)
                        .clamp(1, max.max(1))
                })
            })
            .collect();
        let names = Names::new(self, &fleet);
        let mut fit = Fitting::new(self);
        for step in steps {
            fit.step(&names, step);
        }
        Schedule {
            fleet,
            timeline: fit.finish(),
            seed,
        }
    }
}

/// Resolves device references against a fleet: ids that exist stay, `fleet-17` in a fleet of 5
/// becomes `fleet-2`, anything else is dropped.
struct Names {
    /// Each entry's id, fleet size and whether it is a process.
    entries: Vec<(String, Option<usize>, bool)>,
}

impl Names {
    fn new(v: &Vocabulary, fleet: &[Option<usize>]) -> Names {
        Names {
            entries: v
                .entries
                .iter()
                .zip(fleet)
                .map(|(e, n)| (e.id.clone(), *n, e.process))
                .collect(),
        }
    }

    /// The device `name` stands for in this fleet, and whether it is a process.
    fn resolve(&self, name: &str) -> Option<(String, bool)> {
        for (id, count, process) in &self.entries {
            match count {
                None if name == id => return Some((id.clone(), *process)),
                Some(n) => {
                    let Some(k) = name
                        .strip_prefix(id.as_str())
                        .and_then(|rest| rest.strip_prefix('-'))
                        .and_then(|k| k.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    return Some((format!("{id}-{}", k % (*n).max(1)), *process));
                }
                None => {}
            }
        }
        None
    }

    fn selector(&self, s: Selector) -> Option<Selector> {
        match s {
            Selector::Ids(ids) => {
                let mut out: Vec<String> = Vec::new();
                for id in ids {
                    let (d, _) = self.resolve(id.split('/').next().unwrap_or(&id))?;
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
                (!out.is_empty()).then_some(Selector::Ids(out))
            }
            Selector::Percent(p) => Some(Selector::Percent(p.clamp(1, 100))),
            other => Some(other),
        }
    }
}

/// How a fault bears on devices' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Ends live connections once (reset, close, mass_drop, takeover).
    Drop,
    /// Keeps devices from a working connection while it lasts.
    Block,
    /// Changes what a reconnect finds (session_loss): not while service steps are judged.
    Unsettling,
    /// Neither (a withheld PINGRESP or PUBACK, latency, a small skew, a short SUBACK delay).
    Benign,
}

fn effect(kind: &FaultKind) -> Effect {
    match kind {
        FaultKind::Reset(_)
        | FaultKind::Close(_)
        | FaultKind::MassDrop(_)
        | FaultKind::Takeover(_)
        | FaultKind::RotateKey(_) => Effect::Drop,
        FaultKind::Blackhole(_)
        | FaultKind::HalfOpen(_)
        | FaultKind::Outage(_)
        | FaultKind::Disable(_)
        | FaultKind::Throttle(_)
        // The provisioning service's faults that keep a provisioning device from a hub.
        | FaultKind::HubDown(_)
        | FaultKind::DpsThrottle(_)
        | FaultKind::DpsError(_)
        | FaultKind::DpsDrop(_)
        | FaultKind::DpsDisabled(_) => Effect::Block,
        // A registration held `assigning` for at most MAX_HOLD: a device that waits it out is
        // assigned while the fault lasts (one that gives up early starts the wait over).
        FaultKind::DpsAssigning(_) => Effect::Benign,
        // Delays are bounded to SLOW_ACK first.
        FaultKind::Connack(Connack::Delay { .. }) => Effect::Benign,
        FaultKind::Connack(_) => Effect::Block,
        FaultKind::SessionLoss(_) => Effect::Unsettling,
        FaultKind::DelaySuback(_)
        | FaultKind::DropPingresp(_)
        | FaultKind::DropPuback(_)
        | FaultKind::Latency(_)
        | FaultKind::ClockSkew(_) => Effect::Benign,
    }
}

/// Bound a fault's own parameters.
fn bounded(kind: FaultKind) -> FaultKind {
    match kind {
        FaultKind::ClockSkew(mut s) => {
            s.behind = s.behind.min(MAX_SKEW);
            FaultKind::ClockSkew(s)
        }
        FaultKind::Latency(mut l) => {
            l.inbound = l.inbound.min(MAX_LATENCY);
            l.outbound = l.outbound.min(MAX_LATENCY);
            FaultKind::Latency(l)
        }
        FaultKind::Throttle(mut t) => {
            t.per_second = t.per_second.max(1);
            FaultKind::Throttle(t)
        }
        FaultKind::Connack(Connack::Refuse { code, result }) => {
            FaultKind::Connack(Connack::Refuse {
                code: code.clamp(1, 5),
                result,
            })
        }
        FaultKind::Connack(Connack::Delay { delay }) => FaultKind::Connack(Connack::Delay {
            delay: delay.min(SLOW_ACK),
        }),
        FaultKind::DelaySuback(mut d) => {
            d.delay = d.delay.min(SLOW_ACK);
            FaultKind::DelaySuback(d)
        }
        FaultKind::DpsThrottle(mut t) => {
            t.retry_after = t.retry_after.min(MAX_RETRY_AFTER);
            FaultKind::DpsThrottle(t)
        }
        FaultKind::DpsError(mut e) => {
            e.retry_after = e.retry_after.map(|r| r.min(MAX_RETRY_AFTER));
            FaultKind::DpsError(e)
        }
        FaultKind::DpsAssigning(mut a) => {
            a.hold = a.hold.min(MAX_HOLD);
            a.retry_after = a.retry_after.min(MAX_RETRY_AFTER);
            FaultKind::DpsAssigning(a)
        }
        other => other,
    }
}

/// A stretch of time in which devices were dropped or kept out.
#[derive(Debug, Clone, Copy)]
struct Disruption {
    from: Duration,
    to: Duration,
}

/// The walk over proposed steps that [`Vocabulary::fit`] makes.
struct Fitting<'a> {
    v: &'a Vocabulary,
    /// Where the timeline is (virtual time since it started).
    now: Duration,
    /// The steps kept, each with its time and when its effect ends (a fault's end).
    out: Vec<(Duration, Duration, Step)>,
    /// Stretches in which faults keep devices out (merged when closer than `settle`).
    blocks: Vec<Disruption>,
    /// Drops, blocks, session losses and restarts, for placing service steps.
    disruptions: Vec<Disruption>,
}

impl<'a> Fitting<'a> {
    fn new(v: &'a Vocabulary) -> Self {
        Fitting {
            v,
            now: Duration::ZERO,
            out: Vec::new(),
            blocks: Vec::new(),
            disruptions: Vec::new(),
        }
    }

    fn push(&mut self, step: Step, until: Duration) {
        self.out.push((self.now, until, step));
    }

    fn step(&mut self, names: &Names, step: Step) {
        match step {
            Step::Advance(d) | Step::Wait(d) if whole_seconds(d).is_zero() => {}
            Step::Advance(d) => {
                self.now += whole_seconds(d);
                self.push(Step::Advance(whole_seconds(d)), self.now);
            }
            Step::Wait(d) => {
                self.now += whole_seconds(d);
                self.push(Step::Wait(whole_seconds(d)), self.now);
            }
            Step::Crash(r) => self.bounce(names, &r.device, true),
            Step::Stop(r) => self.bounce(names, &r.device, false),
            // Restarts come with their crash or stop.
            Step::Restart(_) => {}
            Step::Fault(f) => {
                // A hub the scenario does not have is no hub: the fault acts on every hub.
                let hub = f
                    .hub
                    .filter(|h| self.v.hubs.iter().any(|n| n.eq_ignore_ascii_case(h)));
                self.fault(names, f.fault, hub)
            }
            Step::C2d(mut c) => {
                if let Some((d, _)) = names.resolve(&c.device) {
                    c.device = d;
                    self.push(Step::C2d(c), self.now);
                }
            }
            Step::Desired(mut d) => {
                if let (Some((dev, _)), true) = (names.resolve(&d.device), d.patch.is_object()) {
                    d.device = dev;
                    self.push(Step::Desired(d), self.now);
                }
            }
            Step::Method(mut m) => {
                if let Some((d, _)) = names.resolve(&m.device) {
                    m.device = d;
                    m.timeout = m
                        .timeout
                        .map(|t| t.clamp(Duration::from_secs(1), Duration::from_secs(300)));
                    self.push(Step::Method(m), self.now);
                }
            }
        }
    }

    /// A device process crashes (or stops) and is restarted at once; in-process devices do
    /// neither.
    fn bounce(&mut self, names: &Names, device: &str, crash: bool) {
        let Some((device, true)) = names.resolve(device) else {
            return;
        };
        self.disruptions.push(Disruption {
            from: self.now,
            to: self.now,
        });
        let r = crate::scenario::DeviceRef { device };
        let end = if crash {
            Step::Crash(r.clone())
        } else {
            Step::Stop(r.clone())
        };
        self.push(end, self.now);
        self.push(Step::Restart(r), self.now);
    }

    fn fault(&mut self, names: &Names, f: Fault, hub: Option<String>) {
        // No device keeps working after its key is replaced: never asked.
        if matches!(f.kind, FaultKind::RotateKey(_)) {
            return;
        }
        let Some(devices) = names.selector(f.devices) else {
            return;
        };
        let kind = bounded(f.kind);
        let effect = effect(&kind);
        let duration = match effect {
            Effect::Block => {
                let wanted = f.duration.map_or(self.v.max_block, whole_seconds);
                let Some(d) = self.block(wanted) else {
                    return;
                };
                Some(d)
            }
            // One-shot: a duration means nothing to it.
            Effect::Drop => None,
            // Every lasting fault ends by itself, so the quiet end is quiet.
            Effect::Unsettling | Effect::Benign => Some(
                f.duration
                    .map_or(DEFAULT_LASTING, |d| whole_seconds(d).min(MAX_LASTING)),
            ),
        };
        if duration.is_some_and(|d| d.is_zero()) {
            return;
        }
        let end = duration.map_or(self.now, |d| self.now + d);
        match effect {
            Effect::Drop | Effect::Block | Effect::Unsettling => {
                self.disruptions.push(Disruption {
                    from: self.now,
                    to: end,
                })
            }
            Effect::Benign => {}
        }
        self.push(
            Step::Fault(FaultStep {
                fault: Fault {
                    kind,
                    devices,
                    duration,
                },
                hub,
            }),
            end,
        );
    }

    /// Room for a block of `wanted` starting now: its length, bounded so that the stretch it
    /// joins stays within `max_block`; `None` when there is no room.
    fn block(&mut self, wanted: Duration) -> Option<Duration> {
        let settle = self.v.settle;
        let now = self.now;
        let joined = self
            .blocks
            .last_mut()
            .filter(|b| b.to.saturating_add(settle) >= now);
        let start = joined.as_ref().map_or(now, |b| b.from);
        let end = now
            .saturating_add(wanted)
            .min(start.saturating_add(self.v.max_block));
        let d = whole_seconds(end.saturating_sub(now));
        if d.is_zero() {
            return None;
        }
        match joined {
            Some(b) => b.to = b.to.max(now + d),
            None => self.blocks.push(Disruption {
                from: now,
                to: now + d,
            }),
        }
        Some(d)
    }

    /// Whether a service step at `at` is fair: devices have had `settle` since every drop or
    /// block, and none comes within `service_window` after it.
    fn calm(&self, at: Duration) -> bool {
        self.disruptions
            .iter()
            .all(|d| at + self.v.service_window < d.from || d.to.saturating_add(self.v.settle) < at)
    }

    fn finish(self) -> Vec<Step> {
        let mut timeline: Vec<Step> = Vec::new();
        let mut busy = Duration::ZERO;
        for (at, until, step) in &self.out {
            let time = matches!(step, Step::Advance(_) | Step::Wait(_));
            let service = matches!(step, Step::C2d(_) | Step::Desired(_) | Step::Method(_));
            if service && !self.calm(*at) {
                continue;
            }
            if !time {
                busy = busy.max(*until);
            }
            match (timeline.last_mut(), step) {
                (
                    Some(Step::Advance(prev) | Step::Wait(prev)),
                    Step::Advance(d) | Step::Wait(d),
                ) => *prev += *d,
                _ => timeline.push(step.clone()),
            }
        }
        // Quiet time after the last step and after the last fault ended.
        let end = busy + self.v.quiet;
        if self.now < end {
            let more = end - self.now;
            match timeline.last_mut() {
                Some(Step::Advance(d) | Step::Wait(d)) => *d += more,
                _ => timeline.push(Step::Advance(more)),
            }
        }
        timeline
    }
}

/// Durations in whole seconds (what a person would write, and what the time ladders use).
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// A fault schedule: the timeline to play, the fleet sizes to play it against, and the run's seed.
#[derive(Clone, PartialEq)]
pub struct Schedule {
    /// The size of each entry of the scenario's `devices:`, in order (`None`: a single device).
    pub fleet: Vec<Option<usize>>,
    /// The timeline, in the scenario format; it ends in quiet time.
    pub timeline: Vec<Step>,
    /// The run's seed (fault selection by percentage, the sample devices' jitter).
    pub seed: u64,
}

impl Schedule {
    /// The scenario that plays this schedule: `base` with its fleets, timeline and seed.
    pub fn scenario(&self, base: &Scenario) -> Scenario {
        let mut s = base.clone();
        for (d, n) in s.devices.iter_mut().zip(&self.fleet) {
            if d.count.is_some() {
                d.count = *n;
            }
        }
        s.timeline = self.timeline.clone();
        s.seed = Some(self.seed);
        s
    }

    /// The virtual time the timeline lets pass.
    pub fn length(&self) -> Duration {
        self.timeline
            .iter()
            .map(|s| match s {
                Step::Advance(d) | Step::Wait(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
    }

    /// The number of devices it runs against.
    pub fn devices(&self) -> usize {
        self.fleet.iter().map(|n| n.unwrap_or(1)).sum()
    }

    /// Faults by catalogue name, for summaries.
    pub fn fault_names(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for s in &self.timeline {
            if let Step::Fault(f) = s {
                *out.entry(f.fault.kind.name()).or_default() += 1;
            }
        }
        out
    }
}

/// One line per step, as the scenario's YAML writes them: what proptest prints for a failing case.
impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Schedule (seed {}, fleet {:?}):", self.seed, self.fleet)?;
        for step in &self.timeline {
            let line = serde_json::to_string(step).unwrap_or_else(|_| step.describe());
            writeln!(f, "  - {line}")?;
        }
        Ok(())
    }
}
