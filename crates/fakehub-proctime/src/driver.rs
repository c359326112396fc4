//! The reference time driver: a discrete-event loop over the processes on a clock file.

use std::time::{Duration, Instant};

use crate::quiescence::Quiescence;
use crate::{ClockShm, Error};

/// Settings of [`run_until_with`].
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Real time slept between two looks while something is busy (virtual time flows meanwhile).
    pub poll_interval: Duration,
    /// A thread whose deadline has passed but which still sleeps is signalled again (its first wake
    /// signal can arrive just before it starts waiting) after this long, then after twice as long, …
    pub rewake_interval: Duration,
    /// … up to this interval.
    pub max_rewake_interval: Duration,
    /// Give up with [`Error::RealTimeBudget`] after this much real time.
    pub max_real: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            poll_interval: Duration::from_micros(100),
            rewake_interval: Duration::from_millis(1),
            max_rewake_interval: Duration::from_millis(100),
            max_real: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Times virtual time was skipped forward.
    pub skips: u64,
    /// Virtual time skipped, ns (the rest flowed with real time).
    pub skipped_virt_ns: i64,
    /// Quiescence checks made.
    pub checks: u64,
    /// Wake signals sent.
    pub wakes: u64,
    /// Real time the run took.
    pub real_elapsed: Duration,
    /// Virtual monotonic time at the end.
    pub end_virt_mono_ns: i64,
    /// The run ended because `stop` returned true (not because the target was reached).
    pub stopped: bool,
}

/// Runs the processes on `shm` until virtual monotonic time reaches `target_virt_mono_ns`: whenever
/// every thread is asleep, skips virtual time (monotonic and wall together) to the earliest deadline
/// (or the target) and wakes the threads whose deadline that is; otherwise sleeps a little real time,
/// during which virtual time flows at the anchor's speed. `extra_tids` are threads of the calling
/// process (the hub's runtime) that must be asleep too.
pub fn run_until(
    shm: &ClockShm,
    target_virt_mono_ns: i64,
    extra_tids: &[i32],
) -> Result<RunReport, Error> {
    run_until_with(
        shm,
        target_virt_mono_ns,
        extra_tids,
        &RunOptions::default(),
        || false,
    )
}

/// [`run_until`] with options and a `stop` check made before every step.
pub fn run_until_with(
    shm: &ClockShm,
    target_virt_mono_ns: i64,
    extra_tids: &[i32],
    options: &RunOptions,
    mut stop: impl FnMut() -> bool,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let mut report = RunReport::default();
    // re-wakes of threads that stay due: when the last was sent, and the current back-off
    let mut last_rewake = Instant::now();
    let mut rewake_after = options.rewake_interval;
    loop {
        let now = shm.now();
        report.end_virt_mono_ns = now.virt_mono_ns;
        report.real_elapsed = started.elapsed();
        if stop() {
            report.stopped = true;
            return Ok(report);
        }
        if now.virt_mono_ns >= target_virt_mono_ns {
            return Ok(report);
        }
        if let Some(budget) = options.max_real {
            if report.real_elapsed > budget {
                return Err(Error::RealTimeBudget {
                    budget,
                    reached_virt_mono_ns: now.virt_mono_ns,
                    target_virt_mono_ns,
                });
            }
        }
        report.checks = report.checks.saturating_add(1);
        let scan = shm.scan(extra_tids);
        match scan.quiescence {
            Quiescence::Idle {
                next_deadline_virt_mono_ns,
            } => {
                let to = next_deadline_virt_mono_ns
                    .map_or(target_virt_mono_ns, |d| d.min(target_virt_mono_ns));
                let before = shm.now().virt_mono_ns;
                let anchor = shm.skip_to(to)?;
                report.skips = report.skips.saturating_add(1);
                report.skipped_virt_ns = report
                    .skipped_virt_ns
                    .saturating_add(anchor.virt_mono_ns.saturating_sub(before).max(0));
                let woken = shm.wake_due(anchor.virt_mono_ns);
                report.wakes = report.wakes.saturating_add(woken as u64);
                last_rewake = Instant::now();
                rewake_after = options.rewake_interval;
            }
            Quiescence::Busy => {
                if scan.due.is_empty() {
                    rewake_after = options.rewake_interval;
                } else if last_rewake.elapsed() >= rewake_after {
                    for &(pid, tid) in &scan.due {
                        if shm.wake_thread(pid, tid) {
                            report.wakes = report.wakes.saturating_add(1);
                        }
                    }
                    last_rewake = Instant::now();
                    rewake_after = rewake_after
                        .saturating_mul(2)
                        .min(options.max_rewake_interval);
                }
                std::thread::sleep(options.poll_interval);
            }
        }
    }
}
