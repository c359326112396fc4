//! How a device under test reads time.

use std::time::{Duration, SystemTime};

use super::{Fired, VirtualClock, WallTimer};

/// How a device under test reads time: the hub's clock in-process (`Shared`), or its own clocks
/// (`Real`) — which, for a device process started by the runner, are the hub's too: the time preload
/// makes the process's wall and monotonic clocks and its sleeps follow virtual time.
///
/// Device timers are wall deadlines ([`DeviceClock::timer`]). With the shared clock they fire at
/// their own instant, inside a jump too (a jump waits for the device to act).
#[derive(Clone)]
pub enum DeviceClock {
    Shared(VirtualClock),
    Real,
}

impl std::fmt::Debug for DeviceClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceClock::Shared(_) => f.write_str("DeviceClock::Shared"),
            DeviceClock::Real => f.write_str("DeviceClock::Real"),
        }
    }
}

/// A device timer (see [`DeviceClock::timer`]).
pub enum DeviceTimer {
    Shared(WallTimer),
    Real(SystemTime),
}

impl DeviceTimer {
    /// Wait for the deadline. With the shared clock the guard holds a hub jump at the deadline until
    /// dropped. Cancel-safe.
    pub async fn wait(&mut self) -> Option<Fired> {
        match self {
            DeviceTimer::Shared(t) => Some(t.wait().await),
            DeviceTimer::Real(deadline) => loop {
                // One sleep for the whole wait (a wall clock set back is looked at again after it).
                let left = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                if left.is_zero() {
                    return None;
                }
                tokio::time::sleep(left).await;
            },
        }
    }

    /// The deadline.
    pub fn deadline(&self) -> SystemTime {
        match self {
            DeviceTimer::Shared(t) => t.deadline(),
            DeviceTimer::Real(deadline) => *deadline,
        }
    }
}

impl DeviceClock {
    /// Wall time as the device sees it.
    pub fn now(&self) -> SystemTime {
        match self {
            DeviceClock::Shared(c) => c.now(),
            DeviceClock::Real => SystemTime::now(),
        }
    }

    /// A timer for wall time `deadline`, registered now.
    pub fn timer(&self, deadline: SystemTime) -> DeviceTimer {
        match self {
            DeviceClock::Shared(c) => DeviceTimer::Shared(c.timer(deadline)),
            DeviceClock::Real => DeviceTimer::Real(deadline),
        }
    }

    /// A timer `d` from now.
    pub fn timer_in(&self, d: Duration) -> DeviceTimer {
        match self {
            DeviceClock::Shared(c) => DeviceTimer::Shared(c.timer_in(d)),
            DeviceClock::Real => DeviceTimer::Real(super::wall_add(SystemTime::now(), d)),
        }
    }

    /// Sleep for `d` of the device's *monotonic* time: jumps do not shorten it. For timeouts on
    /// network round trips and keep-alive pings: a jump models time that passed while everything
    /// was healthy, so it must not make a reply that is on its way look late.
    pub async fn sleep(&self, d: Duration) {
        match self {
            DeviceClock::Shared(c) => c.sleep(d).await,
            DeviceClock::Real => tokio::time::sleep(d).await,
        }
    }
}
