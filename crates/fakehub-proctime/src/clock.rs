//! Real clocks of the hub process and the anchor arithmetic (the same as the preload's).

/// The hub's clock at one real instant: `virtual = virt + (real_mono_now - real_mono_ns) * speed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anchor {
    /// Real `CLOCK_MONOTONIC` at the anchor, ns.
    pub real_mono_ns: i64,
    /// Virtual monotonic time at the anchor, ns.
    pub virt_mono_ns: i64,
    /// Virtual wall-clock time (Unix epoch) at the anchor, ns.
    pub virt_wall_ns: i64,
    /// Virtual seconds per real second while time flows; finite and >= 0 (0: time only moves by skips).
    pub speed: f64,
}

/// Virtual time now, read consistently with the anchor it was computed from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VirtualNow {
    /// Real `CLOCK_MONOTONIC`, ns.
    pub real_mono_ns: i64,
    /// Virtual monotonic, ns.
    pub virt_mono_ns: i64,
    /// Virtual wall clock, ns after the Unix epoch.
    pub virt_wall_ns: i64,
    /// The anchor's speed.
    pub speed: f64,
}

impl Anchor {
    /// An anchor on which virtual time equals real time now, flowing at `speed`.
    pub fn real_now(speed: f64) -> Anchor {
        let real_mono_ns = real_mono_ns();
        Anchor {
            real_mono_ns,
            virt_mono_ns: real_mono_ns,
            virt_wall_ns: real_wall_ns(),
            speed,
        }
    }

    /// Virtual time elapsed for `real_elapsed_ns` of real time (saturating).
    pub fn scale(&self, real_elapsed_ns: i64) -> i64 {
        if self.speed == 1.0 {
            return real_elapsed_ns;
        }
        // `as` saturates (and maps NaN to 0), as the preload's conversion does.
        (real_elapsed_ns as f64 * self.speed) as i64
    }

    /// Virtual monotonic time at a real monotonic instant.
    pub fn virt_mono_at(&self, real_mono_ns: i64) -> i64 {
        self.virt_mono_ns
            .saturating_add(self.scale(real_mono_ns.saturating_sub(self.real_mono_ns)))
    }

    /// Virtual wall-clock time at a real monotonic instant.
    pub fn virt_wall_at(&self, real_mono_ns: i64) -> i64 {
        self.virt_wall_ns
            .saturating_add(self.scale(real_mono_ns.saturating_sub(self.real_mono_ns)))
    }

    /// The same timeline, re-anchored at `real_mono_ns`.
    pub fn rebased_at(&self, real_mono_ns: i64) -> Anchor {
        Anchor {
            real_mono_ns,
            virt_mono_ns: self.virt_mono_at(real_mono_ns),
            virt_wall_ns: self.virt_wall_at(real_mono_ns),
            speed: self.speed,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if !self.speed.is_finite() || self.speed < 0.0 || self.speed > 1e12 {
            return Err(crate::Error::InvalidAnchor(format!(
                "speed must be finite, >= 0 and <= 1e12, not {}",
                self.speed
            )));
        }
        Ok(())
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes nothing else.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// The real `CLOCK_MONOTONIC` of this (hub) process, ns.
pub fn real_mono_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The real `CLOCK_REALTIME`, ns after the Unix epoch.
pub fn real_wall_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// The calling thread's kernel thread id (for `extra_tids`).
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how much later than asked the kernel
/// may end its sleeps (default 50 µs). A driver that sleeps 100 µs between looks wants it small.
/// Returns false if the kernel refused.
pub fn set_current_timer_slack(ns: u32) -> bool {
    let ns = libc::c_ulong::from(ns.max(1));
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_SET_TIMERSLACK takes plain integers and affects only the calling thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, zero, zero, zero) };
    rc == 0
}
