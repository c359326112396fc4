//! Device processes on the hub's clock: the time preload, its clock file, and the time driver that
//! skips the time every party spends idle.
//!
//! A process started with [`ProcessTime::env`] reads the hub's virtual clock for its wall and
//! monotonic time, and every sleep, timeout and timed wait it makes follows virtual time (see the
//! `fakehub-proctime` crate). The driver, a thread of its own, looks at every thread of the hub's
//! runtime ([`ThreadSet`]) and of the device processes: while any is busy, virtual time flows at
//! real speed; when all sleep, it moves the hub's clock and the processes' clock together to the
//! earliest deadline any of them waits for (the hub's own timers included) and wakes the threads
//! waiting for it. A 65-minute renewal `setTimeout` of a Node app then fires at 65 virtual minutes,
//! a few hundred real milliseconds after it was set.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fakehub_proctime::{Anchor, ClockShm, Limits, Preload, Quiescence, Woken};

use crate::clock::VirtualClock;

pub use fakehub_proctime::Error as ProcessTimeError;

/// The threads of the hub's runtime: the driver waits for all of them to sleep before it skips.
/// Register each worker from the runtime's `on_thread_start`, and the thread that drives the
/// top-level future.
#[derive(Clone, Default)]
pub struct ThreadSet {
    tids: Arc<Mutex<Vec<i32>>>,
}

impl ThreadSet {
    /// Count the calling thread in.
    pub fn register_current(&self) {
        let tid = fakehub_proctime::current_tid();
        let mut tids = self.tids.lock().unwrap_or_else(|p| p.into_inner());
        if !tids.contains(&tid) {
            tids.push(tid);
        }
    }

    fn snapshot(&self) -> Vec<i32> {
        self.tids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How often the driver looks while something is busy (virtual time flows meanwhile).
const POLL: Duration = Duration::from_micros(100);
/// While a party stays busy without a pause (a tight retry loop, a CPU-bound start-up), time flows
/// faster the longer it lasts: real speed for the first [`BUSY_STEPS`]`[0]`, then each step's speed
/// from its threshold on. Short bursts — a TLS handshake, a reconnect — keep real speed, so they are
/// timed as they are; a device that never pauses cannot hold a run at real speed for minutes.
///
/// The top speed is what a tight loop's own timing is stretched by: a device that retries without
/// backoff makes an attempt every 5–10 ms of real time over loopback (debug builds, this 2-core VM),
/// so at 50× its retries are 0.25–0.5 s apart in virtual time, well inside the 1 s under which the
/// field diagnosis calls retries a reconnect storm. At 200× (before) they were 1–2 s apart: the
/// hammering looked like a backoff of a second, and the field diagnosis of the run's own records
/// no longer saw a reconnect storm. (20× would stretch less, but a 4-minute outage hammered without
/// backoff then took 12 s of real time, and the field round trip, which runs it several times, 2–3
/// minutes.)
const BUSY_STEPS: [(Duration, f64); 2] = [
    (Duration::from_millis(50), 10.0),
    (Duration::from_millis(300), 50.0),
];
/// The speed while something has been busy without a pause for `busy_for`: the run's own speed
/// until the first of [`BUSY_STEPS`], then that of the last step reached.
fn busy_speed(base: f64, busy_for: Duration) -> f64 {
    BUSY_STEPS
        .iter()
        .rev()
        .find(|(after, _)| busy_for >= *after)
        .map_or(base, |(_, k)| base * k)
}

/// A thread whose deadline passed but that still sleeps is woken again after this long, doubling.
const REWAKE: Duration = Duration::from_millis(1);
const MAX_REWAKE: Duration = Duration::from_millis(100);

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, ns)
}

/// What the driver did (for benchmarks and reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverReport {
    pub skips: u64,
    /// Virtual time skipped (the rest flowed with real time).
    pub skipped: Duration,
    pub wakes: u64,
    /// Looks that found something busy.
    pub busy_looks: u64,
    /// Real time spent looking.
    pub looking: Duration,
}

/// The time preload and driver of one run.
pub struct ProcessTime {
    shm: Arc<ClockShm>,
    preload: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    holds: Arc<AtomicUsize>,
    driver: Option<JoinHandle<DriverReport>>,
}

/// While alive, the driver skips nothing (see [`ProcessTime::hold`]).
pub struct Hold {
    holds: Arc<AtomicUsize>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ProcessTime {
    /// Write the preload and the clock file into `dir`, anchor the file to `clock`, and start the
    /// driver. Only the driver may move `clock` from now on.
    pub fn start(
        clock: &VirtualClock,
        dir: &Path,
        hub_threads: ThreadSet,
    ) -> Result<ProcessTime, ProcessTimeError> {
        std::fs::create_dir_all(dir).map_err(|source| ProcessTimeError::Io {
            what: "cannot create",
            path: dir.to_owned(),
            source,
        })?;
        // Absolute: LD_PRELOAD and the clock file's path go to the processes, which may change
        // directory (pyenv's shims do) and would then run on real time, unseen by the preload.
        let dir = &std::fs::canonicalize(dir).map_err(|source| ProcessTimeError::Io {
            what: "cannot resolve",
            path: dir.to_owned(),
            source,
        })?;
        let preload = Preload::write_to(dir)?;
        let shm = Arc::new(ClockShm::create(dir.join("clock"), Limits::default())?);
        // The processes' monotonic clock starts where the machine's is; their wall clock is the
        // hub's; both move with the hub's from here on.
        let state = clock.state();
        let real = fakehub_proctime::real_mono_ns();
        shm.publish(Anchor {
            real_mono_ns: real,
            virt_mono_ns: real,
            virt_wall_ns: unix_ns(state.now),
            speed: state.speed,
        })?;
        let mono_minus_elapsed = real.saturating_sub(ns(state.elapsed));
        let stop = Arc::new(AtomicBool::new(false));
        let holds = Arc::new(AtomicUsize::new(0));
        let driver = {
            let (shm, clock, stop, held) =
                (shm.clone(), clock.clone(), stop.clone(), holds.clone());
            std::thread::Builder::new()
                .name("fakehub-time".into())
                .spawn(move || {
                    let gates = Gates {
                        stop: &stop,
                        holds: &held,
                    };
                    drive(&shm, &clock, &hub_threads, mono_minus_elapsed, gates)
                })
                .map_err(|source| ProcessTimeError::Io {
                    what: "cannot start the time driver for",
                    path: dir.to_owned(),
                    source,
                })?
        };
        Ok(ProcessTime {
            shm,
            preload,
            stop,
            holds,
            driver: Some(driver),
        })
    }

    /// Skip nothing until the guard is dropped: for what the hub does outside its runtime's view,
    /// such as starting a process (the runner's thread then waits in `fork`/`exec`, and the child is
    /// not counted until it is registered).
    pub fn hold(&self) -> Hold {
        self.holds.fetch_add(1, Ordering::AcqRel);
        Hold {
            holds: self.holds.clone(),
        }
    }

    /// The environment a device process needs (LD_PRELOAD and the clock file).
    pub fn env(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        self.shm.env(&self.preload)
    }

    /// Count a process just spawned (before its first instruction runs the preload).
    pub fn register(&self, pid: i32) {
        let _ = self.shm.register_process(pid);
    }

    /// Stop the driver; what it did.
    pub fn stop(mut self) -> DriverReport {
        self.stop.store(true, Ordering::Release);
        self.driver
            .take()
            .and_then(|d| d.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ProcessTime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
    }
}

/// Change the speed of the hub's clock and of the processes' clock together. The processes' clock is
/// re-anchored on the hub's reading, taken inside the anchor's write section (at speed 200 a few
/// microseconds between two readings are a virtual millisecond), so the two never drift apart
/// (never backwards, though: a monotonic clock must not go back).
fn set_both_speeds(shm: &ClockShm, clock: &VirtualClock, mono_minus_elapsed: i64, speed: f64) {
    clock.set_speed(speed);
    let _ = shm.rebase(|cur| {
        let state = clock.state();
        let hub_mono = ns(state.elapsed).saturating_add(mono_minus_elapsed);
        Anchor {
            virt_mono_ns: cur.virt_mono_ns.max(hub_mono),
            virt_wall_ns: cur.virt_wall_ns.max(unix_ns(state.now)),
            speed,
            ..cur
        }
    });
}

/// After a skip, how often the driver looks at the woken threads' slots, and for how long at most,
/// before it scans.
const SETTLE_POLL: Duration = Duration::from_micros(10);
const SETTLE_MAX: Duration = Duration::from_millis(1);

/// Waits (watching the clock file only: a few loads) until every thread a skip woke has left its wait
/// and waits again, for at most [`SETTLE_MAX`]: a scan before that would find it busy, and the driver
/// would sleep [`POLL`] and scan again. This decides nothing: the scan that follows does (the threads
/// those woke in turn, or a thread that now blocks in something not wrapped, are its business).
fn settle(shm: &ClockShm, woken: &Woken, gates: Gates<'_>) {
    if woken.is_empty() {
        return;
    }
    let start = Instant::now();
    while !shm.rewaited(woken)
        && start.elapsed() < SETTLE_MAX
        && !gates.stop.load(Ordering::Acquire)
    {
        std::thread::sleep(SETTLE_POLL);
    }
}

/// What stops the driver, and what holds it back.
#[derive(Clone, Copy)]
struct Gates<'a> {
    stop: &'a AtomicBool,
    holds: &'a AtomicUsize,
}

/// The driver loop: skip idle time, wake the threads whose deadline came, until stopped.
fn drive(
    shm: &ClockShm,
    clock: &VirtualClock,
    hub: &ThreadSet,
    mono_minus_elapsed: i64,
    gates: Gates<'_>,
) -> DriverReport {
    let mut report = DriverReport::default();
    // Sleeps of POLL, not POLL + the default 50 µs of timer slack.
    fakehub_proctime::set_current_timer_slack(1_000);
    let mut last_rewake = Instant::now();
    let mut rewake_after = REWAKE;
    let base_speed = clock.speed();
    let mut busy_since: Option<Instant> = None;
    let mut speed = base_speed;
    let mut set_speed = |to: f64| {
        if to != speed {
            speed = to;
            set_both_speeds(shm, clock, mono_minus_elapsed, to);
        }
    };
    while !gates.stop.load(Ordering::Acquire) {
        // Time flows between skips: the hub's deadlines it reaches fire now, not when the clock
        // task's sleep (computed before the last skip) ends.
        clock.fire_due();
        if gates.holds.load(Ordering::Acquire) > 0 {
            std::thread::sleep(POLL);
            continue;
        }
        let looked = Instant::now();
        let scan = shm.scan(&hub.snapshot());
        report.looking = report.looking.saturating_add(looked.elapsed());
        if gates.holds.load(Ordering::Acquire) > 0 {
            continue;
        }
        match scan.quiescence {
            Quiescence::Idle {
                next_deadline_virt_mono_ns,
            } => {
                busy_since = None;
                set_speed(base_speed);
                let hub_next = clock
                    .next_deadline()
                    .map(|e| ns(e).saturating_add(mono_minus_elapsed));
                let next = match (next_deadline_virt_mono_ns, hub_next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // Each clock is brought to the deadline on its own reading: a skip computed on one
                // clock and applied to both would leave the other short of the deadline by their
                // difference, and the thread waiting for it asleep until it is re-signalled.
                let hub_now = ns(clock.elapsed()).saturating_add(mono_minus_elapsed);
                let shm_now = shm.now().virt_mono_ns;
                match next {
                    Some(to) if to > hub_now.min(shm_now) => {
                        let by = Duration::from_nanos(
                            u64::try_from(to.saturating_sub(hub_now)).unwrap_or(0),
                        );
                        if !by.is_zero() {
                            clock.skip(by);
                        }
                        let _ = shm.skip_to(to);
                        report.skips = report.skips.saturating_add(1);
                        report.skipped = report.skipped.saturating_add(by);
                        let woken = shm.wake_due_tracked(shm.now().virt_mono_ns);
                        report.wakes = report
                            .wakes
                            .saturating_add(u64::try_from(woken.len()).unwrap_or(0));
                        last_rewake = Instant::now();
                        rewake_after = REWAKE;
                        settle(shm, &woken, gates);
                    }
                    // Due already (a wake on its way), or nobody waits for anything: time flows.
                    _ => std::thread::sleep(POLL),
                }
            }
            Quiescence::Busy => {
                report.busy_looks = report.busy_looks.saturating_add(1);
                let since = *busy_since.get_or_insert_with(Instant::now);
                let busy_for = since.elapsed();
                set_speed(busy_speed(base_speed, busy_for));
                if scan.due.is_empty() {
                    rewake_after = REWAKE;
                } else if last_rewake.elapsed() >= rewake_after {
                    for &(pid, tid) in &scan.due {
                        if shm.wake_thread(pid, tid) {
                            report.wakes = report.wakes.saturating_add(1);
                        }
                    }
                    last_rewake = Instant::now();
                    rewake_after = rewake_after.saturating_mul(2).min(MAX_REWAKE);
                }
                std::thread::sleep(POLL);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short burst keeps the run's speed; a party busy for longer is sped up step by step, each
    /// step from its threshold on, and never beyond the last.
    #[test]
    fn busy_time_speeds_up_in_steps() {
        let ms = Duration::from_millis;
        assert_eq!(busy_speed(1.0, Duration::ZERO), 1.0);
        assert_eq!(busy_speed(1.0, ms(49)), 1.0);
        assert_eq!(busy_speed(1.0, ms(50)), 10.0);
        assert_eq!(busy_speed(1.0, ms(299)), 10.0);
        assert_eq!(busy_speed(1.0, ms(300)), 50.0);
        assert_eq!(busy_speed(1.0, Duration::from_secs(3600)), 50.0);
        // The steps multiply the run's own speed (a run at 60× goes to 600× and 3,000×).
        assert_eq!(busy_speed(60.0, ms(10)), 60.0);
        assert_eq!(busy_speed(60.0, ms(100)), 600.0);
        assert_eq!(busy_speed(60.0, ms(400)), 3000.0);
    }
}
