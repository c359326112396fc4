//! The shared-memory clock file: creation, the anchor seqlock, the process and thread tables.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::clock::{real_mono_ns, Anchor, VirtualNow};
use crate::layout::{self, RawHeader, RawProcessSlot, RawThreadSlot};
use crate::procfs::{self, ProcCache};
use crate::Error;

/// Table sizes of a clock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Process slots (1 ..= 65,536).
    pub max_processes: u32,
    /// Thread slots, for all processes together (1 ..= 1,048,576).
    pub max_threads: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_processes: 256,
            max_threads: 8192,
        }
    }
}

/// Settings written into the header at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmOptions {
    /// The signal the driver sends to wake a waiting thread (a real-time signal). Default `SIGRTMAX - 2`.
    pub wake_signal: i32,
    /// Longest real wait of a condvar or timed-mutex wait between two clock checks (they cannot be
    /// interrupted by the wake signal). Default 2 ms; 0.1 ms ..= 1 s.
    pub condvar_slice: Duration,
    /// Longest real wait of any other wrapped wait between two clock checks. Default 50 ms; 0.1 ms ..= 10 s.
    pub other_slice: Duration,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            wake_signal: libc::SIGRTMAX() - 2,
            condvar_slice: Duration::from_millis(2),
            other_slice: Duration::from_millis(50),
        }
    }
}

/// What a thread is doing, as its slot says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    /// Not in a wrapped wait.
    Running,
    /// In a wrapped wait that ends at this virtual monotonic time at the latest.
    TimedWait { deadline_virt_mono_ns: i64 },
    /// In a wrapped wait without a timeout.
    UntimedWait,
}

/// Which wrapped function a thread waits in (diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitCall {
    None,
    Nanosleep,
    ClockNanosleep,
    Usleep,
    Sleep,
    Poll,
    Ppoll,
    Select,
    Pselect,
    EpollWait,
    EpollPwait,
    EpollPwait2,
    CondTimedwait,
    CondClockwait,
    CondWait,
    SemWait,
    SemTimedwait,
    SemClockwait,
    MutexTimedlock,
    MutexClocklock,
    FutexWait,
    FutexWaitBitset,
    Other(u32),
}

impl WaitCall {
    fn from_code(c: u32) -> WaitCall {
        use WaitCall::*;
        match c {
            0 => None,
            1 => Nanosleep,
            2 => ClockNanosleep,
            3 => Usleep,
            4 => Sleep,
            5 => Poll,
            6 => Ppoll,
            7 => Select,
            8 => Pselect,
            9 => EpollWait,
            10 => EpollPwait,
            11 => EpollPwait2,
            12 => CondTimedwait,
            13 => CondClockwait,
            14 => CondWait,
            15 => SemWait,
            16 => SemTimedwait,
            17 => SemClockwait,
            18 => MutexTimedlock,
            19 => MutexClocklock,
            20 => FutexWait,
            21 => FutexWaitBitset,
            other => Other(other),
        }
    }
}

/// One claimed thread slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSlot {
    pub pid: i32,
    pub tid: i32,
    /// For a wait on a wall-clock deadline, the deadline is converted to virtual monotonic time with
    /// the anchor current when the slot was read.
    pub state: ThreadState,
    /// The virtual wall-clock deadline, for waits whose deadline is on the wall clock.
    pub wall_deadline_ns: Option<i64>,
    pub call: WaitCall,
    /// Incremented by 2 on every change of the slot.
    pub changes: u64,
}

/// Threads signalled by [`ClockShm::wake_due_tracked`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Woken {
    threads: Vec<WokenThread>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WokenThread {
    /// Slot index.
    index: usize,
    tid: i32,
    /// The slot's change counter when it was signalled.
    changes: u64,
}

impl Woken {
    /// How many threads were signalled.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

/// One claimed process slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSlot {
    pub pid: i32,
    /// The preload inside the process claimed the slot (the process runs on virtual time).
    pub preload: bool,
    /// The hub registered the pid.
    pub registered_by_hub: bool,
    /// The preload could read condition variables' clocks (condvar waits are virtual).
    pub condvar_clock: bool,
    /// `/proc/<pid>/stat` field 22, to tell a reused pid apart.
    pub start_time: u64,
}

/// The clock file, mapped. Unmapped on drop (the file stays; processes keep their own mappings).
pub struct ClockShm {
    base: NonNull<u8>,
    len: usize,
    path: PathBuf,
    limits: Limits,
    options: ShmOptions,
    writer: Mutex<()>,
    /// The /proc files the quiescence scan reads, kept open between scans.
    procs: Mutex<ProcCache>,
}

// SAFETY: the mapping is only accessed through atomics (after creation), and the mapping itself lives
// until drop; the pointer may be used from any thread.
unsafe impl Send for ClockShm {}
// SAFETY: as above; the only non-atomic writes happen in `create`, before the value is shared.
unsafe impl Sync for ClockShm {}

impl Drop for ClockShm {
    fn drop(&mut self) {
        // SAFETY: base/len describe the mapping made in `create`, unmapped only here.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl ClockShm {
    /// Creates the clock file at `path` (replacing an old one: processes still mapping the old file keep
    /// it), sizes it for `limits`, maps it, and publishes an anchor on which virtual time equals real
    /// time and flows at speed 1.
    pub fn create(path: impl AsRef<Path>, limits: Limits) -> Result<ClockShm, Error> {
        Self::create_with(path, limits, ShmOptions::default())
    }

    /// [`ClockShm::create`] with explicit header options.
    pub fn create_with(
        path: impl AsRef<Path>,
        limits: Limits,
        options: ShmOptions,
    ) -> Result<ClockShm, Error> {
        let path = path.as_ref().to_path_buf();
        if limits.max_processes == 0 || limits.max_processes > layout::MAX_PROCESSES_LIMIT {
            return Err(Error::InvalidLimits(format!(
                "max_processes must be 1 ..= {}, not {}",
                layout::MAX_PROCESSES_LIMIT,
                limits.max_processes
            )));
        }
        if limits.max_threads == 0 || limits.max_threads > layout::MAX_THREADS_LIMIT {
            return Err(Error::InvalidLimits(format!(
                "max_threads must be 1 ..= {}, not {}",
                layout::MAX_THREADS_LIMIT,
                limits.max_threads
            )));
        }
        let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        if options.wake_signal < rtmin || options.wake_signal > rtmax {
            return Err(Error::InvalidOptions(format!(
                "wake_signal must be a real-time signal ({rtmin} ..= {rtmax}), not {}",
                options.wake_signal
            )));
        }
        let cv = duration_ns(options.condvar_slice);
        let other = duration_ns(options.other_slice);
        if !(100_000..=1_000_000_000).contains(&cv) {
            return Err(Error::InvalidOptions(format!(
                "condvar_slice must be 0.1 ms ..= 1 s, not {:?}",
                options.condvar_slice
            )));
        }
        if !(100_000..=10_000_000_000).contains(&other) {
            return Err(Error::InvalidOptions(format!(
                "other_slice must be 0.1 ms ..= 10 s, not {:?}",
                options.other_slice
            )));
        }
        let len = layout::file_size(limits.max_processes, limits.max_threads)
            .ok_or_else(|| Error::InvalidLimits("file size overflows".into()))?;

        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "cannot replace the clock file",
                    path,
                    source,
                })
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| Error::Io {
                what: "cannot create the clock file",
                path: path.clone(),
                source,
            })?;
        // The header's constant part, written through the file before anyone maps it.
        let mut header = Vec::with_capacity(layout::HEADER_SIZE);
        header.extend_from_slice(&layout::MAGIC);
        header.extend_from_slice(&layout::VERSION.to_le_bytes());
        header.extend_from_slice(&(layout::HEADER_SIZE as u32).to_le_bytes());
        header.extend_from_slice(&limits.max_processes.to_le_bytes());
        header.extend_from_slice(&limits.max_threads.to_le_bytes());
        header.extend_from_slice(&(layout::PROCESS_SLOT_SIZE as u32).to_le_bytes());
        header.extend_from_slice(&(layout::THREAD_SLOT_SIZE as u32).to_le_bytes());
        header.extend_from_slice(&options.wake_signal.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&cv.to_le_bytes());
        header.extend_from_slice(&other.to_le_bytes());
        header.resize(layout::HEADER_SIZE, 0);
        file.write_all(&header).map_err(|source| Error::Io {
            what: "cannot write the clock file",
            path: path.clone(),
            source,
        })?;
        file.set_len(len as u64).map_err(|source| Error::Io {
            what: "cannot size the clock file",
            path: path.clone(),
            source,
        })?;
        // SAFETY: mapping a regular file we just sized to `len` bytes, shared and read-write.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Map {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::Map {
            path: path.clone(),
            source: std::io::Error::other("mmap returned NULL"),
        })?;
        let shm = ClockShm {
            base,
            len,
            path,
            limits,
            options,
            writer: Mutex::new(()),
            procs: Mutex::new(ProcCache::default()),
        };
        shm.publish(Anchor::real_now(1.0))?;
        Ok(shm)
    }

    pub(crate) fn proc_cache(&self) -> std::sync::MutexGuard<'_, ProcCache> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table sizes.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The header options.
    pub fn options(&self) -> ShmOptions {
        self.options
    }

    fn header(&self) -> *const RawHeader {
        self.base.as_ptr().cast::<RawHeader>().cast_const()
    }

    fn seq(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: the header lies at the start of the live mapping; `seq` is an atomic field.
        unsafe { &(*self.header()).seq }
    }

    fn raw_anchor(&self) -> &layout::RawAnchor {
        // SAFETY: as above; every field of the anchor is atomic.
        unsafe { &(*self.header()).anchor }
    }

    pub(crate) fn process_slots(&self) -> &[RawProcessSlot] {
        // SAFETY: the process table follows the header inside the mapping (its size was computed from
        // the same limits); every field is atomic and the memory is page-aligned + 128.
        unsafe {
            std::slice::from_raw_parts(
                self.base
                    .as_ptr()
                    .add(layout::HEADER_SIZE)
                    .cast::<RawProcessSlot>(),
                self.limits.max_processes as usize,
            )
        }
    }

    /// The thread slots that were ever claimed: the table up to its high-water mark (a thread raises
    /// the mark before it claims a slot; the mark is clamped to the table).
    pub(crate) fn thread_slots(&self) -> &[RawThreadSlot] {
        let all = self.all_thread_slots();
        // SAFETY: the header lies at the start of the live mapping; `thread_hwm` is atomic.
        let hwm = unsafe { &(*self.header()).thread_hwm }.load(Ordering::Acquire);
        let hwm = usize::try_from(hwm).unwrap_or(usize::MAX);
        all.get(..hwm).unwrap_or(all)
    }

    fn all_thread_slots(&self) -> &[RawThreadSlot] {
        let off = layout::thread_table_offset(self.limits.max_processes).unwrap_or(self.len);
        // SAFETY: the thread table lies at `off` inside the mapping and holds max_threads slots (checked
        // by `file_size` in `create`); every field is atomic.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(off).cast::<RawThreadSlot>(),
                self.limits.max_threads as usize,
            )
        }
    }

    /// Writes a new anchor under the seqlock. `make` gets the current anchor re-anchored at the real
    /// time read inside the write section (so the new timeline continues exactly where processes are),
    /// and returns the anchor to publish.
    pub fn rebase(&self, make: impl FnOnce(Anchor) -> Anchor) -> Result<Anchor, Error> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = self.seq();
        let base = seq.load(Ordering::Relaxed) & !1;
        seq.store(base.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let now = real_mono_ns();
        let current = self.load_anchor_relaxed().rebased_at(now);
        let new = make(current);
        let result = new.validate().map(|()| {
            self.store_anchor_relaxed(&new);
            new
        });
        seq.store(base.wrapping_add(2), Ordering::Release);
        result
    }

    /// Publishes `anchor` as given (seqlock write). Use [`ClockShm::rebase`] (or the helpers built on
    /// it) to change the clock without a discontinuity.
    pub fn publish(&self, anchor: Anchor) -> Result<(), Error> {
        anchor.validate()?;
        self.rebase(|_| anchor).map(|_| ())
    }

    fn load_anchor_relaxed(&self) -> Anchor {
        let a = self.raw_anchor();
        Anchor {
            real_mono_ns: a.real_mono_ns.load(Ordering::Relaxed),
            virt_mono_ns: a.virt_mono_ns.load(Ordering::Relaxed),
            virt_wall_ns: a.virt_wall_ns.load(Ordering::Relaxed),
            speed: f64::from_bits(a.speed_bits.load(Ordering::Relaxed)),
        }
    }

    fn store_anchor_relaxed(&self, n: &Anchor) {
        let a = self.raw_anchor();
        a.real_mono_ns.store(n.real_mono_ns, Ordering::Relaxed);
        a.virt_mono_ns.store(n.virt_mono_ns, Ordering::Relaxed);
        a.virt_wall_ns.store(n.virt_wall_ns, Ordering::Relaxed);
        a.speed_bits.store(n.speed.to_bits(), Ordering::Relaxed);
    }

    /// The current anchor (seqlock read).
    pub fn anchor(&self) -> Anchor {
        self.read_consistent(|| ()).0
    }

    /// Virtual time now, as the processes compute it.
    pub fn now(&self) -> VirtualNow {
        let (a, real) = self.read_consistent(real_mono_ns);
        VirtualNow {
            real_mono_ns: real,
            virt_mono_ns: a.virt_mono_at(real),
            virt_wall_ns: a.virt_wall_at(real),
            speed: a.speed,
        }
    }

    fn read_consistent<T>(&self, mut also: impl FnMut() -> T) -> (Anchor, T) {
        let seq = self.seq();
        loop {
            let s1 = seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let a = self.load_anchor_relaxed();
            let t = also();
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == s1 {
                return (a, t);
            }
        }
    }

    /// Changes the speed from now on (virtual time continues where it is).
    pub fn set_speed(&self, speed: f64) -> Result<Anchor, Error> {
        self.rebase(|cur| Anchor { speed, ..cur })
    }

    /// Moves virtual monotonic and wall time forward together so that virtual monotonic time is
    /// `target_virt_mono_ns` now (nothing happens if it is already later).
    pub fn skip_to(&self, target_virt_mono_ns: i64) -> Result<Anchor, Error> {
        self.rebase(|cur| {
            let by = target_virt_mono_ns.saturating_sub(cur.virt_mono_ns);
            if by <= 0 {
                return cur;
            }
            Anchor {
                virt_mono_ns: cur.virt_mono_ns.saturating_add(by),
                virt_wall_ns: cur.virt_wall_ns.saturating_add(by),
                ..cur
            }
        })
    }

    /// Moves only the virtual wall clock by `delta_ns` (either way); virtual monotonic time does not
    /// move. Follow with [`ClockShm::wake_all_timed`] so that waits on wall-clock deadlines re-evaluate.
    pub fn jump_wall(&self, delta_ns: i64) -> Result<Anchor, Error> {
        self.rebase(|cur| Anchor {
            virt_wall_ns: cur.virt_wall_ns.saturating_add(delta_ns),
            ..cur
        })
    }

    /// The environment a process needs to run on this clock: `LD_PRELOAD` (the hub's own
    /// `LD_PRELOAD`, if any, with the preload appended) and `FAKEHUB_CLOCK_SHM`.
    pub fn env(&self, preload_path: &Path) -> Vec<(OsString, OsString)> {
        self.env_appending(preload_path, std::env::var_os("LD_PRELOAD").as_deref())
    }

    /// [`ClockShm::env`] with the existing `LD_PRELOAD` given explicitly (the preload is appended to it).
    pub fn env_appending(
        &self,
        preload_path: &Path,
        existing_ld_preload: Option<&OsStr>,
    ) -> Vec<(OsString, OsString)> {
        let mut ld = OsString::new();
        if let Some(existing) = existing_ld_preload {
            if !existing.is_empty() {
                ld.push(existing);
                ld.push(":");
            }
        }
        ld.push(preload_path.as_os_str());
        vec![
            (OsString::from("LD_PRELOAD"), ld),
            (
                OsString::from(layout::ENV_SHM),
                self.path.as_os_str().to_os_string(),
            ),
        ]
    }

    /// Registers a process the hub has just spawned, so that the driver counts it (and its children)
    /// from the start, before the preload inside it has run. The preload adopts the slot.
    pub fn register_process(&self, pid: i32) -> Result<(), Error> {
        if pid <= 0 {
            return Err(Error::InvalidOptions(format!("not a pid: {pid}")));
        }
        let start = procfs::process_stat(pid).map(|s| s.start_time).unwrap_or(0);
        let slots = self.process_slots();
        let slot = slots
            .iter()
            .find(|s| s.pid.load(Ordering::Acquire) == pid)
            .or_else(|| {
                slots.iter().find(|s| {
                    s.pid
                        .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                })
            })
            .ok_or(Error::ProcessTableFull(self.limits.max_processes))?;
        if start != 0 {
            let _ = slot
                .start_time
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed);
        }
        slot.flags.fetch_or(layout::PROC_HUB, Ordering::AcqRel);
        Ok(())
    }

    /// The claimed process slots, one per pid (the hub's registration and the preload's own claim can
    /// race into two slots; they are merged here).
    pub fn processes(&self) -> Vec<ProcessSlot> {
        let mut by_pid: std::collections::BTreeMap<i32, ProcessSlot> =
            std::collections::BTreeMap::new();
        for s in self.process_slots() {
            let pid = s.pid.load(Ordering::Acquire);
            if pid == 0 {
                continue;
            }
            let flags = s.flags.load(Ordering::Acquire);
            let start_time = s.start_time.load(Ordering::Acquire);
            let e = by_pid.entry(pid).or_insert(ProcessSlot {
                pid,
                preload: false,
                registered_by_hub: false,
                condvar_clock: false,
                start_time,
            });
            e.preload |= flags & layout::PROC_PRELOAD != 0;
            e.registered_by_hub |= flags & layout::PROC_HUB != 0;
            e.condvar_clock |= flags & layout::PROC_CONDVAR_CLOCK != 0;
            if e.start_time == 0 {
                e.start_time = start_time;
            }
        }
        by_pid.into_values().collect()
    }

    /// The claimed thread slots.
    pub fn threads(&self) -> Vec<ThreadSlot> {
        let offset = wall_minus_mono(&self.anchor());
        self.thread_slots()
            .iter()
            .filter_map(|t| read_thread_slot(t, offset))
            .collect()
    }

    /// Sends the wake signal to every thread in a timed wait whose deadline is at or before
    /// `virt_mono_now` (except stopped ones); returns how many were signalled.
    pub fn wake_due(&self, virt_mono_now: i64) -> usize {
        self.wake_due_tracked(virt_mono_now).len()
    }

    /// [`ClockShm::wake_due`], returning the threads signalled, to follow with
    /// [`ClockShm::rewaited`].
    pub fn wake_due_tracked(&self, virt_mono_now: i64) -> Woken {
        self.wake_where(|d| d <= virt_mono_now)
    }

    /// Sends the wake signal to every thread in a timed wait (after a wall-clock jump or a speed
    /// change, so that every wait recomputes its deadline and real timeout).
    pub fn wake_all_timed(&self) -> usize {
        self.wake_where(|_| true).len()
    }

    /// Stopped threads are skipped: the wake signal is a queued real-time signal, and a stopped thread
    /// would pile them up.
    fn wake_where(&self, due: impl Fn(i64) -> bool) -> Woken {
        let offset = wall_minus_mono(&self.anchor());
        let mut woken = Woken::default();
        for (index, raw) in self.thread_slots().iter().enumerate() {
            let Some(slot) = read_thread_slot(raw, offset) else {
                continue;
            };
            if let ThreadState::TimedWait {
                deadline_virt_mono_ns,
            } = slot.state
            {
                if !due(deadline_virt_mono_ns) {
                    continue;
                }
                let stopped = self
                    .proc_cache()
                    .task_stat(slot.pid, slot.tid)
                    .is_some_and(|st| matches!(st.state, b'T' | b't'));
                if !stopped && self.wake_thread(slot.pid, slot.tid) {
                    woken.threads.push(WokenThread {
                        index,
                        tid: slot.tid,
                        changes: slot.changes,
                    });
                }
            }
        }
        woken
    }

    /// Whether every thread of `woken` has left the wait it was woken from and waits again (or is
    /// gone), as its slot says: cheap (a few loads from the clock file), so a driver can watch for it
    /// closely before it pays for a scan. It says nothing about the threads those woke in turn.
    pub fn rewaited(&self, woken: &Woken) -> bool {
        let slots = self.thread_slots();
        woken.threads.iter().all(|w| {
            let Some(t) = slots.get(w.index) else {
                return true;
            };
            let changes = t.changes.load(Ordering::Acquire);
            if t.tid.load(Ordering::Acquire) != w.tid {
                return true; // gone (its slot freed, maybe claimed again)
            }
            let state = t.state.load(Ordering::Acquire);
            let settled = changes & 1 == 0
                && changes >= w.changes.saturating_add(2)
                && state != layout::STATE_RUNNING;
            // the state must belong to the same version of the slot
            settled && t.changes.load(Ordering::Acquire) == changes
        })
    }

    /// Sends the wake signal to one thread.
    pub fn wake_thread(&self, pid: i32, tid: i32) -> bool {
        tgkill(pid, tid, self.options.wake_signal)
    }

    /// Frees the slots of a process that is gone (every slot holding its pid), with its threads' slots.
    pub(crate) fn drop_process(&self, pid: i32) {
        for slot in self.process_slots() {
            if slot
                .pid
                .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.flags.store(0, Ordering::Release);
                slot.start_time.store(0, Ordering::Release);
            }
        }
        for t in self.thread_slots() {
            if t.pid.load(Ordering::Acquire) == pid {
                let tid = t.tid.load(Ordering::Acquire);
                if tid != 0 {
                    free_thread_slot(t, tid);
                }
            }
        }
    }
}

/// Frees a thread slot whose thread is gone (CAS on the tid, so a slot claimed meanwhile stays).
pub(crate) fn free_thread_slot(t: &RawThreadSlot, tid: i32) {
    if t.tid.load(Ordering::Acquire) != tid {
        return;
    }
    t.state.store(layout::STATE_RUNNING, Ordering::Release);
    let _ = t
        .tid
        .compare_exchange(tid, 0, Ordering::AcqRel, Ordering::Relaxed);
}

/// `virt_wall - virt_mono`: the same at every instant of one anchor's timeline.
pub(crate) fn wall_minus_mono(a: &Anchor) -> i64 {
    a.virt_wall_ns.saturating_sub(a.virt_mono_ns)
}

/// A consistent read of one slot (its `changes` counter is a seqlock); None if free or unreadable.
/// `wall_minus_mono` converts wall-clock deadlines (see [`wall_minus_mono`]).
pub(crate) fn read_thread_slot(t: &RawThreadSlot, wall_minus_mono: i64) -> Option<ThreadSlot> {
    // Most of the table is free: one load says so (a slot claimed just after it reads as it was a
    // moment earlier).
    if t.tid.load(Ordering::Acquire) == 0 {
        return None;
    }
    for _ in 0..1000 {
        let c1 = t.changes.load(Ordering::Acquire);
        if c1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let tid = t.tid.load(Ordering::Relaxed);
        let pid = t.pid.load(Ordering::Relaxed);
        let state = t.state.load(Ordering::Relaxed);
        let call = t.call.load(Ordering::Relaxed);
        let deadline = t.deadline_ns.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if t.changes.load(Ordering::Relaxed) != c1 {
            continue;
        }
        if tid == 0 {
            return None;
        }
        let (state, wall_deadline_ns) = match state {
            layout::STATE_TIMED => (
                ThreadState::TimedWait {
                    deadline_virt_mono_ns: deadline,
                },
                None,
            ),
            layout::STATE_TIMED_WALL => (
                ThreadState::TimedWait {
                    deadline_virt_mono_ns: deadline.saturating_sub(wall_minus_mono),
                },
                Some(deadline),
            ),
            layout::STATE_UNTIMED => (ThreadState::UntimedWait, None),
            _ => (ThreadState::Running, None),
        };
        return Some(ThreadSlot {
            pid,
            tid,
            state,
            wall_deadline_ns,
            call: WaitCall::from_code(call),
            changes: c1,
        });
    }
    None
}

fn tgkill(pid: i32, tid: i32, sig: i32) -> bool {
    if pid <= 0 || tid <= 0 {
        return false;
    }
    // SAFETY: tgkill takes plain integers; it signals `tid` only if it belongs to thread group `pid`.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    rc == 0
}
