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

/// How long `advance` waits for one woken deadline handler before it moves on regardless. A handler is
/// expected to do a few microseconds of work (close a socket, emit a record); this only bounds the damage
/// of a handler that hangs.
const HANDLER_WAIT: Duration = Duration::from_secs(2);

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
            let next = {
                let mut s = self.lock();
                let due = s.timers.first_key_value().map(|(k, _)| *k);
                match due {
                    Some(key) if key.0 <= target => {
                        let waker = s.timers.remove(&key);
                        let now = s.now();
                        // Step to the deadline without telling watchers: a woken sleeper that
                        // re-registered now would see its deadline passed and fire outside the order.
                        // Watchers hear of the jump once, at its end.
                        if key.0 > now {
                            s.jumped += key.0.duration_since(now).unwrap_or_default();
                        }
                        waker
                    }
                    _ => None,
                }
            };
            let Some(waker) = next else { break };
            let (done_tx, done_rx) = oneshot::channel();
            if waker.send(done_tx).is_ok() {
                // Wait until the handler dropped its guard (or gave up the future).
                let _ = tokio::time::timeout(HANDLER_WAIT, done_rx).await;
            }
        }
        let mut s = self.lock();
        let now = s.now();
        if target > now {
            s.jumped += target.duration_since(now).unwrap_or_default();
        }
        self.publish(&mut s);
    }

    /// Wait until virtual wall time reaches `deadline`, whether by real time flowing (at the clock's
    /// speed) or by a jump. The returned guard holds a jump at `deadline` until it is dropped.
    pub async fn sleep_until(&self, deadline: SystemTime) -> Fired {
        let mut changes = self.watch();
        loop {
            let (wait, registration) = {
                let mut s = self.lock();
                let now = s.now();
                if now >= deadline {
                    return Fired {
                        at: deadline,
                        done: None,
                    };
                }
                let id = s.next_timer_id;
                s.next_timer_id += 1;
                let (tx, rx) = oneshot::channel();
                s.timers.insert((deadline, id), tx);
                let real = deadline
                    .duration_since(now)
                    .unwrap_or_default()
                    .div_f64(s.speed);
                (
                    real,
                    Registration {
                        clock: self.clone(),
                        key: (deadline, id),
                        rx,
                    },
                )
            };
            changes.borrow_and_update();
            let mut registration = registration;
            tokio::select! {
                fired = &mut registration.rx => {
                    if let Ok(done) = fired {
                        return Fired { at: deadline, done: Some(done) };
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
            }
            // Dropping the registration removes the timer; the loop registers again with a fresh
            // real-time estimate (speed may have changed).
            drop(registration);
        }
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

/// Removes a registered wall deadline when its waiter goes away.
struct Registration {
    clock: VirtualClock,
    key: (SystemTime, u64),
    rx: oneshot::Receiver<oneshot::Sender<()>>,
}

impl Drop for Registration {
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

impl Drop for Fired {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
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
