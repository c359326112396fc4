//! Shrinking a failing schedule to a minimal one: fewer steps, shorter (round) durations, simpler
//! selectors and fault parameters, smaller fleets — each change kept only when the schedule still
//! fails the same expectation. Passes repeat until none changes anything, so the result is minimal
//! in the sense that no single one of these changes keeps the failure.

use std::collections::HashSet;
use std::time::Duration;

use fakehub::faults::{Connack, DropPuback, Fault, FaultKind, OutageMode, Reset, Selector};

use super::schedule::{Schedule, Vocabulary};
use crate::scenario::{FaultStep, Step};

/// Round durations, shortest first: what shrunk durations are chosen from.
fn ladder() -> Vec<Duration> {
    let secs = [1u64, 2, 3, 5, 10, 15, 20, 30, 45];
    let mins = [
        1u64, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 45, 50, 55, 60, 62, 64, 66, 68, 70, 75,
        80, 90, 100, 120, 150, 180, 240, 300, 360, 480,
    ];
    secs.iter()
        .map(|s| Duration::from_secs(*s))
        .chain(mins.iter().map(|m| Duration::from_secs(m * 60)))
        .collect()
}

/// Fleet sizes, smallest first.
const FLEETS: [usize; 12] = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30];

/// Simpler versions of a fault's parameters, simplest first.
fn simpler(kind: &FaultKind) -> Vec<FaultKind> {
    let mut out = Vec::new();
    match kind {
        FaultKind::Reset(r) if r.result.is_some() => out.push(FaultKind::Reset(Reset::default())),
        FaultKind::Close(_) | FaultKind::Takeover(_) => {
            out.push(FaultKind::Reset(Reset::default()))
        }
        FaultKind::DropPuback(p) => {
            let plain = DropPuback::default();
            if *p != plain {
                out.push(FaultKind::DropPuback(plain));
                for (nth, count) in [(p.nth, None), (None, p.count)] {
                    let q = DropPuback {
                        nth,
                        count,
                        topic: None,
                    };
                    if q != *p && q != DropPuback::default() {
                        out.push(FaultKind::DropPuback(q));
                    }
                }
            }
        }
        FaultKind::Outage(o) if o.mode != OutageMode::Connack3 => {
            out.push(FaultKind::Outage(OutageMode::Connack3.into()))
        }
        FaultKind::Connack(Connack::Refuse { code, .. }) if *code != 3 => {
            out.push(FaultKind::Connack(Connack::Refuse {
                code: 3,
                result: None,
            }))
        }
        FaultKind::Latency(l) => {
            for (inbound, outbound) in [(Duration::ZERO, l.outbound), (l.inbound, Duration::ZERO)] {
                if (inbound, outbound) != (l.inbound, l.outbound) && !(inbound + outbound).is_zero()
                {
                    out.push(FaultKind::Latency(fakehub::faults::Latency {
                        inbound,
                        outbound,
                    }));
                }
            }
        }
        _ => {}
    }
    out
}

/// The shrinker: `fails` says whether a schedule still fails the same expectation (it runs it).
/// What the shrinker calls after each run: the runs so far and the current schedule.
type Progress<'a> = &'a mut dyn FnMut(usize, &Schedule);

pub struct Shrinker<'a, F: FnMut(&Schedule) -> bool> {
    v: &'a Vocabulary,
    fails: F,
    seen: HashSet<String>,
    /// Schedules run so far.
    pub runs: usize,
    max_runs: usize,
    current: Schedule,
    progress: Option<Progress<'a>>,
}

impl<'a, F: FnMut(&Schedule) -> bool> Shrinker<'a, F> {
    /// Shrink `start` (which fails), running at most `max_runs` schedules.
    pub fn new(v: &'a Vocabulary, start: Schedule, max_runs: usize, fails: F) -> Self {
        let mut seen = HashSet::new();
        seen.insert(format!("{start:?}"));
        Shrinker {
            v,
            fails,
            seen,
            runs: 0,
            max_runs,
            current: start,
            progress: None,
        }
    }

    /// Call `f` with the runs so far and the schedule each time a smaller one still fails.
    pub fn on_progress(mut self, f: &'a mut dyn FnMut(usize, &Schedule)) -> Self {
        self.progress = Some(f);
        self
    }

    /// Shrink until no change keeps the failure (or the runs are spent); the smallest failing
    /// schedule found.
    pub fn run(mut self) -> (Schedule, usize) {
        while self.runs < self.max_runs {
            let before = self.current.clone();
            self.remove_steps();
            self.shrink_fleets();
            self.simplify_steps();
            if self.current == before {
                break;
            }
        }
        (self.current, self.runs)
    }

    /// Try a proposal (fitted first); keep it when it still fails.
    fn attempt(&mut self, fleet: Vec<Option<usize>>, steps: Vec<Step>) -> bool {
        if self.runs >= self.max_runs {
            return false;
        }
        let candidate = self.v.fit(fleet, steps, self.current.seed);
        if !self.seen.insert(format!("{candidate:?}")) {
            return false;
        }
        self.runs += 1;
        if (self.fails)(&candidate) {
            if let Some(f) = self.progress.as_mut() {
                f(self.runs, &candidate);
            }
            self.current = candidate;
            true
        } else {
            false
        }
    }

    fn try_steps(&mut self, steps: Vec<Step>) -> bool {
        self.attempt(self.current.fleet.clone(), steps)
    }

    /// Remove chunks of steps, halves first, down to single steps.
    fn remove_steps(&mut self) {
        let mut size = self.current.timeline.len().div_ceil(2).max(1);
        loop {
            let mut start = 0;
            while start < self.current.timeline.len() {
                let steps = &self.current.timeline;
                let end = (start + size).min(steps.len());
                let mut fewer = steps[..start].to_vec();
                fewer.extend_from_slice(&steps[end..]);
                if !self.try_steps(fewer) {
                    start += size;
                }
            }
            if size == 1 {
                break;
            }
            size = size.div_ceil(2);
        }
    }

    /// Smaller fleets, by binary search over round sizes.
    fn shrink_fleets(&mut self) {
        for i in 0..self.current.fleet.len() {
            let Some(n) = self.current.fleet.get(i).copied().flatten() else {
                continue;
            };
            let sizes: Vec<usize> = FLEETS.iter().copied().filter(|s| *s < n).collect();
            self.search(&sizes, |s: &Schedule, size| {
                let mut fleet = s.fleet.clone();
                if let Some(slot) = fleet.get_mut(i) {
                    *slot = Some(size);
                }
                (fleet, s.timeline.clone())
            });
        }
    }

    /// The smallest of `values` (ascending, all below the current one) for which `apply` still
    /// fails, assuming smaller values fail less often: a binary search.
    fn search<T: Copy>(
        &mut self,
        values: &[T],
        apply: impl Fn(&Schedule, T) -> (Vec<Option<usize>>, Vec<Step>),
    ) {
        let (mut lo, mut hi) = (0, values.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (fleet, steps) = apply(&self.current, values[mid]);
            if self.attempt(fleet, steps) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
    }

    /// Shorter durations, simpler selectors and parameters, plainer service calls, step by step.
    fn simplify_steps(&mut self) {
        let mut i = 0;
        while i < self.current.timeline.len() {
            // (`fit` lengthens the last step again to the quiet end the schedule needs.)
            match self.current.timeline[i].clone() {
                Step::Advance(d) | Step::Wait(d) => self.shorter(i, d, |s, d| match s {
                    Step::Advance(_) => Step::Advance(d),
                    _ => Step::Wait(d),
                }),
                Step::Fault(f) => self.simpler_fault(i, f),
                Step::Method(m) if !m.payload.is_null() => {
                    let mut plain = m.clone();
                    plain.payload = serde_json::Value::Null;
                    self.replace(i, Step::Method(plain));
                }
                Step::Desired(d) if d.patch.as_object().is_some_and(|o| o.len() > 1) => {
                    let mut plain = d.clone();
                    plain.patch = serde_json::json!({ "unit": "C" });
                    self.replace(i, Step::Desired(plain));
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn replace(&mut self, i: usize, step: Step) -> bool {
        let mut steps = self.current.timeline.clone();
        match steps.get_mut(i) {
            Some(slot) => *slot = step,
            None => return false,
        }
        self.try_steps(steps)
    }

    /// A shorter duration for step `i` (made by `make` from the step and a duration).
    fn shorter(&mut self, i: usize, d: Duration, make: impl Fn(&Step, Duration) -> Step) {
        let values: Vec<Duration> = ladder().into_iter().filter(|l| *l < d).collect();
        self.search(&values, |s, d| {
            let mut steps = s.timeline.clone();
            if let Some(slot) = steps.get_mut(i) {
                *slot = make(slot, d);
            }
            (s.fleet.clone(), steps)
        });
    }

    fn simpler_fault(&mut self, i: usize, step: FaultStep) {
        // The fault changes; which hub it acts on stays.
        let on = |fault: Fault| {
            Step::Fault(FaultStep {
                fault,
                hub: step.hub.clone(),
            })
        };
        let f = step.fault.clone();
        if f.devices != Selector::All {
            let all = Fault {
                devices: Selector::All,
                ..f.clone()
            };
            if !self.replace(i, on(all)) {
                if let Selector::Ids(ids) = &f.devices {
                    if ids.len() > 1 {
                        let one = Fault {
                            devices: Selector::Ids(ids[..1].to_vec()),
                            ..f.clone()
                        };
                        self.replace(i, on(one));
                    }
                }
            }
        }
        for kind in simpler(&f.kind) {
            let Some(Step::Fault(now)) = self.current.timeline.get(i).cloned() else {
                return;
            };
            if self.replace(i, on(Fault { kind, ..now.fault })) {
                break;
            }
        }
        if let Some(Step::Fault(now)) = self.current.timeline.get(i).cloned() {
            if let Some(d) = now.fault.duration {
                self.shorter(i, d, |s, d| match s {
                    Step::Fault(f) => Step::Fault(FaultStep {
                        fault: Fault {
                            duration: Some(d),
                            ..f.fault.clone()
                        },
                        hub: f.hub.clone(),
                    }),
                    other => other.clone(),
                });
            }
        }
    }
}
