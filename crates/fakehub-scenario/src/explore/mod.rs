//! Exploring fault schedules: generate timelines from the whole fault catalogue for a scenario's
//! hub, devices and expectations, run each against the devices, stop at the first schedule whose
//! expectations fail, shrink it to a minimal one that still fails the same expectation, and write
//! that as a standalone scenario (`fakehub explore`). The same parts serve firmware tests that
//! write `proptest! { … }` over fault schedules: [`schedules`] is the strategy and [`check`] runs
//! one schedule. See docs/EXPLORE.md.
//!
//! * [`schedule`] — a schedule, and the rules that keep every schedule runnable and fair;
//! * [`generate`] — the proptest strategies;
//! * [`trial`] — running and judging one schedule;
//! * [`shrink`] — shrinking a failing schedule;
//! * [`mod@write`] — writing the minimal scenario;
//! * [`progress`] — what `fakehub explore` shows while it runs.

pub mod generate;
pub mod progress;
pub mod schedule;
pub mod shrink;
pub mod trial;
pub mod write;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio_util::sync::CancellationToken;

pub use generate::{fault_kind, schedules};
pub use schedule::{Entry, Schedule, Vocabulary};
pub use shrink::Shrinker;
pub use trial::{check, run_schedule, Target};

use crate::runner::{Outcome, RunOptions};
use crate::scenario::Scenario;

/// How to explore.
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many schedules.
    pub runs: usize,
    /// The seed every schedule (and its run's seed) is drawn from.
    pub seed: u64,
    /// At most this much wall time for the search (shrinking a failure found in time goes on).
    pub budget: Option<Duration>,
    /// Bugs given to every sample device. The well-behaved device then runs each failing
    /// schedule too: a schedule counts only when it passes the broken rule (else the schedule,
    /// not the bug, is what fails).
    pub sample_bugs: Vec<String>,
    /// At most this many runs to shrink a failure.
    pub max_shrink_runs: usize,
    /// Where device processes keep their files while they run (default: the system's temporary
    /// directory).
    pub scratch: Option<PathBuf>,
    /// Stops the exploration (a failure being shrunk is written as far as it got).
    pub stop: Option<CancellationToken>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 200,
            seed: 0,
            budget: None,
            sample_bugs: Vec::new(),
            max_shrink_runs: 400,
            scratch: None,
            stop: None,
        }
    }
}

/// What happens while exploring, for progress displays.
#[derive(Debug)]
pub enum Event<'a> {
    /// A schedule ran.
    Tried {
        runs: usize,
        virtual_time: Duration,
        elapsed: Duration,
    },
    /// Schedule `index` broke `target`, but the well-behaved sample device breaks it too: the
    /// schedule asks too much, the bug is not what fails (only with `sample_bugs`).
    Rejected { index: usize, target: &'a Target },
    /// Schedule `index` (of `steps` steps) broke `target`; shrinking starts.
    Found {
        index: usize,
        steps: usize,
        target: &'a Target,
    },
    /// A smaller schedule still fails.
    Shrunk {
        runs: usize,
        steps: usize,
        length: Duration,
    },
}

/// A failing schedule and its minimal form.
#[derive(Debug, Clone)]
pub struct Found {
    /// Which schedule of the search (1-based).
    pub index: usize,
    pub original: Schedule,
    pub minimal: Schedule,
    /// The broken expectation, as the minimal schedule breaks it.
    pub target: Target,
    pub shrink_runs: usize,
    pub shrink_time: Duration,
}

/// What an exploration did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Schedules the search ran (not counting the well-behaved device's runs or shrinking).
    pub runs: usize,
    /// The virtual time those runs covered.
    pub virtual_time: Duration,
    pub search_time: Duration,
    /// Schedules that broke a rule the well-behaved sample device breaks too.
    pub rejected: Vec<(usize, Schedule, Target)>,
    pub found: Option<Found>,
    pub interrupted: bool,
}

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(b"fakehub!");
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// The schedules `explore` tries for `base` with `seed`, in order: the search is reproducible from
/// its seed.
pub fn generator(base: &Scenario, seed: u64) -> impl FnMut() -> anyhow::Result<Schedule> {
    let strategy = schedules(&Vocabulary::of(base));
    let mut runner = TestRunner::new_with_rng(Config::default(), rng(seed));
    move || {
        strategy
            .new_tree(&mut runner)
            .map(|t| t.current())
            .map_err(|e| anyhow::anyhow!("cannot generate a schedule: {e}"))
    }
}

/// Explore `base`: run generated schedules until one breaks an expectation, shrink it, and report
/// (nothing is written; see [`write_minimal`]).
pub fn explore(
    base: &Scenario,
    opts: &Options,
    on: &mut dyn FnMut(Event<'_>),
) -> anyhow::Result<Report> {
    let vocab = Vocabulary::of(base);
    let mut next = generator(base, opts.seed);
    let started = Instant::now();
    let mut report = Report::default();
    let bugs = RunOptions {
        seed: None,
        sample_bugs: opts.sample_bugs.clone(),
        draw: false,
    };
    let well = RunOptions::default();
    let contrast = !opts.sample_bugs.is_empty();
    let stopped = || opts.stop.as_ref().is_some_and(|s| s.is_cancelled());
    let run = |s: &Schedule, with: &RunOptions| -> anyhow::Result<Outcome> {
        run_schedule(base, s, with, opts.scratch.as_deref(), opts.stop.clone())
    };
    for index in 1..=opts.runs {
        if stopped() || opts.budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        let schedule = next()?;
        let outcome = run(&schedule, &bugs)?;
        report.runs += 1;
        report.virtual_time += outcome.virtual_time;
        report.search_time = started.elapsed();
        if outcome.interrupted {
            report.interrupted = true;
            break;
        }
        on(Event::Tried {
            runs: report.runs,
            virtual_time: report.virtual_time,
            elapsed: report.search_time,
        });
        let broken = Target::all_of(&outcome);
        if broken.is_empty() {
            continue;
        }
        let target = if contrast {
            let reference = run(&schedule, &well)?;
            let kept = broken.iter().find(|t| t.kept_in(&reference)).cloned();
            match kept {
                Some(t) => t,
                None => {
                    for t in broken {
                        on(Event::Rejected { index, target: &t });
                        report.rejected.push((index, schedule.clone(), t));
                    }
                    continue;
                }
            }
        } else {
            broken
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("no failure"))?
        };
        on(Event::Found {
            index,
            steps: schedule.timeline.len(),
            target: &target,
        });
        let shrink_started = Instant::now();
        let mut last = target.clone();
        let fails = |candidate: &Schedule| -> bool {
            if stopped() {
                return false;
            }
            let Ok(o) = run(candidate, &bugs) else {
                return false;
            };
            let Some(v) = target.broken_in(&o) else {
                return false;
            };
            if contrast && !run(candidate, &well).is_ok_and(|r| target.kept_in(&r)) {
                return false;
            }
            last = Target {
                verdict: v,
                ..target.clone()
            };
            true
        };
        let mut shown = |runs: usize, s: &Schedule| {
            on(Event::Shrunk {
                runs,
                steps: s.timeline.len(),
                length: s.length(),
            })
        };
        let (minimal, shrink_runs) =
            Shrinker::new(&vocab, schedule.clone(), opts.max_shrink_runs, fails)
                .on_progress(&mut shown)
                .run();
        report.interrupted = stopped();
        report.found = Some(Found {
            index,
            original: schedule,
            minimal,
            target: last,
            shrink_runs,
            shrink_time: shrink_started.elapsed(),
        });
        return Ok(report);
    }
    report.interrupted |= stopped();
    Ok(report)
}

/// Write `found`'s minimal schedule as `DIR/<name>-minimal.yaml`, checked as `fakehub validate`
/// checks files; its path.
pub fn write_minimal(
    dir: &Path,
    base: &Scenario,
    found: &Found,
    provenance: &write::Provenance,
) -> anyhow::Result<PathBuf> {
    let scenario = write::minimal_scenario(base, &found.minimal, &found.target);
    let path = dir.join(format!("{}.yaml", scenario.name));
    let header = write::header(provenance, &found.minimal, &found.target, &path);
    let yaml = write::to_yaml(&scenario, &header)?;
    crate::scenario::parse(&path, &yaml)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(&path, yaml)?;
    Ok(path)
}
