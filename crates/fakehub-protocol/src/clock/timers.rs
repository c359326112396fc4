//! The clock's registered deadlines and the guards handed to whoever waits for them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::VirtualClock;

/// A deadline on one of the clock's two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerKey {
    Wall(SystemTime),
    Elapsed(Duration),
}

/// What a waiter is told when its deadline is reached.
pub(super) struct Firing {
    at: SystemTime,
    /// Present when a jump waits for the handler (dropping it lets the jump move on).
    done: Option<oneshot::Sender<()>>,
}

/// Every registered deadline, in order.
#[derive(Default)]
pub(super) struct Registry {
    next_id: u64,
    wall: BTreeMap<(SystemTime, u64), oneshot::Sender<Firing>>,
    elapsed: BTreeMap<(Duration, u64), oneshot::Sender<Firing>>,
}

impl Registry {
    pub(super) fn insert(&mut self, key: TimerKey) -> (u64, oneshot::Receiver<Firing>) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        match key {
            TimerKey::Wall(w) => self.wall.insert((w, id), tx),
            TimerKey::Elapsed(e) => self.elapsed.insert((e, id), tx),
        };
        (id, rx)
    }

    pub(super) fn remove(&mut self, key: TimerKey, id: u64) {
        match key {
            TimerKey::Wall(w) => self.wall.remove(&(w, id)),
            TimerKey::Elapsed(e) => self.elapsed.remove(&(e, id)),
        };
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.wall.is_empty() && self.elapsed.is_empty()
    }

    pub(super) fn first_wall(&self) -> Option<SystemTime> {
        self.wall.first_key_value().map(|(k, _)| k.0)
    }

    pub(super) fn first_elapsed(&self) -> Option<Duration> {
        self.elapsed.first_key_value().map(|(k, _)| k.0)
    }

    /// Fire every deadline reached at wall time `now` and elapsed time `elapsed`.
    pub(super) fn fire_due(&mut self, now: SystemTime, elapsed: Duration) {
        while let Some(entry) = self.wall.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), tx) = entry.remove_entry();
            let _ = tx.send(Firing { at, done: None });
        }
        self.fire_due_elapsed(now, elapsed);
    }

    /// Fire every elapsed deadline reached at `elapsed` (wall time `now`).
    pub(super) fn fire_due_elapsed(&mut self, now: SystemTime, elapsed: Duration) {
        while let Some(entry) = self.elapsed.first_entry() {
            if entry.key().0 > elapsed {
                break;
            }
            let ((deadline, _), tx) = entry.remove_entry();
            // Stamped with the wall time the deadline fell on, however late this runs.
            let late = elapsed.saturating_sub(deadline);
            let at = now.checked_sub(late).unwrap_or(now);
            let _ = tx.send(Firing { at, done: None });
        }
    }

    /// Fire the first wall deadline with a jump's hand-over. False if nobody waits for it any more.
    pub(super) fn hand_over_first_wall(&mut self, done: oneshot::Sender<()>) -> bool {
        match self.wall.pop_first() {
            Some(((at, _), tx)) => tx
                .send(Firing {
                    at,
                    done: Some(done),
                })
                .is_ok(),
            None => false,
        }
    }
}

/// A registered deadline (see [`VirtualClock::timer`] and [`VirtualClock::timer_elapsed`]).
/// Dropping it before it fires unregisters it.
pub struct Timer {
    clock: VirtualClock,
    key: TimerKey,
    id: u64,
    rx: oneshot::Receiver<Firing>,
    fired_at: Option<SystemTime>,
}

impl Timer {
    pub(super) fn new(
        clock: VirtualClock,
        key: TimerKey,
        id: u64,
        rx: oneshot::Receiver<Firing>,
    ) -> Timer {
        Timer {
            clock,
            key,
            id,
            rx,
            fired_at: None,
        }
    }

    /// The deadline as wall time (an elapsed deadline: the wall time it falls on, without jumps).
    pub fn deadline(&self) -> SystemTime {
        match self.key {
            TimerKey::Wall(w) => w,
            TimerKey::Elapsed(e) => {
                let s = self.clock.state();
                match e.checked_sub(s.elapsed) {
                    Some(ahead) => super::wall_add(s.now, ahead),
                    None => s
                        .now
                        .checked_sub(s.elapsed.saturating_sub(e))
                        .unwrap_or(s.now),
                }
            }
        }
    }

    /// Whether the deadline has been reached: [`wait`](Self::wait) would return at once. Looks
    /// without waiting or registering to be woken. (A registry that let go of the timer without
    /// firing it, which it never does, is seen only by `wait`.)
    pub fn has_fired(&self) -> bool {
        self.fired_at.is_some() || !self.rx.is_empty()
    }

    /// Wait for the deadline. Cancel-safe: a cancelled wait leaves the timer registered.
    pub async fn wait(&mut self) -> Fired {
        if let Some(at) = self.fired_at {
            return Fired { at, done: None };
        }
        let firing = (&mut self.rx).await;
        let (at, done) = match firing {
            Ok(f) => (f.at, f.done),
            // The registry let go of us without firing (it never does): treat as reached now.
            Err(_) => (self.clock.now(), None),
        };
        self.fired_at = Some(at);
        Fired { at, done }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.fired_at.is_none() {
            self.clock.unregister(self.key, self.id);
        }
    }
}

/// A deadline that has been reached. While it is alive, a jump that fired it waits at `at`.
#[must_use = "dropping the guard lets a jump move past this deadline"]
#[derive(Debug)]
pub struct Fired {
    /// The deadline that fired (as wall time).
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
