//! Is every thread asleep? The driver may skip virtual time only then.
//!
//! One look at /proc is not enough: a thread read as sleeping may wake (a packet, a signal) before the
//! last thread is read. So the scan is done twice and compared. Between the two scans a thread must not
//! have run: for a thread inside a wrapped wait (slot TIMED or UNTIMED) its slot's change counter must be
//! unchanged from the slot read that starts the first scan to just after its state is read in the
//! second (it may wake up between slices, but it never returned to the program); for any other
//! thread, its `schedstat` (CPU arrivals and CPU time) must be unchanged, and it must have been *off its
//! run queue* after that was read: /proc says `S` as soon as a thread has set its sleeping state, while
//! it is still on its CPU, and a thread woken in that instant runs on without a new arrival. `wchan`
//! names a wait channel only for a thread off its run queue (found with the pyenv `python3` shim, whose
//! bash forks were missed about one run in twenty with the arrival count alone). That is needed in the
//! first scan only: off its run queue after its counters were read there, and with the same arrival
//! count in the second, a thread was off its CPU in between (and one woken meanwhile shows `R`).
//! If both scans found every task asleep and nothing changed, there was an instant (the end of the first
//! scan) at which everything was asleep at once, and the slots read then hold the deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use crate::layout::RawThreadSlot;
use crate::procfs::{self, ProcCache};
use crate::shm::{
    free_thread_slot, read_thread_slot, wall_minus_mono, ClockShm, ThreadSlot, ThreadState,
};

/// The answer of [`ClockShm::quiescence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiescence {
    /// Something runs (or a wake is pending): let time flow.
    Busy,
    /// Every thread is asleep; the earliest virtual deadline any of them waits for, if any.
    Idle {
        next_deadline_virt_mono_ns: Option<i64>,
    },
}

/// The details the reference driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub quiescence: Quiescence,
    /// Busy because these threads' deadlines have passed and they have not left their waits yet
    /// (stopped threads are left out: they cannot react until continued).
    pub due: Vec<(i32, i32)>,
}

/// How a task proved it did not run between the two scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Witness {
    /// Slot change counter (the task is inside a wrapped wait).
    Slot(u64),
    /// CPU time used (ns) and CPU arrivals, from schedstat.
    Cpu(u64, u64),
}

#[derive(Default, PartialEq, Eq)]
struct Observation {
    /// (pid, tid) -> (state letter, witness)
    tasks: BTreeMap<(i32, i32), (u8, Witness)>,
}

/// Tasks in these states are asleep for the driver (stopped ones too).
fn asleep(state: u8) -> bool {
    matches!(state, b'S' | b'T' | b't' | b'I')
}

/// Stopped (SIGSTOP, a debugger): asleep, and deaf to the wake signal until continued.
fn stopped(state: u8) -> bool {
    matches!(state, b'T' | b't')
}

/// Gone: nothing to wait for.
fn gone(state: u8) -> bool {
    matches!(state, b'Z' | b'X' | b'x')
}

/// Bound on processes followed through `children`.
const MAX_MEMBERS: usize = 4096;

impl ClockShm {
    /// Idle only if every task of every registered live process (and of their descendants), and every
    /// `extra_tids` thread of the calling process, sleeps — two scans agreeing — and no thread in a timed
    /// wait has a deadline at or before the current virtual time (that wake is still pending).
    /// Processes that are gone (or zombies, or whose pid was reused) are dropped from the table; the
    /// slots of threads that are gone are freed. A sleeping thread without a slot, or whose slot says
    /// running, sleeps in something not wrapped: it counts as an untimed wait.
    pub fn quiescence(&self, extra_tids: &[i32]) -> Quiescence {
        self.scan(extra_tids).quiescence
    }

    pub fn scan(&self, extra_tids: &[i32]) -> Scan {
        let busy = Scan {
            quiescence: Quiescence::Busy,
            due: Vec::new(),
        };
        let mut cache = self.proc_cache();
        let Some((first, _)) = self.observe(&mut cache, extra_tids, Look::First) else {
            return busy;
        };
        let Some((second, slots)) = self.observe(&mut cache, extra_tids, Look::Confirm) else {
            return busy;
        };
        drop(cache);
        if first != second {
            return busy;
        }
        let now = self.now().virt_mono_ns;
        let mut next: Option<i64> = None;
        let mut due = Vec::new();
        for (_, s) in slots.values() {
            let Some(&(state, _)) = second.tasks.get(&(s.pid, s.tid)) else {
                continue;
            };
            if stopped(state) {
                // A stopped thread cannot react: its deadline neither holds time back nor draws it.
                continue;
            }
            if let ThreadState::TimedWait {
                deadline_virt_mono_ns: d,
            } = s.state
            {
                if d <= now {
                    due.push((s.pid, s.tid));
                }
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        if !due.is_empty() {
            return Scan {
                quiescence: Quiescence::Busy,
                due,
            };
        }
        Scan {
            quiescence: Quiescence::Idle {
                next_deadline_virt_mono_ns: next,
            },
            due,
        }
    }

    /// One scan; None as soon as a task is not asleep.
    fn observe(
        &self,
        cache: &mut ProcCache,
        extra_tids: &[i32],
        look: Look,
    ) -> Option<(Observation, Slots)> {
        // Slots first: a slot read before the task's state can only make the comparison stricter.
        let offset = wall_minus_mono(&self.anchor());
        let table = self.thread_slots();
        let slots: Slots = table
            .iter()
            .enumerate()
            .filter_map(|(i, t)| read_thread_slot(t, offset).map(|s| (s.tid, (i, s))))
            .collect();
        let mut obs = Observation::default();

        // Registered processes that are alive; drop the others.
        // (pid, its thread count if its stat was read already)
        let mut queue: Vec<(i32, Option<u64>)> = Vec::new();
        for slot in self.process_slots() {
            let pid = slot.pid.load(Ordering::Acquire);
            if pid == 0 {
                continue;
            }
            match cache.process_stat(pid) {
                None => self.drop_process(pid),
                // A zombie leader with other tasks left: the process is exiting (tearing down its
                // memory can take milliseconds) or its main thread ended alone; either way its other
                // tasks still count.
                Some(st) if gone(st.state) => {
                    if st.num_threads > 1 {
                        queue.push((pid, Some(st.num_threads)));
                    } else {
                        self.drop_process(pid);
                    }
                }
                Some(st) => {
                    let known = slot.start_time.load(Ordering::Acquire);
                    if known != 0 && known != st.start_time {
                        self.drop_process(pid); // the pid now belongs to another process
                    } else {
                        queue.push((pid, Some(st.num_threads)));
                    }
                }
            }
        }

        // Every task of those processes and of their descendants.
        let mut members: BTreeSet<i32> = BTreeSet::new();
        let mut children = Vec::new();
        while let Some((pid, num_threads)) = queue.pop() {
            if !members.insert(pid) || members.len() > MAX_MEMBERS {
                continue;
            }
            // Descendants are found through `children`: their thread count comes from their stat.
            let Some(num_threads) =
                num_threads.or_else(|| cache.process_stat(pid).map(|st| st.num_threads))
            else {
                continue; // exited meanwhile
            };
            let Some(tids) = cache.tasks(pid, num_threads) else {
                continue; // exited meanwhile
            };
            // Reading /proc/<pid>/task stops short when a thread exits under it (the kernel cannot
            // step past a task that is gone), so the threads after it can be missing: a count that
            // differs from the thread count read before means threads come and go: busy.
            if u64::try_from(tids.len()).ok() != Some(num_threads) {
                cache.relist(pid);
                return None;
            }
            for tid in tids {
                let Some(st) = cache.task_stat(pid, tid) else {
                    // Gone: the listing may be stale (a new thread can have taken its place).
                    cache.relist(pid);
                    return None;
                };
                if gone(st.state) {
                    if tid == pid {
                        continue; // a zombie leader: the process's other tasks are what count
                    }
                    // A thread on its way out still runs (its exit), and a thread it started
                    // may be missing from a listing read before.
                    return None;
                }
                if !asleep(st.state) {
                    return None;
                }
                let witness = witness(cache, table, pid, tid, &slots, look)?;
                obs.tasks.insert((pid, tid), (st.state, witness));
                children.clear();
                cache.task_children(pid, tid, &mut children);
                queue.extend(
                    children
                        .iter()
                        .copied()
                        .filter(|c| !members.contains(c))
                        .map(|c| (c, None)),
                );
            }
        }

        // The hub's own threads.
        let me = std::process::id() as i32;
        let caller = crate::current_tid();
        for &tid in extra_tids {
            if tid == caller {
                continue; // the driver's own thread is running by definition
            }
            let Some(st) = cache.task_stat(me, tid) else {
                continue;
            };
            if gone(st.state) {
                continue;
            }
            if !asleep(st.state) {
                return None;
            }
            let witness = cpu_witness(cache, me, tid, look)?;
            obs.tasks.insert((me, tid), (st.state, witness));
        }

        // Housekeeping: slots of threads that are gone.
        for t in self.thread_slots() {
            let tid = t.tid.load(Ordering::Acquire);
            if tid == 0 {
                continue;
            }
            let pid = t.pid.load(Ordering::Acquire);
            if obs.tasks.contains_key(&(pid, tid)) {
                continue;
            }
            if pid != 0 && !procfs::task_exists(pid, tid) {
                free_thread_slot(t, tid);
            }
        }
        if look == Look::Confirm {
            cache.sweep();
        }
        Some((obs, slots))
    }
}

/// Which of the two looks of a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    /// Proves each task off its CPU from here on: CPU counters, then `wchan` (off the run queue).
    First,
    /// Confirms nothing ran since: the same state and the same counters. A task off its run queue
    /// after its counters were read in the first look, with the same CPU arrival count now, was off
    /// its CPU all along; and one woken meanwhile shows `R`. So `wchan` is not read again.
    Confirm,
}

/// The slots read at the start of a look: tid -> (index, slot).
type Slots = BTreeMap<i32, (usize, ThreadSlot)>;

/// A thread in a wrapped wait proves it stayed there by its slot's change counter: the one read at
/// the start of the look, which must not have moved by now (after its state was read), so that the
/// counters compared cover both state readings. Any other thread: its CPU counters.
fn witness(
    cache: &mut ProcCache,
    table: &[RawThreadSlot],
    pid: i32,
    tid: i32,
    slots: &Slots,
    look: Look,
) -> Option<Witness> {
    if let Some((index, s)) = slots.get(&tid) {
        if s.pid == pid && s.state != ThreadState::Running {
            let now = table.get(*index)?.changes.load(Ordering::Acquire);
            if now != s.changes {
                return None;
            }
            return Some(Witness::Slot(s.changes));
        }
    }
    cpu_witness(cache, pid, tid, look)
}

/// The CPU counters of a thread; in the first look, only if it is off its run queue after they were
/// read. None if it is not (or unreadable): then it counts as busy.
fn cpu_witness(cache: &mut ProcCache, pid: i32, tid: i32, look: Look) -> Option<Witness> {
    let (runtime, arrivals) = cache.task_schedstat(pid, tid)?;
    if look == Look::First && !cache.task_off_runqueue(pid, tid)? {
        return None;
    }
    Some(Witness::Cpu(runtime, arrivals))
}
