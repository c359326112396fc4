//! The bits of /proc the time driver reads. Everything here tolerates vanished tasks and odd content:
//! a file that cannot be read or parsed yields None.

use std::io::Read;

/// A task's scheduler state letter (field 3 of `stat`) and its start time (field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: u8,
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
    // fields 4 ..= 21 are 18 fields; field 22 follows
    let start_time = fields.nth(18)?.parse::<u64>().ok()?;
    Some(Stat { state, start_time })
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

pub(crate) fn process_stat(pid: i32) -> Option<Stat> {
    let mut buf = Vec::with_capacity(512);
    read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat(&buf)
}

pub(crate) fn task_stat(pid: i32, tid: i32, buf: &mut Vec<u8>) -> Option<Stat> {
    read_small(&format!("/proc/{pid}/task/{tid}/stat"), buf)?;
    parse_stat(buf)
}

pub(crate) fn task_schedstat(pid: i32, tid: i32, buf: &mut Vec<u8>) -> Option<(u64, u64)> {
    read_small(&format!("/proc/{pid}/task/{tid}/schedstat"), buf)?;
    parse_schedstat(buf)
}

/// Whether the task is off its run queue: `wchan` names a wait channel only for a task that has left
/// the run queue (since Linux 5.16 `get_wchan` checks `on_rq`); "0" for a task that runs, is runnable,
/// or has only just set its sleeping state on its CPU. None if unreadable.
pub(crate) fn task_off_runqueue(pid: i32, tid: i32, buf: &mut Vec<u8>) -> Option<bool> {
    read_small(&format!("/proc/{pid}/task/{tid}/wchan"), buf)?;
    let text = std::str::from_utf8(buf).ok()?.trim();
    Some(!text.is_empty() && text != "0")
}

/// The children of one task (`children` needs CONFIG_PROC_CHILDREN; without it: none).
pub(crate) fn task_children(pid: i32, tid: i32, buf: &mut Vec<u8>, out: &mut Vec<i32>) {
    if read_small(&format!("/proc/{pid}/task/{tid}/children"), buf).is_none() {
        return;
    }
    if let Ok(text) = std::str::from_utf8(buf) {
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
        let mut buf = Vec::new();
        let st = task_stat(me, tid, &mut buf).expect("own stat");
        assert_eq!(st.state, b'R');
        assert!(process_stat(me).is_some());
        assert!(tasks(me).is_some_and(|t| t.contains(&tid)));
    }
}
