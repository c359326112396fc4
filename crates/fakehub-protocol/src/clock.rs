//! The hub's virtual clock: one per hub, shared by everything that needs time.
//!
//! Two readings, as DESIGN.md "Time" sets out:
//!
//! * [`VirtualClock::now`] is virtual *wall* time: the real wall time when the clock was made, plus the
//!   virtual time that has flowed since (real elapsed × speed), plus every jump made with
//!   [`VirtualClock::advance`]. SAS `se` checks, record timestamps and schedules use it.
//! * [`VirtualClock::elapsed`] is virtual *monotonic* time: real elapsed × speed, untouched by jumps.
//!   Keep-alive deadlines and latencies use it, because a jump models time that passed while everything
//!   was healthy: a device that was talking before the jump is not idle after it.
//!
//! Wall-clock deadlines ([`VirtualClock::sleep_until`]) are registered with the clock. When `advance`
//! jumps over them it stops at each one in order, sets the clock to exactly that instant, wakes the
//! waiter, and waits until the waiter has handled it (dropped its [`Fired`] guard) before moving on. A
//! handler that reads `now()` therefore stamps its records with its own deadline, and the records of two
//! deadlines inside one jump come out in deadline order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

/// How long `advance` waits for one woken deadline handler before it moves on regardless. Handlers
/// close a socket and write records, or (an in-process device) reconnect through a TLS handshake,
/// which on a loaded 2-core CI machine in a debug build was measured to exceed 2 s. The bound only
/// limits the damage of a handler that hangs; hitting it is logged.
const HANDLER_WAIT: Duration = Duration::from_secs(10);

/// A snapshot of the clock's settings, published to watchers on every change (jump or speed change).
/// The `clock-file` device adapter writes this out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockState {
    /// Virtual wall time at the moment of the snapshot.
    pub now: SystemTime,
    /// Real wall time at the moment of the snapshot.
    pub real_now: SystemTime,
    /// How many virtual seconds pass per real second.
    pub speed: f64,
    /// Bumped on every change; lets a watcher tell two snapshots apart.
    pub generation: u64,
}

impl ClockState {
    /// Virtual wall time minus real wall time at the snapshot, in (possibly negative) seconds.
    pub fn offset_secs(&self) -> f64 {
        match self.now.duration_since(self.real_now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }
}

/// Virtual time shared by a hub and the devices under test. Cheap to clone; clones share one clock.
#[derive(Clone)]
pub struct VirtualClock {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    changes: watch::Sender<ClockState>,
}

struct State {
    /// Real instant at which `anchor_elapsed` was the virtual elapsed time (moved on speed changes).
    anchor_real: Instant,
    anchor_elapsed: Duration,
    /// Virtual wall time at virtual elapsed zero, before any jump.
    wall_start: SystemTime,
    /// Sum of all jumps.
    jumped: Duration,
    speed: f64,
    generation: u64,
    next_timer_id: u64,
    late_handlers: u64,
    timers: BTreeMap<(SystemTime, u64), oneshot::Sender<oneshot::Sender<()>>>,
}

impl State {
    fn elapsed(&self) -> Duration {
        self.anchor_elapsed + self.anchor_real.elapsed().mul_f64(self.speed)
    }

    fn now(&self) -> SystemTime {
        self.wall_start + self.elapsed() + self.jumped
    }

    fn snapshot(&self) -> ClockState {
        ClockState {
            now: self.now(),
            real_now: SystemTime::now(),
            speed: self.speed,
            generation: self.generation,
        }
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VirtualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("VirtualClock")
            .field("now", &humantime::format_rfc3339_millis(s.now()))
            .field("elapsed", &s.elapsed())
            .field("speed", &s.speed)
            .finish()
    }
}

impl VirtualClock {
    /// A clock that starts at the real wall time and runs at real speed.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose virtual wall time starts at `wall`, running at real speed.
    pub fn starting_at(wall: SystemTime) -> Self {
        let state = State {
            anchor_real: Instant::now(),
            anchor_elapsed: Duration::ZERO,
            wall_start: wall,
            jumped: Duration::ZERO,
            speed: 1.0,
            generation: 0,
            next_timer_id: 0,
            late_handlers: 0,
            timers: BTreeMap::new(),
        };
        let (changes, _) = watch::channel(state.snapshot());
        VirtualClock {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                changes,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers and a map: a panic while it was held leaves nothing half-done
        // that matters, so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Virtual wall time.
    pub fn now(&self) -> SystemTime {
        self.lock().now()
    }

    /// Virtual monotonic time since the clock was made. Jumps do not move it.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed()
    }

    /// Virtual seconds per real second.
    pub fn speed(&self) -> f64 {
        self.lock().speed
    }

    /// How many deadline handlers a jump stopped waiting for (held the clock longer than the bound).
    /// Non-zero means some events were stamped later than the deadline that caused them.
    pub fn late_handlers(&self) -> u64 {
        self.lock().late_handlers
    }

    /// The current settings, as published to watchers.
    pub fn state(&self) -> ClockState {
        self.lock().snapshot()
    }

    /// A receiver that sees a new [`ClockState`] after every jump and speed change.
    pub fn watch(&self) -> watch::Receiver<ClockState> {
        self.inner.changes.subscribe()
    }

    fn publish(&self, state: &mut State) {
        state.generation += 1;
        let snapshot = state.snapshot();
        self.inner.changes.send_replace(snapshot);
    }

    /// Run time `speed`× faster than real time (for devices whose timers follow the same clock).
    /// Non-finite or non-positive speeds are ignored.
    pub fn set_speed(&self, speed: f64) {
        if !(speed.is_finite() && speed > 0.0) {
            return;
        }
        let mut s = self.lock();
        let now_real = Instant::now();
        s.anchor_elapsed = s.elapsed();
        s.anchor_real = now_real;
        s.speed = speed;
        self.publish(&mut s);
    }

    /// Jump virtual wall time forward by `by`. Every deadline registered with [`Self::sleep_until`]
    /// that falls inside the jump fires in order; while each one is handled, `now()` reads its own
    /// deadline. Returns when the whole jump is done.
    pub async fn advance(&self, by: Duration) {
        let target = self.now() + by;
        loop {
            // Step to the next deadline and hand its waiter our "done" channel in one critical
            // section: a waiter that checks the time under the same lock either sees the deadline
            // not yet reached or finds the hand-over waiting, never a passed deadline without it.
            let (done_tx, done_rx) = oneshot::channel();
            let handed_over = {
                let mut s = self.lock();
                let due = s.timers.first_key_value().map(|(k, _)| *k);
                match due {
                    Some(key) if key.0 <= target => {
                        let now = s.now();
                        // Step without telling watchers; they hear of the jump once, at its end.
                        if key.0 > now {
                            s.jumped += key.0.duration_since(now).unwrap_or_default();
                        }
                        s.timers
                            .remove(&key)
                            .is_some_and(|waker| waker.send(done_tx).is_ok())
                    }
                    _ => break,
                }
            };
            if handed_over {
                // Wait until the handler dropped its guard (or gave up the future).
                if tokio::time::timeout(HANDLER_WAIT, done_rx).await.is_err() {
                    self.lock().late_handlers += 1;
                    tracing::warn!(
                        "a deadline handler held the clock for {HANDLER_WAIT:?}; the jump moves on without it"
                    );
                }
            }
        }
        let mut s = self.lock();
        let now = s.now();
        if target > now {
            s.jumped += target.duration_since(now).unwrap_or_default();
        }
        self.publish(&mut s);
    }

    /// Register a wall deadline now. A jump that crosses it stops there until the timer has fired
    /// and its [`Fired`] guard is dropped. Register the next deadline *before* dropping the guard of
    /// the last one, and a jump cannot skip it.
    pub fn timer(&self, deadline: SystemTime) -> WallTimer {
        let mut s = self.lock();
        let id = s.next_timer_id;
        s.next_timer_id += 1;
        let (tx, rx) = oneshot::channel();
        s.timers.insert((deadline, id), tx);
        WallTimer {
            clock: self.clone(),
            key: (deadline, id),
            rx,
            changes: self.inner.changes.subscribe(),
            fired: false,
        }
    }

    /// Wait until virtual wall time reaches `deadline`, whether by real time flowing (at the clock's
    /// speed) or by a jump. The returned guard holds a jump at `deadline` until it is dropped.
    pub async fn sleep_until(&self, deadline: SystemTime) -> Fired {
        self.timer(deadline).wait().await
    }

    /// Wait until virtual elapsed time reaches `deadline` (jumps do not count).
    pub async fn sleep_until_elapsed(&self, deadline: Duration) {
        let mut changes = self.watch();
        loop {
            let (remaining, speed) = {
                let s = self.lock();
                (deadline.saturating_sub(s.elapsed()), s.speed)
            };
            if remaining.is_zero() {
                return;
            }
            changes.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(remaining.div_f64(speed)) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// Wait for `d` of virtual elapsed time.
    pub async fn sleep(&self, d: Duration) {
        let deadline = self.elapsed() + d;
        self.sleep_until_elapsed(deadline).await
    }
}

/// A registered wall deadline (see [`VirtualClock::timer`]). Dropping it unregisters it.
pub struct WallTimer {
    clock: VirtualClock,
    key: (SystemTime, u64),
    rx: oneshot::Receiver<oneshot::Sender<()>>,
    changes: watch::Receiver<ClockState>,
    fired: bool,
}

impl WallTimer {
    /// The deadline.
    pub fn deadline(&self) -> SystemTime {
        self.key.0
    }

    /// Wait for the deadline. Cancel-safe: a cancelled wait leaves the timer registered.
    pub async fn wait(&mut self) -> Fired {
        let deadline = self.key.0;
        if self.fired {
            return Fired {
                at: deadline,
                done: None,
            };
        }
        loop {
            let real = {
                let mut s = self.clock.lock();
                let now = s.now();
                if now >= deadline {
                    // Reached: by a jump (the hand-over is already in `rx`, sent under this lock) or
                    // by time flowing (unregister, so no later jump waits for us).
                    s.timers.remove(&self.key);
                    let done = self.rx.try_recv().ok();
                    drop(s);
                    self.fired = true;
                    return Fired { at: deadline, done };
                }
                deadline
                    .duration_since(now)
                    .unwrap_or_default()
                    .div_f64(s.speed)
            };
            self.changes.borrow_and_update();
            tokio::select! {
                fired = &mut self.rx => {
                    self.fired = true;
                    return Fired { at: deadline, done: fired.ok() };
                }
                _ = tokio::time::sleep(real) => {}
                // A jump or speed change: look again.
                _ = self.changes.changed() => {}
            }
        }
    }
}

impl Drop for WallTimer {
    fn drop(&mut self) {
        self.clock.lock().timers.remove(&self.key);
    }
}

/// A wall deadline that has been reached. While it is alive, a jump that fired it waits at `at`.
#[must_use = "dropping the guard lets a jump move past this deadline"]
#[derive(Debug)]
pub struct Fired {
    /// The deadline that fired.
    pub at: SystemTime,
    done: Option<oneshot::Sender<()>>,
}

impl Fired {
    /// Whether a jump is waiting for this guard (the deadline was reached by a jump, not by time
    /// flowing).
    pub fn holds_jump(&self) -> bool {
        self.done.is_some()
    }
}

impl Drop for Fired {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// How a device under test reads time: the hub's clock in-process (`shared`), the clock file written
/// by the runner (`clock-file`), or its own wall clock (`real`, also for devices under libfaketime,
/// whose wall clock is already shifted).
///
/// Device timers are wall deadlines ([`DeviceClock::timer`]): a device whose timers follow the hub's
/// clock sees a jump as time passing, so its renewal, telemetry and backoff timers inside the jump
/// fire. With the shared clock they fire at their own instant inside the jump (the hub's `advance`
/// waits for the device to act); with a file or the real clock they fire as soon as the device sees
/// the jump (the file is re-read at most every 10 ms, waits look every 20 ms).
#[derive(Clone)]
pub enum DeviceClock {
    Shared(VirtualClock),
    File(Arc<FileClock>),
    Real,
}

impl std::fmt::Debug for DeviceClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceClock::Shared(_) => f.write_str("DeviceClock::Shared"),
            DeviceClock::File(c) => write!(f, "DeviceClock::File({})", c.path.display()),
            DeviceClock::Real => f.write_str("DeviceClock::Real"),
        }
    }
}

/// Longest real time a file or real-clock wait sleeps before it looks at the time again.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// A clock read from a clock file (see [`crate::clock_file`]), re-read at most every 10 ms.
pub struct FileClock {
    path: std::path::PathBuf,
    cached: Mutex<(crate::clock_file::ClockFile, Instant)>,
}

impl FileClock {
    /// Open a clock file; it must exist and parse.
    pub fn open(path: impl Into<std::path::PathBuf>) -> std::io::Result<FileClock> {
        let path = path.into();
        let file = crate::clock_file::ClockFile::read(&path)?;
        Ok(FileClock {
            path,
            cached: Mutex::new((file, Instant::now())),
        })
    }

    fn current(&self) -> crate::clock_file::ClockFile {
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if c.1.elapsed() >= Duration::from_millis(10) {
            // A missing or half-written file keeps the last good reading.
            if let Ok(f) = crate::clock_file::ClockFile::read(&self.path) {
                c.0 = f;
            }
            c.1 = Instant::now();
        }
        c.0
    }
}

/// A device timer (see [`DeviceClock::timer`]).
pub enum DeviceTimer {
    Shared(WallTimer),
    Polled {
        clock: DeviceClock,
        deadline: SystemTime,
    },
}

impl DeviceTimer {
    /// Wait for the deadline. With the shared clock the guard holds a hub jump at the deadline until
    /// dropped. Cancel-safe.
    pub async fn wait(&mut self) -> Option<Fired> {
        match self {
            DeviceTimer::Shared(t) => Some(t.wait().await),
            DeviceTimer::Polled { clock, deadline } => loop {
                let left = deadline.duration_since(clock.now()).unwrap_or_default();
                if left.is_zero() {
                    return None;
                }
                let speed = match clock {
                    DeviceClock::File(f) => f.current().speed.max(f64::MIN_POSITIVE),
                    _ => 1.0,
                };
                tokio::time::sleep(left.div_f64(speed).min(POLL_SLICE)).await;
            },
        }
    }

    /// The deadline.
    pub fn deadline(&self) -> SystemTime {
        match self {
            DeviceTimer::Shared(t) => t.deadline(),
            DeviceTimer::Polled { deadline, .. } => *deadline,
        }
    }
}

impl DeviceClock {
    /// Wall time as the device sees it.
    pub fn now(&self) -> SystemTime {
        match self {
            DeviceClock::Shared(c) => c.now(),
            DeviceClock::File(f) => f.current().virtual_at(SystemTime::now()),
            DeviceClock::Real => SystemTime::now(),
        }
    }

    /// A timer for wall time `deadline`, registered now.
    pub fn timer(&self, deadline: SystemTime) -> DeviceTimer {
        match self {
            DeviceClock::Shared(c) => DeviceTimer::Shared(c.timer(deadline)),
            other => DeviceTimer::Polled {
                clock: other.clone(),
                deadline,
            },
        }
    }

    /// A timer `d` from now.
    pub fn timer_in(&self, d: Duration) -> DeviceTimer {
        self.timer(self.now() + d)
    }

    /// Sleep for `d` of the device's *monotonic* time: it runs at the clock's speed and ignores
    /// jumps, like the hub's keep-alive. For timeouts on network round trips and keep-alive pings:
    /// a jump models time that passed while everything was healthy, so it must not make a reply
    /// that is on its way look late.
    pub async fn sleep(&self, d: Duration) {
        match self {
            DeviceClock::Shared(c) => c.sleep(d).await,
            DeviceClock::Real => tokio::time::sleep(d).await,
            DeviceClock::File(f) => {
                let mut left = d;
                while !left.is_zero() {
                    let speed = f.current().speed.max(f64::MIN_POSITIVE);
                    let real = left.div_f64(speed).min(POLL_SLICE);
                    tokio::time::sleep(real).await;
                    left = left.saturating_sub(real.mul_f64(speed));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test]
    async fn jump_moves_wall_time_but_not_elapsed() {
        let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
        let clock = VirtualClock::starting_at(start);
        let e0 = clock.elapsed();
        clock.advance(secs(3600)).await;
        let now = clock.now().duration_since(start).unwrap();
        assert!(now >= secs(3600) && now < secs(3601), "{now:?}");
        assert!(clock.elapsed() - e0 < secs(1));
    }

    #[tokio::test]
    async fn deadlines_inside_a_jump_fire_in_order_at_their_own_time() {
        let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
        let clock = VirtualClock::starting_at(start);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, at) in [("b", 120u64), ("a", 60), ("c", 3000)] {
            let clock2 = clock.clone();
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let fired = clock2.sleep_until(start + secs(at)).await;
                let seen = clock2.now().duration_since(start).unwrap();
                log.lock().unwrap().push((name, fired.at, seen));
            }));
        }
        // Let the sleepers register.
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.advance(secs(600)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = log.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "only deadlines inside the jump fire: {got:?}");
        assert_eq!(got[0].0, "a");
        assert_eq!(got[1].0, "b");
        assert!(got[0].2 >= secs(60) && got[0].2 < secs(61), "{:?}", got[0]);
        assert!(
            got[1].2 >= secs(120) && got[1].2 < secs(121),
            "{:?}",
            got[1]
        );
        let after = clock.now().duration_since(start).unwrap();
        assert!(after >= secs(600) && after < secs(601));
        tasks.pop().unwrap().abort();
    }

    #[tokio::test]
    async fn speed_scales_both_readings() {
        let clock = VirtualClock::new();
        clock.set_speed(1000.0);
        let e0 = clock.elapsed();
        let w0 = clock.now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let de = clock.elapsed() - e0;
        let dw = clock.now().duration_since(w0).unwrap();
        assert!(de >= secs(20) && de < secs(40), "{de:?}");
        assert!(dw >= secs(20) && dw < secs(40), "{dw:?}");
    }

    #[tokio::test]
    async fn elapsed_sleep_follows_speed_changes() {
        let clock = VirtualClock::new();
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move { c2.sleep(secs(600)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!sleeper.is_finished());
        clock.set_speed(100_000.0);
        tokio::time::timeout(Duration::from_secs(2), sleeper)
            .await
            .expect("sleep re-armed on the speed change")
            .unwrap();
    }

    #[tokio::test]
    async fn dropped_waiter_does_not_stall_a_jump() {
        let clock = VirtualClock::new();
        let c2 = clock.clone();
        let t = tokio::spawn(async move {
            let at = c2.now() + secs(10);
            c2.sleep_until(at).await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.abort();
        let _ = t.await;
        assert!(clock.lock().timers.is_empty());
        tokio::time::timeout(Duration::from_millis(500), clock.advance(secs(60)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn watchers_see_every_change() {
        let clock = VirtualClock::new();
        let mut w = clock.watch();
        let g0 = w.borrow_and_update().generation;
        clock.advance(secs(5)).await;
        clock.set_speed(2.0);
        assert!(w.has_changed().unwrap());
        let st = *w.borrow_and_update();
        assert_eq!(st.generation, g0 + 2);
        assert_eq!(st.speed, 2.0);
        assert!(st.offset_secs() > 4.9);
    }
}
