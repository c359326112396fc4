//! Running one schedule against a scenario's hub and devices, and judging it: what the explorer
//! does thousands of times, and what a firmware test calls inside `proptest!`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fakehub_assert::Verdict;
use proptest::test_runner::TestCaseError;
use tokio_util::sync::CancellationToken;

use super::schedule::Schedule;
use crate::runner::{self, describe_expectation, Execution, Outcome, Regime, RunOptions};
use crate::scenario::Scenario;

/// Run `schedule` against `base`'s hub, devices and expectations, with `opts`' bugs (its seed is
/// the schedule's), and judge it: the run `fakehub run` makes of `schedule.scenario(base)`,
/// without writing anything. Device processes get a scratch directory of their own under `scratch`
/// (or the system's temporary directory), removed afterwards.
pub fn run_schedule(
    base: &Scenario,
    schedule: &Schedule,
    opts: &RunOptions,
    scratch: Option<&Path>,
    stop: Option<CancellationToken>,
) -> anyhow::Result<Outcome> {
    let scenario = schedule.scenario(base);
    let opts = RunOptions {
        seed: Some(schedule.seed),
        sample_bugs: opts.sample_bugs.clone(),
        draw: false,
    };
    let dir = (Regime::of(&scenario) != Regime::Simulated).then(|| scratch_dir(scratch));
    let how = Execution {
        out: dir.as_deref(),
        narrate: false,
        stop,
    };
    let outcome = runner::execute(&scenario, &opts, &how);
    if let Some(d) = &dir {
        let _ = std::fs::remove_dir_all(d);
    }
    outcome
}

/// A fresh directory for one run's files.
fn scratch_dir(under: Option<&Path>) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = under.map_or_else(std::env::temp_dir, Path::to_owned);
    base.join(format!("fakehub-explore-{}-{n}", std::process::id()))
}

/// For `proptest!`: run `schedule` against `base` (see [`run_schedule`]) and fail the test case,
/// naming the broken rules, when any expectation is judged broken. A rule that cannot be judged is
/// not a failure.
pub fn check(base: &Scenario, schedule: &Schedule, opts: &RunOptions) -> Result<(), TestCaseError> {
    let outcome = run_schedule(base, schedule, opts, None, None)
        .map_err(|e| TestCaseError::fail(format!("the run did not complete: {e:#}")))?;
    let broken: Vec<String> = outcome
        .failures()
        .map(|(text, v)| format!("{text}\n  {v}"))
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(broken.join("\n")))
    }
}

/// The expectation a failing schedule broke: its YAML entry and rule, and how it failed first.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The expectation's entry, as `describe_expectation` writes it.
    pub expectation: String,
    pub rule: String,
    /// The first failing verdict (device, numbers, events around it).
    pub verdict: Verdict,
}

impl Target {
    /// The expectations `outcome` judged broken, in the scenario's order, one per entry.
    pub fn all_of(outcome: &Outcome) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        for (text, v) in outcome.failures() {
            if !out.iter().any(|t| t.expectation == *text) {
                out.push(Target {
                    expectation: text.clone(),
                    rule: v.rule.clone(),
                    verdict: v.clone(),
                });
            }
        }
        out
    }

    /// Whether `outcome` breaks this expectation again (for any device).
    pub fn broken_in(&self, outcome: &Outcome) -> Option<Verdict> {
        outcome
            .failures()
            .find(|(text, _)| *text == self.expectation)
            .map(|(_, v)| v.clone())
    }

    /// Whether `outcome` judged this expectation and found it kept, for every device.
    pub fn kept_in(&self, outcome: &Outcome) -> bool {
        let mine: Vec<&Verdict> = outcome
            .verdicts
            .iter()
            .filter(|(text, _)| *text == self.expectation)
            .map(|(_, v)| v)
            .collect();
        !outcome.interrupted && !mine.is_empty() && mine.iter().all(|v| v.judged && v.passed)
    }

    /// The scenario's expectation this target stands for.
    pub fn expectation_of<'a>(
        &self,
        base: &'a Scenario,
    ) -> Option<&'a fakehub_assert::Expectation> {
        base.expect
            .iter()
            .find(|e| describe_expectation(e) == self.expectation)
    }
}
