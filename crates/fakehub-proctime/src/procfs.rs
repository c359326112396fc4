//! The bits of /proc the time driver reads. Everything here tolerates vanished tasks and odd content:
//! a file that cannot be read or parsed yields None.
//!
//! The driver looks at the same few files thousands of times a second, so [`ProcCache`] keeps them
//! open and reads them again from offset 0 (procfs regenerates a file's content on every read at
//! offset 0): one `pread` instead of `open` + `read` + `close`, and no path walk. An open file stays
//! bound to the task it was opened for: once that task is gone it fails (ESRCH), and the cache opens
//! the path again (which may name a new task with a reused id).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// A task's scheduler state letter (field 3 of `stat`), its process's thread count (field 20) and
/// its start time (field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: u8,
    pub num_threads: u64,
    pub start_time: u64,
}

fn read_small(path: &str, buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    let mut f = std::fs::File::open(path).ok()?;
    f.by_ref().take(64 * 1024).read_to_end(buf).ok()?;
    Some(())
}

/// Parses a `stat` line: `pid (comm) S f4 f5 …`; comm may hold spaces and parentheses.
pub(crate) fn parse_stat(content: &[u8]) -> Option<Stat> {
    let close = content.iter().rposition(|&b| b == b')')?;
    let rest = content.get(close.checked_add(1)?..)?;
    let text = std::str::from_utf8(rest).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // fields 4 ..= 19 are 16 fields; field 20 follows, then 21, then 22
    let num_threads = fields.nth(16)?.parse::<u64>().ok()?;
    let start_time = fields.nth(1)?.parse::<u64>().ok()?;
    Some(Stat {
        state,
        num_threads,
        start_time,
    })
}

/// `schedstat`: the CPU time the task has used (ns, brought up to date whenever it leaves a CPU) and
/// how many times it got a CPU.
pub(crate) fn parse_schedstat(content: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(content).ok()?;
    let mut f = text.split_ascii_whitespace();
    let runtime = f.next()?.parse().ok()?;
    let arrivals = f.nth(1)?.parse().ok()?;
    Some((runtime, arrivals))
}

/// Reads a whole procfs file from offset 0 with `pread`.
fn pread_all(f: &File, buf: &mut Vec<u8>) -> Option<()> {
    const CHUNK: usize = 1024;
    const MAX: usize = 64 * 1024;
    buf.clear();
    loop {
        let start = buf.len();
        let end = start.checked_add(CHUNK)?;
        buf.resize(end, 0);
        let offset = u64::try_from(start).ok()?;
        match f.read_at(buf.get_mut(start..)?, offset) {
            Ok(n) => {
                buf.truncate(start.saturating_add(n.min(CHUNK)));
                // a seq_file read fills the buffer unless the content ends
                if n < CHUNK || buf.len() >= MAX {
                    return Some(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(start),
            Err(_) => return None,
        }
    }
}

/// How many files the cache may keep open: a quarter of the soft `RLIMIT_NOFILE`, at most 1024 (the
/// hub needs its descriptors for sockets; beyond the budget, files are opened for each read).
fn fd_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits into `lim`, a valid rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return 64;
    }
    usize::try_from(lim.rlim_cur / 4).unwrap_or(1024).min(1024)
}

/// One /proc file, kept open while the budget allows.
#[derive(Default)]
struct ProcFile {
    file: Option<File>,
}

/// Open files against the budget.
struct Fds {
    open: usize,
    max: usize,
}

impl ProcFile {
    /// Reads the whole file into `buf`; `path` names it. A kept file that fails (its task is gone) is
    /// closed and the path is opened again.
    fn read(
        &mut self,
        path: impl FnOnce() -> String,
        buf: &mut Vec<u8>,
        fds: &mut Fds,
    ) -> Option<()> {
        if let Some(f) = &self.file {
            if pread_all(f, buf).is_some() {
                return Some(());
            }
            self.close(fds);
        }
        let path = path();
        if fds.open < fds.max {
            let f = File::open(&path).ok()?;
            fds.open = fds.open.saturating_add(1);
            let f = self.file.insert(f);
            pread_all(f, buf)
        } else {
            read_small(&path, buf)
        }
    }

    fn close(&mut self, fds: &mut Fds) {
        if self.file.take().is_some() {
            fds.open = fds.open.saturating_sub(1);
        }
    }
}

/// The files of one task.
#[derive(Default)]
struct TaskFiles {
    stat: ProcFile,
    schedstat: ProcFile,
    wchan: ProcFile,
    children: ProcFile,
    used: bool,
}

impl TaskFiles {
    fn close(&mut self, fds: &mut Fds) {
        self.stat.close(fds);
        self.schedstat.close(fds);
        self.wchan.close(fds);
        self.children.close(fds);
    }
}

/// One process: its `stat`, the task ids listed last, and its tasks' files.
#[derive(Default)]
struct ProcEntry {
    stat: ProcFile,
    start_time: Option<u64>,
    listing: Option<Vec<i32>>,
    tasks: BTreeMap<i32, TaskFiles>,
    used: bool,
}

impl ProcEntry {
    fn forget_tasks(&mut self, fds: &mut Fds) {
        for t in self.tasks.values_mut() {
            t.close(fds);
        }
        self.tasks.clear();
        self.listing = None;
    }

    fn close(&mut self, fds: &mut Fds) {
        self.stat.close(fds);
        self.forget_tasks(fds);
    }
}

/// The /proc files the driver reads, kept open between looks (see the module's documentation).
pub(crate) struct ProcCache {
    procs: BTreeMap<i32, ProcEntry>,
    fds: Fds,
    buf: Vec<u8>,
}

impl Default for ProcCache {
    fn default() -> Self {
        ProcCache {
            procs: BTreeMap::new(),
            fds: Fds {
                open: 0,
                max: fd_budget(),
            },
            buf: Vec::with_capacity(1024),
        }
    }
}

impl ProcCache {
    fn task(&mut self, pid: i32, tid: i32) -> (&mut TaskFiles, &mut Fds, &mut Vec<u8>) {
        let entry = self.procs.entry(pid).or_default();
        entry.used = true;
        let task = entry.tasks.entry(tid).or_default();
        task.used = true;
        (task, &mut self.fds, &mut self.buf)
    }

    /// `/proc/<pid>/stat`. A process whose start time changed (its pid was reused) loses its cached
    /// tasks.
    pub(crate) fn process_stat(&mut self, pid: i32) -> Option<Stat> {
        let entry = self.procs.entry(pid).or_default();
        entry.used = true;
        entry
            .stat
            .read(|| format!("/proc/{pid}/stat"), &mut self.buf, &mut self.fds)?;
        let st = parse_stat(&self.buf)?;
        if entry.start_time != Some(st.start_time) {
            if entry.start_time.is_some() {
                entry.forget_tasks(&mut self.fds);
            }
            entry.start_time = Some(st.start_time);
        }
        Some(st)
    }

    /// The thread ids of a process whose `stat` said `num_threads`: the ids listed last while that
    /// many are listed (the caller checks that every one of them is still there: then the set has not
    /// changed, since a new thread would make one more), else listed again (a listing of another
    /// length is returned but not kept). None if the process is gone.
    pub(crate) fn tasks(&mut self, pid: i32, num_threads: u64) -> Option<Vec<i32>> {
        let entry = self.procs.entry(pid).or_default();
        entry.used = true;
        if let Some(l) = &entry.listing {
            if u64::try_from(l.len()).ok() == Some(num_threads) {
                return Some(l.clone());
            }
        }
        let listed = tasks(pid)?;
        entry.listing =
            (u64::try_from(listed.len()).ok() == Some(num_threads)).then(|| listed.clone());
        Some(listed)
    }

    /// Forget a process's listing (one of its tasks is gone: list again next time).
    pub(crate) fn relist(&mut self, pid: i32) {
        if let Some(e) = self.procs.get_mut(&pid) {
            e.listing = None;
        }
    }

    pub(crate) fn task_stat(&mut self, pid: i32, tid: i32) -> Option<Stat> {
        let (t, fds, buf) = self.task(pid, tid);
        t.stat
            .read(|| format!("/proc/{pid}/task/{tid}/stat"), buf, fds)?;
        parse_stat(buf)
    }

    pub(crate) fn task_schedstat(&mut self, pid: i32, tid: i32) -> Option<(u64, u64)> {
        let (t, fds, buf) = self.task(pid, tid);
        t.schedstat
            .read(|| format!("/proc/{pid}/task/{tid}/schedstat"), buf, fds)?;
        parse_schedstat(buf)
    }

    /// Whether the task is off its run queue (see [`wchan_names_a_wait`]). None if unreadable.
    pub(crate) fn task_off_runqueue(&mut self, pid: i32, tid: i32) -> Option<bool> {
        let (t, fds, buf) = self.task(pid, tid);
        t.wchan
            .read(|| format!("/proc/{pid}/task/{tid}/wchan"), buf, fds)?;
        Some(wchan_names_a_wait(buf))
    }

    /// The children of one task (`children` needs CONFIG_PROC_CHILDREN; without it: none).
    pub(crate) fn task_children(&mut self, pid: i32, tid: i32, out: &mut Vec<i32>) {
        let (t, fds, buf) = self.task(pid, tid);
        if t.children
            .read(|| format!("/proc/{pid}/task/{tid}/children"), buf, fds)
            .is_some()
        {
            parse_pids(buf, out);
        }
    }

    /// Closes the files of the processes and tasks not used since the last sweep (call it after a
    /// look that went over everything).
    pub(crate) fn sweep(&mut self) {
        let fds = &mut self.fds;
        self.procs.retain(|_, e| {
            if !e.used {
                e.close(fds);
                return false;
            }
            e.used = false;
            e.tasks.retain(|_, t| {
                if !t.used {
                    t.close(fds);
                    return false;
                }
                t.used = false;
                true
            });
            true
        });
    }

    /// Files kept open now.
    #[cfg(test)]
    pub(crate) fn open_files(&self) -> usize {
        self.fds.open
    }
}

pub(crate) fn process_stat(pid: i32) -> Option<Stat> {
    let mut buf = Vec::with_capacity(512);
    read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat(&buf)
}

/// Whether `wchan` names a wait channel: since Linux 5.16 `get_wchan` names one only for a task that
/// has left its run queue; "0" for a task that runs, is runnable, or has only just set its sleeping
/// state on its CPU.
fn wchan_names_a_wait(content: &[u8]) -> bool {
    std::str::from_utf8(content)
        .map(str::trim)
        .is_ok_and(|text| !text.is_empty() && text != "0")
}

fn parse_pids(content: &[u8], out: &mut Vec<i32>) {
    if let Ok(text) = std::str::from_utf8(content) {
        out.extend(
            text.split_ascii_whitespace()
                .filter_map(|s| s.parse::<i32>().ok()),
        );
    }
}

/// The thread ids of a process; None if the process is gone.
pub(crate) fn tasks(pid: i32) -> Option<Vec<i32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect();
    tids.sort_unstable();
    Some(tids)
}

pub(crate) fn task_exists(pid: i32, tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let line = b"4242 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 19 20\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: b'S',
                num_threads: 17,
                start_time: 987654
            })
        );
    }

    #[test]
    fn stat_truncated_or_garbage() {
        assert_eq!(parse_stat(b"12 (x) S 1 2"), None);
        assert_eq!(parse_stat(b"no parenthesis"), None);
        assert_eq!(parse_stat(b"1 (x)"), None);
        assert_eq!(parse_stat(b""), None);
    }

    #[test]
    fn schedstat() {
        assert_eq!(
            parse_schedstat(b"21594551 1751794 72\n"),
            Some((21594551, 72))
        );
        assert_eq!(parse_schedstat(b"1 2"), None);
    }

    #[test]
    fn own_stat_is_running() {
        let me = std::process::id() as i32;
        let tid = crate::current_tid();
        let mut cache = ProcCache::default();
        let st = cache.task_stat(me, tid).expect("own stat");
        assert_eq!(st.state, b'R');
        assert!(process_stat(me).is_some());
        assert!(tasks(me).is_some_and(|t| t.contains(&tid)));
    }

    /// A kept file is read again from the start and shows the task's current state; once its task is
    /// gone it fails, and the cache forgets it; a sweep closes the files not used since the last one.
    #[test]
    fn cached_files_follow_their_task() {
        let me = std::process::id() as i32;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tid_tx.send(crate::current_tid()).expect("send");
            let _ = go_rx.recv();
        });
        let tid = tid_rx.recv().expect("tid");
        let mut cache = ProcCache::default();
        let mut asleep = false;
        for _ in 0..1000 {
            if cache.task_stat(me, tid).is_some_and(|st| st.state == b'S')
                && cache.task_off_runqueue(me, tid) == Some(true)
            {
                asleep = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(asleep, "the thread never showed S off its run queue");
        let (_, before) = cache.task_schedstat(me, tid).expect("schedstat");
        let st = process_stat(me).expect("process stat");
        let cached = cache.process_stat(me).expect("cached process stat");
        assert_eq!(cached.start_time, st.start_time);
        assert!(cached.num_threads >= 2);
        assert!(cache
            .tasks(me, cached.num_threads)
            .is_some_and(|l| l.contains(&tid)));
        assert_eq!(cache.open_files(), 4);
        go_tx.send(()).expect("go");
        t.join().expect("join");
        assert_eq!(cache.task_stat(me, tid), None);
        assert_eq!(cache.task_schedstat(me, tid), None);
        assert_eq!(cache.task_off_runqueue(me, tid), None);
        assert_eq!(cache.open_files(), 1);
        // each read is afresh: this thread's CPU time grows while it runs
        let me_tid = crate::current_tid();
        let (t0, _) = cache.task_schedstat(me, me_tid).expect("own schedstat");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let (t1, _) = cache.task_schedstat(me, me_tid).expect("own schedstat");
        assert!(t1 > t0, "{t1} > {t0}");
        assert!(before > 0);
        assert_eq!(cache.open_files(), 2);
        cache.sweep();
        assert_eq!(cache.open_files(), 2);
        cache.sweep();
        assert_eq!(cache.open_files(), 0);
    }
}
