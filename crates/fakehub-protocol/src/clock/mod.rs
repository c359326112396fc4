//! The hub's virtual clock: one per hub, shared by the hub and the devices that follow it.
//!
//! Two readings:
//!
//! * [`VirtualClock::now`] is virtual *wall* time: SAS `se` checks, record timestamps, schedules.
//! * [`VirtualClock::elapsed`] is virtual *monotonic* time: keep-alive windows, latencies, timeouts.
//!
//! Time moves three ways:
//!
//! * **It flows**: `elapsed` follows the runtime's clock (tokio's `Instant`) × `speed`, and `now`
//!   with it. Under a paused tokio runtime (`start_paused`) that clock is itself virtual and
//!   advances only when every task is idle: the discrete-event regime the scenario runner uses for
//!   in-process devices.
//! * **It is skipped** ([`VirtualClock::skip`]): both readings move at once, as if the time had
//!   flowed while nothing happened. The time driver does this when every party is idle.
//! * **Wall time jumps** ([`VirtualClock::advance`]): only `now` moves. A jump models time that
//!   passed while everything was healthy, so keep-alive does not see it. Every wall deadline inside
//!   the jump fires in order at its own instant, and the jump waits until its handler drops the
//!   [`Fired`] guard, so handlers stamp their records with their own deadline.
//!
//! Deadlines (wall or elapsed) are registered with the clock ([`VirtualClock::timer`],
//! [`VirtualClock::timer_elapsed`]); one task per clock sleeps until the earliest one and fires
//! what is due, so a skip or a speed change costs the timers that became due, not every timer.
//! [`VirtualClock::next_deadline`] tells a driver where the next event is.

mod device;
mod timers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

pub use device::{DeviceClock, DeviceTimer};
pub use timers::{Fired, Timer};
use timers::{Registry, TimerKey};

/// Alias kept for the name the hub's API used for wall timers.
pub type WallTimer = Timer;

/// How long `advance` waits for one woken deadline handler before it moves on regardless. The
/// bound only limits the damage of a handler that hangs; hitting it is counted and logged.
const HANDLER_WAIT: Duration = Duration::from_secs(10);

/// The latest virtual wall time the clock represents; arithmetic past it saturates here.
fn far_future() -> SystemTime {
    // Year 9999: what RFC 3339 stamps can still print.
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// `t` as RFC 3339 with milliseconds (`2026-12-02T02:08:17.123Z`), for any `t`: times before 1970
/// print as 1970 and times after 9999 as 9999 (the formatter would panic on them).
pub fn rfc3339_millis(t: SystemTime) -> String {
    Rfc3339Millis(t).to_string()
}

/// [`rfc3339_millis`] without the allocation, for writing straight into a serializer or buffer.
pub struct Rfc3339Millis(pub SystemTime);

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0.clamp(SystemTime::UNIX_EPOCH, far_future());
        std::fmt::Display::fmt(&humantime::format_rfc3339_millis(t), f)
    }
}

/// `t` as RFC 3339 to the second, clamped like [`rfc3339_millis`].
pub fn rfc3339_seconds(t: SystemTime) -> String {
    let t = t.clamp(SystemTime::UNIX_EPOCH, far_future());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `t + d`, saturating at the far future.
pub fn wall_add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .map_or(far_future(), |x| x.min(far_future()))
}

/// `d × k` for a finite, non-negative `k`, saturating at `Duration::MAX`.
pub fn scale(d: Duration, k: f64) -> Duration {
    if k == 1.0 {
        // Real time, the common case (and exact: no round trip through floating point).
        return d;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * k).unwrap_or(Duration::MAX)
}

/// A snapshot of the clock's settings, published to watchers on every change (flow anchor, jump,
/// skip or speed change).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockState {
    /// Virtual wall time at the moment of the snapshot.
    pub now: SystemTime,
    /// Virtual elapsed time at the moment of the snapshot.
    pub elapsed: Duration,
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
    /// Wakes the clock task: a new earliest deadline, a skip, a jump, a speed change, or the
    /// clock's end.
    wake: Arc<Notify>,
    /// Timers dropped unfired since the registry last swept their entries out (counted without
    /// the lock: dropping a timer costs one atomic add).
    abandoned: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the clock task see that nobody uses the clock any more, and end.
        self.wake.notify_one();
    }
}

struct State {
    /// Runtime instant at which `anchor_elapsed` was the virtual elapsed time.
    anchor_real: Instant,
    anchor_elapsed: Duration,
    /// Virtual wall time at virtual elapsed zero, before any jump.
    wall_start: SystemTime,
    /// Sum of all wall-only jumps.
    jumped: Duration,
    speed: f64,
    generation: u64,
    late_handlers: u64,
    /// Jumps in progress. While one runs, wall deadlines fire only through its hand-over, in
    /// order, one at a time — never all at once because the jump made them due.
    jumping: u32,
    timers: Registry,
    /// Whether a clock task is sleeping for the timers (spawned on first need).
    task: Option<tokio::task::JoinHandle<()>>,
}

impl State {
    fn elapsed(&self) -> Duration {
        self.anchor_elapsed
            .saturating_add(scale(self.anchor_real.elapsed(), self.speed))
    }

    fn now(&self) -> SystemTime {
        self.readings().0
    }

    /// Wall and elapsed time from one reading of the runtime's clock, so they agree exactly.
    fn readings(&self) -> (SystemTime, Duration) {
        let elapsed = self.elapsed();
        let now = wall_add(wall_add(self.wall_start, elapsed), self.jumped);
        (now, elapsed)
    }

    /// The elapsed time at which wall time reaches `wall` (without further jumps).
    fn elapsed_at_wall(&self, wall: SystemTime) -> Duration {
        let since_start = wall.duration_since(self.wall_start).unwrap_or_default();
        since_start.saturating_sub(self.jumped)
    }

    fn snapshot(&self) -> ClockState {
        let (now, elapsed) = self.readings();
        ClockState {
            now,
            elapsed,
            real_now: SystemTime::now(),
            speed: self.speed,
            generation: self.generation,
        }
    }

    /// Fire every timer that is due now (no jump waits for them).
    fn fire_due(&mut self) {
        let (now, elapsed) = self.readings();
        self.fire_due_at(now, elapsed);
    }

    /// [`Self::fire_due`] with the readings taken already.
    fn fire_due_at(&mut self, now: SystemTime, elapsed: Duration) {
        if self.jumping > 0 {
            self.timers.fire_due_elapsed(now, elapsed);
        } else {
            self.timers.fire_due(now, elapsed);
        }
    }

    /// How long (real time) until the earliest registered deadline, at the current speed.
    fn real_until_next(&mut self) -> Option<Duration> {
        let next = self.next_deadline()?;
        let left = next.saturating_sub(self.elapsed());
        Some(scale(left, 1.0 / self.speed))
    }

    fn next_deadline(&mut self) -> Option<Duration> {
        let wall = self.timers.first_wall().map(|w| self.elapsed_at_wall(w));
        let elapsed = self.timers.first_elapsed();
        match (wall, elapsed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
            .field("now", &rfc3339_millis(s.now()))
            .field("elapsed", &s.elapsed())
            .field("speed", &s.speed)
            .finish()
    }
}

impl VirtualClock {
    /// A clock that starts at the real wall time, to the whole second (SAS expiries are whole
    /// seconds: runs started in different fractions of a second then renew at the same instants, and
    /// stamps written to files read back exactly), and runs at real speed.
    pub fn new() -> Self {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()))
    }

    /// A clock whose virtual wall time starts at `wall`, running at real speed.
    pub fn starting_at(wall: SystemTime) -> Self {
        let state = State {
            anchor_real: Instant::now(),
            anchor_elapsed: Duration::ZERO,
            wall_start: wall.min(far_future()),
            jumped: Duration::ZERO,
            speed: 1.0,
            generation: 0,
            late_handlers: 0,
            jumping: 0,
            timers: Registry::default(),
            task: None,
        };
        let (changes, _) = watch::channel(state.snapshot());
        VirtualClock {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                changes,
                wake: Arc::new(Notify::new()),
                abandoned: AtomicUsize::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers and maps: a panic while it was held leaves nothing half-done
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

    /// Virtual monotonic time since the clock was made. Jumps do not move it; skips do.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed()
    }

    /// Virtual wall time and virtual elapsed time from one reading (they agree exactly; one lock
    /// of the clock instead of two, for what stamps every event).
    pub fn readings(&self) -> (SystemTime, Duration) {
        self.lock().readings()
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

    /// A receiver that sees a new [`ClockState`] after every jump, skip and speed change.
    pub fn watch(&self) -> watch::Receiver<ClockState> {
        self.inner.changes.subscribe()
    }

    /// The virtual elapsed time of the earliest registered deadline (a wall deadline counted at
    /// the elapsed time it would fire at without a jump), if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.lock().next_deadline()
    }

    fn publish(&self, state: &mut State) {
        state.generation = state.generation.wrapping_add(1);
        let snapshot = state.snapshot();
        self.inner.changes.send_replace(snapshot);
        self.inner.wake.notify_one();
    }

    /// Run time `speed`× faster than real time. Non-finite or non-positive speeds and speeds over
    /// a million are refused (returns false).
    pub fn set_speed(&self, speed: f64) -> bool {
        if !(speed.is_finite() && speed > 0.0 && speed <= 1e6) {
            return false;
        }
        let mut s = self.lock();
        let now_real = Instant::now();
        s.anchor_elapsed = s.elapsed();
        s.anchor_real = now_real;
        s.speed = speed;
        self.publish(&mut s);
        true
    }

    /// Skip `by` of idle time: both readings move at once, and every deadline it reaches fires.
    /// The time driver calls this when every party is idle.
    ///
    /// The clock task is not woken for a skip (the skip fires what it reaches itself, and a driver
    /// that skips calls [`Self::fire_due`] as time flows between its skips): a skip costs nothing
    /// beyond the timers it reaches.
    pub fn skip(&self, by: Duration) {
        let mut s = self.lock();
        let now_real = Instant::now();
        s.anchor_elapsed = s.elapsed().saturating_add(by);
        s.anchor_real = now_real;
        s.fire_due();
        s.generation = s.generation.wrapping_add(1);
        let snapshot = s.snapshot();
        self.inner.changes.send_replace(snapshot);
    }

    /// Fire every deadline reached by now (a driver that skips calls this as time flows).
    pub fn fire_due(&self) {
        self.lock().fire_due();
    }

    /// Jump virtual wall time forward by `by`. Every wall deadline registered with
    /// [`Self::timer`] that falls inside the jump fires in order; while each one is handled,
    /// `now()` reads its own deadline. Returns when the whole jump is done.
    pub async fn advance(&self, by: Duration) {
        let target = {
            let mut s = self.lock();
            s.jumping = s.jumping.saturating_add(1);
            wall_add(s.now(), by)
        };
        loop {
            // Step to the next deadline and hand its waiter the "done" channel in one critical
            // section: a waiter that checks the time under the same lock either sees the deadline
            // not yet reached or finds the hand-over waiting, never a passed deadline without it.
            let (done_tx, done_rx) = oneshot::channel();
            let handed_over = {
                let mut s = self.lock();
                match s.timers.first_wall() {
                    Some(due) if due <= target => {
                        let now = s.now();
                        if due > now {
                            let step = due.duration_since(now).unwrap_or_default();
                            s.jumped = s.jumped.saturating_add(step);
                        }
                        // Elapsed deadlines do not move with a jump, but some may have come due
                        // by time flowing meanwhile.
                        let (now, elapsed) = s.readings();
                        s.timers.fire_due_elapsed(now, elapsed);
                        s.timers.hand_over_first_wall(done_tx)
                    }
                    _ => break,
                }
            };
            if handed_over && tokio::time::timeout(HANDLER_WAIT, done_rx).await.is_err() {
                self.lock().late_handlers += 1;
                tracing::warn!(
                    "a deadline handler held the clock for {HANDLER_WAIT:?}; the jump moves on without it"
                );
            }
        }
        let mut s = self.lock();
        let now = s.now();
        if target > now {
            let step = target.duration_since(now).unwrap_or_default();
            s.jumped = s.jumped.saturating_add(step);
        }
        s.jumping = s.jumping.saturating_sub(1);
        s.fire_due();
        self.publish(&mut s);
    }

    /// Register the deadline `key_at` makes of the clock's readings (wall, elapsed), taken once
    /// under the same lock as the registration.
    fn register(&self, key_at: impl FnOnce(SystemTime, Duration) -> TimerKey) -> Timer {
        let mut s = self.lock();
        let abandoned = self.inner.abandoned.load(Ordering::Relaxed);
        if s.timers.sweep_if_worth_it(abandoned) {
            // Drops counted meanwhile (outside the lock) are kept for the next sweep.
            self.inner.abandoned.fetch_sub(abandoned, Ordering::Relaxed);
        }
        let (now, elapsed) = s.readings();
        let key = match key_at(now, elapsed) {
            TimerKey::Wall(w) => TimerKey::Wall(w.min(far_future())),
            elapsed_key => elapsed_key,
        };
        let earliest_before = s.next_deadline();
        let rx = s.timers.insert(key);
        // The new deadline on the elapsed axis (a wall one as if no jump came first).
        let at = match key {
            TimerKey::Wall(w) => s.elapsed_at_wall(w),
            TimerKey::Elapsed(e) => e,
        };
        let due = match key {
            TimerKey::Wall(w) => w <= now,
            TimerKey::Elapsed(e) => e <= elapsed,
        };
        if due || earliest_before.is_some_and(|first| first <= elapsed) {
            // Due already: fire at once (by time flowing; no jump waits for it), with whatever
            // else is due.
            s.fire_due_at(now, elapsed);
        }
        let earlier = !due && earliest_before.is_none_or(|first| at < first);
        self.ensure_task(&mut s);
        drop(s);
        if earlier {
            self.inner.wake.notify_one();
        }
        Timer::new(self.clone(), key, rx)
    }

    /// Register a wall deadline now. A jump that crosses it stops there until the timer has fired
    /// and its [`Fired`] guard is dropped. Register the next deadline *before* dropping the guard of
    /// the last one, and a jump cannot skip it.
    pub fn timer(&self, deadline: SystemTime) -> Timer {
        self.register(|_, _| TimerKey::Wall(deadline))
    }

    /// A wall deadline `d` from now ([`Self::timer`] at `now() + d`, read and registered under
    /// one lock).
    pub fn timer_in(&self, d: Duration) -> Timer {
        self.register(|now, _| TimerKey::Wall(wall_add(now, d)))
    }

    /// Register an elapsed (monotonic) deadline now. Jumps do not move it; flow and skips do.
    pub fn timer_elapsed(&self, deadline: Duration) -> Timer {
        self.register(|_, _| TimerKey::Elapsed(deadline))
    }

    /// Wait until virtual wall time reaches `deadline`, by time flowing, a skip or a jump. The
    /// returned guard holds a jump at `deadline` until it is dropped.
    pub async fn sleep_until(&self, deadline: SystemTime) -> Fired {
        self.timer(deadline).wait().await
    }

    /// Wait until virtual elapsed time reaches `deadline` (jumps do not count).
    pub async fn sleep_until_elapsed(&self, deadline: Duration) {
        let _ = self.timer_elapsed(deadline).wait().await;
    }

    /// Wait for `d` of virtual elapsed time.
    pub async fn sleep(&self, d: Duration) {
        let mut timer = self.register(|_, elapsed| TimerKey::Elapsed(elapsed.saturating_add(d)));
        let _ = timer.wait().await;
    }

    /// A timer was dropped unfired: its entry is let go lazily (see `timers::Deadlines`).
    fn abandon(&self) {
        self.inner.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// Make sure a task sleeps for the earliest deadline, on the current runtime. Without a
    /// runtime, timers still fire on skips and jumps, and when the next one is registered.
    fn ensure_task(&self, s: &mut State) {
        if s.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        s.task = Some(handle.spawn(clock_task(weak)));
    }
}

/// Sleeps until the earliest deadline (real time at the clock's speed, or the runtime's virtual
/// time when it is paused), fires what is due, and starts over; woken early by any change.
async fn clock_task(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let wait = {
            let clock = VirtualClock {
                inner: strong.clone(),
            };
            let mut s = clock.lock();
            s.fire_due();
            s.real_until_next()
        };
        let wake = strong.wake.clone();
        // Hold only a weak reference while asleep: a clock nobody uses any more ends its task.
        drop(strong);
        match wait {
            Some(d) => {
                let sleep = match Instant::now().checked_add(d) {
                    Some(until) => tokio::time::sleep_until(until),
                    None => tokio::time::sleep(Duration::from_secs(86_400 * 365)),
                };
                tokio::select! {
                    biased;
                    _ = sleep => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests;
