//! How a device under test reads time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{Fired, VirtualClock, WallTimer};

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
