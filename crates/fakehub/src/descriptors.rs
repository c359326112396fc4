//! File descriptors: every TCP connection and device process costs some, and the soft limit a
//! shell hands a process (often 1024) is far below what the kernel allows it.
//!
//! [`raise_limit`] lifts the soft limit to the hard one (the `fakehub` command does it at start).
//! When the hub is out of descriptors all the same, the accept loop refuses new TCP connections
//! cleanly: it keeps one descriptor in reserve, and on `EMFILE`/`ENFILE` gives it up to accept the
//! waiting connection and reset it at once, so a device sees a refusal instead of a handshake that
//! never finishes (see `frontdoor`).

use std::fs::File;
use std::io;

/// The soft and hard limits on open descriptors (`RLIMIT_NOFILE`).
pub fn limits() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rl.rlim_cur, rl.rlim_max))
}

/// Raise the soft limit on open descriptors to the hard limit. Returns the limit now in force.
pub fn raise_limit() -> io::Result<u64> {
    let (soft, hard) = limits()?;
    if soft >= hard {
        return Ok(soft);
    }
    let rl = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard)
}

/// Whether an error means the process (or the system) is out of descriptors.
pub fn exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor held back, to be given up when the others run out.
pub(crate) struct Reserve(Option<File>);

impl Reserve {
    pub fn new() -> Reserve {
        Reserve(File::open("/dev/null").ok())
    }

    /// Give the descriptor up (to accept a connection in order to refuse it).
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Take a descriptor back, if one is free again.
    pub fn refill(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}
