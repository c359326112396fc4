//! The clock file's layout, mirroring `preload/fakehub_clock_shm.h` (checked by `tests/layout.rs`).
//!
//! ```text
//! offset  size  field
//! header (128 bytes, written once by the hub except seq, anchor and thread_hwm)
//!      0     8  magic "FHCLOCK1"
//!      8     4  version (2)
//!     12     4  header_size (128)
//!     16     4  max_processes
//!     20     4  max_threads
//!     24     4  process_slot_size (16)
//!     28     4  thread_slot_size (32)
//!     32     4  wake_signal (i32)
//!     36     4  flags (0)
//!     40     8  condvar_slice_ns (i64)
//!     48     8  other_slice_ns (i64)
//!     56     8  seq (u64 seqlock, odd while the hub writes the anchor)
//!     64     8  anchor.real_mono_ns (i64)
//!     72     8  anchor.virt_mono_ns (i64)
//!     80     8  anchor.virt_wall_ns (i64)
//!     88     8  anchor.speed (f64 bits)
//!     96     4  thread_hwm (u32: one past the highest thread slot ever claimed; raised by a thread
//!               before it claims a slot, so the hub reads the thread table up to it only)
//!    100    28  reserved
//! process table at 128: max_processes slots of 16 bytes
//!     +0     4  pid (i32, 0 = free)
//!     +4     4  flags (1 preload, 2 hub, 4 condvar clock readable)
//!     +8     8  start_time (u64, /proc/<pid>/stat field 22)
//! thread table at 128 + 16 * max_processes: max_threads slots of 32 bytes
//!     +0     4  tid (i32, 0 = free)
//!     +4     4  pid (i32)
//!     +8     4  state (0 running, 1 timed wait, 2 untimed wait, 3 timed wait on a wall-clock deadline)
//!    +12     4  call (which wrapped function; diagnostics)
//!    +16     8  deadline_ns (i64: virtual monotonic for state 1, virtual wall clock for state 3)
//!    +24     8  changes (u64; odd while the thread rewrites its slot)
//! ```

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64};

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"FHCLOCK1";
/// Layout version.
pub const VERSION: u32 = 2;
/// Header size in bytes.
pub const HEADER_SIZE: usize = 128;
/// Size of one process slot.
pub const PROCESS_SLOT_SIZE: usize = 16;
/// Size of one thread slot.
pub const THREAD_SLOT_SIZE: usize = 32;
/// Largest process table the preload accepts.
pub const MAX_PROCESSES_LIMIT: u32 = 65_536;
/// Largest thread table the preload accepts.
pub const MAX_THREADS_LIMIT: u32 = 1 << 20;
/// The environment variable naming the clock file.
pub const ENV_SHM: &str = "FAKEHUB_CLOCK_SHM";

/// Thread slot states.
pub const STATE_RUNNING: u32 = 0;
/// In a wrapped wait with a virtual deadline.
pub const STATE_TIMED: u32 = 1;
/// In a wrapped wait without a timeout.
pub const STATE_UNTIMED: u32 = 2;
/// In a wrapped wait with a virtual wall-clock deadline (converted with the current anchor, so that a
/// wall-clock jump moves it even before the thread has looked at the clock again).
pub const STATE_TIMED_WALL: u32 = 3;

/// Process slot flags.
pub const PROC_PRELOAD: u32 = 1;
/// Registered by the hub.
pub const PROC_HUB: u32 = 2;
/// The preload could read condvar clocks, so condvar waits are virtual.
pub const PROC_CONDVAR_CLOCK: u32 = 4;

#[repr(C)]
pub(crate) struct RawAnchor {
    pub real_mono_ns: AtomicI64,
    pub virt_mono_ns: AtomicI64,
    pub virt_wall_ns: AtomicI64,
    pub speed_bits: AtomicU64,
}

#[repr(C)]
pub(crate) struct RawHeader {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub max_processes: u32,
    pub max_threads: u32,
    pub process_slot_size: u32,
    pub thread_slot_size: u32,
    pub wake_signal: i32,
    pub flags: u32,
    pub condvar_slice_ns: i64,
    pub other_slice_ns: i64,
    pub seq: AtomicU64,
    pub anchor: RawAnchor,
    pub thread_hwm: AtomicU32,
    pub reserved32: u32,
    pub reserved: [u64; 3],
}

#[repr(C)]
pub(crate) struct RawProcessSlot {
    pub pid: AtomicI32,
    pub flags: AtomicU32,
    pub start_time: AtomicU64,
}

#[repr(C)]
pub(crate) struct RawThreadSlot {
    pub tid: AtomicI32,
    pub pid: AtomicI32,
    pub state: AtomicU32,
    pub call: AtomicU32,
    pub deadline_ns: AtomicI64,
    pub changes: AtomicU64,
}

const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(size_of::<RawProcessSlot>() == PROCESS_SLOT_SIZE);
const _: () = assert!(size_of::<RawThreadSlot>() == THREAD_SLOT_SIZE);
#[cfg(not(target_endian = "little"))]
compile_error!("the clock file is little-endian");

/// Offset of the thread table for a process table of `max_processes` slots.
pub fn thread_table_offset(max_processes: u32) -> Option<usize> {
    (max_processes as usize)
        .checked_mul(PROCESS_SLOT_SIZE)?
        .checked_add(HEADER_SIZE)
}

/// Size of the whole file.
pub fn file_size(max_processes: u32, max_threads: u32) -> Option<usize> {
    thread_table_offset(max_processes)?
        .checked_add((max_threads as usize).checked_mul(THREAD_SLOT_SIZE)?)
}

/// Every field's offset and every struct's size, named as the C header names them; the layout test
/// compares this table with the same table printed by a C program compiled against the header.
pub fn layout_table() -> Vec<(&'static str, usize)> {
    vec![
        ("sizeof(fh_header)", size_of::<RawHeader>()),
        ("sizeof(fh_anchor)", size_of::<RawAnchor>()),
        ("sizeof(fh_process_slot)", size_of::<RawProcessSlot>()),
        ("sizeof(fh_thread_slot)", size_of::<RawThreadSlot>()),
        ("fh_header.magic", offset_of!(RawHeader, magic)),
        ("fh_header.version", offset_of!(RawHeader, version)),
        ("fh_header.header_size", offset_of!(RawHeader, header_size)),
        (
            "fh_header.max_processes",
            offset_of!(RawHeader, max_processes),
        ),
        ("fh_header.max_threads", offset_of!(RawHeader, max_threads)),
        (
            "fh_header.process_slot_size",
            offset_of!(RawHeader, process_slot_size),
        ),
        (
            "fh_header.thread_slot_size",
            offset_of!(RawHeader, thread_slot_size),
        ),
        ("fh_header.wake_signal", offset_of!(RawHeader, wake_signal)),
        ("fh_header.flags", offset_of!(RawHeader, flags)),
        (
            "fh_header.condvar_slice_ns",
            offset_of!(RawHeader, condvar_slice_ns),
        ),
        (
            "fh_header.other_slice_ns",
            offset_of!(RawHeader, other_slice_ns),
        ),
        ("fh_header.seq", offset_of!(RawHeader, seq)),
        ("fh_header.anchor", offset_of!(RawHeader, anchor)),
        ("fh_header.thread_hwm", offset_of!(RawHeader, thread_hwm)),
        ("fh_header.reserved32", offset_of!(RawHeader, reserved32)),
        ("fh_header.reserved", offset_of!(RawHeader, reserved)),
        (
            "fh_anchor.real_mono_ns",
            offset_of!(RawAnchor, real_mono_ns),
        ),
        (
            "fh_anchor.virt_mono_ns",
            offset_of!(RawAnchor, virt_mono_ns),
        ),
        (
            "fh_anchor.virt_wall_ns",
            offset_of!(RawAnchor, virt_wall_ns),
        ),
        ("fh_anchor.speed_bits", offset_of!(RawAnchor, speed_bits)),
        ("fh_process_slot.pid", offset_of!(RawProcessSlot, pid)),
        ("fh_process_slot.flags", offset_of!(RawProcessSlot, flags)),
        (
            "fh_process_slot.start_time",
            offset_of!(RawProcessSlot, start_time),
        ),
        ("fh_thread_slot.tid", offset_of!(RawThreadSlot, tid)),
        ("fh_thread_slot.pid", offset_of!(RawThreadSlot, pid)),
        ("fh_thread_slot.state", offset_of!(RawThreadSlot, state)),
        ("fh_thread_slot.call", offset_of!(RawThreadSlot, call)),
        (
            "fh_thread_slot.deadline_ns",
            offset_of!(RawThreadSlot, deadline_ns),
        ),
        ("fh_thread_slot.changes", offset_of!(RawThreadSlot, changes)),
        ("FH_PROCESS_TABLE_OFFSET", HEADER_SIZE),
        (
            "FH_THREAD_TABLE_OFFSET(3)",
            thread_table_offset(3).unwrap_or(0),
        ),
        ("FH_FILE_SIZE(3,5)", file_size(3, 5).unwrap_or(0)),
    ]
}
