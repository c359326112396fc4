//! Virtual time for device processes.
//!
//! fakehub runs device programs (Node, CPython, native C, Rust) as child processes and judges them in
//! virtual time. This crate gives the hub what it needs for that:
//!
//! * [`Preload`]: an `LD_PRELOAD` library (C, built by `build.rs`, embedded in the crate) that makes a
//!   process read the hub's virtual clocks and makes every wrapped sleep, timeout and timed wait follow
//!   virtual time;
//! * [`ClockShm`]: the shared-memory clock file through which the hub publishes its clock (an
//!   [`Anchor`]) and sees, for every thread of every process, whether it runs, waits until a virtual
//!   deadline or waits without a timeout;
//! * [`ClockShm::quiescence`] and [`run_until`]: a reference time driver that runs the processes as a
//!   discrete-event simulation: while anything is busy, virtual time flows at the anchor's speed; when
//!   every thread is asleep, it skips virtual time to the earliest deadline and wakes the threads
//!   waiting for it.
//!
//! The file layout, what is wrapped and what is not, and measured figures are in the crate's README.
#![cfg(target_os = "linux")]
#![deny(unsafe_op_in_unsafe_fn)]

mod clock;
mod driver;
mod error;
pub mod layout;
mod preload;
mod procfs;
mod quiescence;
mod shm;

pub use clock::{
    current_tid, real_mono_ns, real_wall_ns, set_current_timer_slack, Anchor, VirtualNow,
};
pub use driver::{run_until, run_until_with, RunOptions, RunReport};
pub use error::Error;
pub use preload::{Preload, PRELOAD_SO};
pub use quiescence::{Quiescence, Scan};
pub use shm::{
    ClockShm, Limits, ProcessSlot, ShmOptions, ThreadSlot, ThreadState, WaitCall, Woken,
};
