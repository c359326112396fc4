//! Generating schedules: proptest strategies over the whole fault catalogue, selectors, durations,
//! one-shot and lasting faults, time steps and service steps. [`schedules`] is what firmware tests
//! use in `proptest!` and what `fakehub explore` draws from with a seeded runner; every value goes
//! through [`Vocabulary::fit`], so proptest's own shrinking only ever produces runnable schedules.

use std::time::Duration;

use fakehub::faults::{
    Blackhole, ClockSkew, Close, Connack, DelaySuback, Disable, DpsAssigning, DpsDisabled, DpsDrop,
    DpsError, DpsThrottle, DropPingresp, DropPuback, Fault, FaultKind, HalfOpen, HubDown, Latency,
    MassDrop, Outage, OutageMode, Reset, Selector, SessionLoss, Takeover, Throttle,
};
use proptest::prelude::*;
use proptest::strategy::{NewTree, ValueTree};
use proptest::test_runner::TestRunner;

use super::schedule::{Schedule, Vocabulary, MAX_LATENCY, MAX_SKEW, SLOW_ACK};
use crate::scenario::{C2dStep, DesiredStep, DeviceRef, FaultStep, MethodStep, Step};

fn secs(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> + Clone {
    range.prop_map(Duration::from_secs)
}

fn millis(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> + Clone {
    range.prop_map(Duration::from_millis)
}

/// Time steps: mostly seconds to minutes, sometimes past a token's hour.
fn time_step() -> impl Strategy<Value = Step> {
    let d = prop_oneof![
        4 => secs(1..=120),
        3 => secs(120..=20 * 60),
        1 => secs(20 * 60..=80 * 60),
    ];
    (d, prop::bool::weighted(0.2)).prop_map(|(d, wait)| {
        if wait {
            Step::Wait(d)
        } else {
            Step::Advance(d)
        }
    })
}

/// Every fault of the catalogue but `rotate_key` (see [`super::schedule`]), with parameters in the
/// ranges `fit` keeps.
pub fn fault_kind() -> impl Strategy<Value = FaultKind> {
    let skew = MAX_SKEW.as_secs();
    let latency = u64::try_from(MAX_LATENCY.as_millis()).unwrap_or(100);
    let slow = SLOW_ACK.as_secs();
    prop_oneof![
        3 => Just(FaultKind::Reset(Reset::default())),
        1 => Just(FaultKind::Close(Close::default())),
        2 => Just(FaultKind::Blackhole(Blackhole {})),
        1 => Just(FaultKind::HalfOpen(HalfOpen {})),
        2 => Just(FaultKind::SessionLoss(SessionLoss {})),
        1 => Just(FaultKind::DropPingresp(DropPingresp {})),
        2 => (prop::option::of(1u32..=3), prop::option::of(1u32..=3))
            .prop_map(|(nth, count)| FaultKind::DropPuback(DropPuback { nth, topic: None, count })),
        1 => secs(1..=slow).prop_map(|delay| FaultKind::DelaySuback(DelaySuback { delay })),
        1 => (millis(0..=latency), millis(0..=latency))
            .prop_map(|(inbound, outbound)| FaultKind::Latency(Latency { inbound, outbound })),
        2 => prop_oneof![
            secs(1..=slow).prop_map(|delay| Connack::Delay { delay }),
            Just(Connack::Withhold),
            (1u8..=5).prop_map(|code| Connack::Refuse { code, result: None }),
        ]
        .prop_map(FaultKind::Connack),
        3 => prop_oneof![
            Just(OutageMode::RefuseTcp),
            Just(OutageMode::Connack3),
            Just(OutageMode::Hang),
        ]
        .prop_map(|mode| FaultKind::Outage(Outage { mode })),
        2 => any::<bool>().prop_map(|rst| FaultKind::MassDrop(MassDrop { rst })),
        1 => (1u32..=20, secs(1..=20))
            .prop_map(|(per_second, shaping)| FaultKind::Throttle(Throttle { per_second, shaping })),
        1 => Just(FaultKind::Takeover(Takeover {})),
        2 => Just(FaultKind::Disable(Disable {})),
        1 => secs(1..=skew).prop_map(|behind| FaultKind::ClockSkew(ClockSkew { behind })),
    ]
}

/// The provisioning service's faults (for scenarios with `dps:`), with parameters a well-behaved
/// device can wait out: `retry-after`s and holds within a minute, 5xx errors, a few dropped
/// requests, a disabled enrollment, a hub down (`fit` bounds how long each lasts).
pub fn dps_fault_kind() -> impl Strategy<Value = FaultKind> {
    prop_oneof![
        2 => (secs(1..=30), prop::option::of(1u32..=60)).prop_map(|(retry_after, per_minute)| {
            FaultKind::DpsThrottle(DpsThrottle { retry_after, per_minute })
        }),
        2 => (
            prop::sample::select(vec![500u16, 503]),
            prop::option::of(secs(1..=30)),
            prop::option::of(1u32..=5),
        )
            .prop_map(|(status, retry_after, count)| {
                FaultKind::DpsError(DpsError { status, retry_after, op: None, count })
            }),
        2 => (secs(1..=60), secs(1..=10)).prop_map(|(hold, retry_after)| {
            FaultKind::DpsAssigning(DpsAssigning { hold, retry_after })
        }),
        1 => (prop::option::of(1u32..=3), any::<bool>())
            .prop_map(|(count, rst)| FaultKind::DpsDrop(DpsDrop { op: None, count, rst })),
        1 => Just(FaultKind::DpsDisabled(DpsDisabled {})),
        2 => prop_oneof![Just(OutageMode::Connack3), Just(OutageMode::RefuseTcp)]
            .prop_map(|mode| FaultKind::HubDown(HubDown { mode })),
    ]
}

/// Which devices: every one, some ids, a pattern, or a share.
fn selector(v: &Vocabulary) -> BoxedStrategy<Selector> {
    let ids = v.all_ids();
    let mut globs: Vec<String> = vec!["*".to_owned()];
    for e in &v.entries {
        match e.count {
            Some(_) => {
                globs.push(format!("{}-*", e.id));
                globs.push(format!("{}-1*", e.id));
            }
            None => globs.push(e.id.clone()),
        }
    }
    let most = ids.len().clamp(1, 3);
    prop_oneof![
        4 => Just(Selector::All),
        2 => prop::sample::subsequence(ids, 1..=most).prop_map(Selector::Ids),
        1 => prop::sample::select(globs).prop_map(Selector::Glob),
        1 => (1u8..=100).prop_map(Selector::Percent),
    ]
    .boxed()
}

/// A fault: one-shot faults have no duration; lasting ones mostly end by themselves (`fit` gives
/// one to those that must).
fn fault(v: &Vocabulary) -> impl Strategy<Value = Step> {
    let longest = v.max_block.as_secs().max(1);
    let duration = prop::option::weighted(
        0.8,
        prop_oneof![
            3 => secs(1..=longest),
            1 => secs(1..=30 * 60),
        ],
    );
    let kinds = if v.dps {
        prop_oneof![3 => fault_kind(), 1 => dps_fault_kind()].boxed()
    } else {
        fault_kind().boxed()
    };
    // `hub_down` is aimed at one hub of several; every other fault acts on every hub.
    let hub = if v.hubs.len() > 1 {
        prop::sample::select(v.hubs.clone()).prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    (kinds, selector(v), duration, hub).prop_map(|(kind, devices, duration, hub)| {
        let hub = hub.filter(|_| matches!(kind, FaultKind::HubDown(_)));
        Step::Fault(FaultStep {
            fault: Fault {
                kind,
                devices,
                duration,
            },
            hub,
        })
    })
}

/// What the service side asks: a direct method, a cloud-to-device message, a desired patch.
fn service(v: &Vocabulary) -> BoxedStrategy<Step> {
    let device = prop::sample::select(v.all_ids());
    let method = (
        device.clone(),
        prop::sample::select(vec!["reboot", "status", "setInterval"]),
        prop::option::of(0u32..=60),
    )
        .prop_map(|(device, name, arg)| {
            Step::Method(MethodStep {
                device,
                name: name.to_owned(),
                payload: arg.map_or(
                    serde_json::Value::Null,
                    |a| serde_json::json!({ "delay": a }),
                ),
                timeout: None,
            })
        });
    let c2d = (device.clone(), 0u32..1000).prop_map(|(device, n)| {
        Step::C2d(C2dStep {
            device,
            body: format!("message {n}"),
            message_id: None,
            properties: Default::default(),
        })
    });
    let desired = (device, 1u32..=600, any::<bool>()).prop_map(|(device, interval, celsius)| {
        Step::Desired(DesiredStep {
            device,
            patch: serde_json::json!({
                "telemetry_interval": interval,
                "unit": if celsius { "C" } else { "F" },
            }),
        })
    });
    prop_oneof![method, c2d, desired].boxed()
}

/// A device process crashing or stopping (restarted at once).
fn bounce(v: &Vocabulary) -> Option<BoxedStrategy<Step>> {
    let processes: Vec<String> = v
        .entries
        .iter()
        .filter(|e| e.process)
        .flat_map(|e| match e.count {
            Some(n) => (0..n).map(|i| format!("{}-{i}", e.id)).collect(),
            None => vec![e.id.clone()],
        })
        .collect();
    if processes.is_empty() {
        return None;
    }
    Some(
        (prop::sample::select(processes), any::<bool>())
            .prop_map(|(device, crash)| {
                let r = DeviceRef { device };
                if crash {
                    Step::Crash(r)
                } else {
                    Step::Stop(r)
                }
            })
            .boxed(),
    )
}

/// One proposed step.
fn step(v: &Vocabulary) -> BoxedStrategy<Step> {
    let mut choices: Vec<(u32, BoxedStrategy<Step>)> =
        vec![(4, time_step().boxed()), (5, fault(v).boxed())];
    if v.service {
        choices.push((2, service(v)));
    }
    if let Some(b) = bounce(v) {
        choices.push((1, b));
    }
    proptest::strategy::Union::new_weighted(choices).boxed()
}

/// A fleet size that starts at the scenario's and shrinks towards one device.
#[derive(Debug, Clone, Copy)]
struct FleetSize(Option<usize>);

#[derive(Debug, Clone, Copy)]
struct FleetTree(Option<proptest::num::usize::BinarySearch>);

impl Strategy for FleetSize {
    type Tree = FleetTree;
    type Value = Option<usize>;

    fn new_tree(&self, _runner: &mut TestRunner) -> NewTree<Self> {
        Ok(FleetTree(self.0.map(|n| {
            proptest::num::usize::BinarySearch::new(n.saturating_sub(1))
        })))
    }
}

impl ValueTree for FleetTree {
    type Value = Option<usize>;

    fn current(&self) -> Option<usize> {
        self.0.as_ref().map(|b| b.current() + 1)
    }

    fn simplify(&mut self) -> bool {
        self.0.as_mut().is_some_and(|b| b.simplify())
    }

    fn complicate(&mut self) -> bool {
        self.0.as_mut().is_some_and(|b| b.complicate())
    }
}

/// Fault schedules for a scenario's devices: up to `max_steps` proposed steps (faults, time,
/// service calls, process crashes), the scenario's fleets, and a run seed, made runnable and fair
/// by [`Vocabulary::fit`]. Proptest shrinks them to fewer steps, shorter durations, simpler
/// selectors and smaller fleets.
pub fn schedules(v: &Vocabulary) -> impl Strategy<Value = Schedule> {
    let fleet: Vec<FleetSize> = v.entries.iter().map(|e| FleetSize(e.count)).collect();
    let steps = prop::collection::vec(step(v), 0..=v.max_steps);
    let v = v.clone();
    (fleet, steps, any::<u64>().no_shrink())
        .prop_map(move |(fleet, steps, seed)| v.fit(fleet, steps, seed))
}
