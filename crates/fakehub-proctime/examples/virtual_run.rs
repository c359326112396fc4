//! Runs one command on a virtual clock with the reference driver, until it exits or a virtual time
//! limit passes, and prints what the driver did (and, if it did not exit, every thread's state).
//!
//! cargo run -p fakehub-proctime --example virtual_run -- [--virtual SECONDS] [--speed X] -- CMD [ARGS…]

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use fakehub_proctime::{run_until_with, ClockShm, Limits, Preload, RunOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut virtual_secs: i64 = 3600;
    let mut speed = 1.0;
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--virtual", Some(v)) => virtual_secs = v.parse().unwrap_or(3600),
            ("--speed", Some(v)) => speed = v.parse().unwrap_or(1.0),
            _ => {}
        }
        i += 2;
    }
    let cmd = &args[(i + 1).min(args.len())..];
    let Some((program, rest)) = cmd.split_first() else {
        eprintln!("usage: virtual_run [--virtual SECONDS] [--speed X] -- CMD [ARGS…]");
        return ExitCode::from(2);
    };
    match run(program, rest, virtual_secs, speed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virtual_run: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    program: &str,
    args: &[String],
    virtual_secs: i64,
    speed: f64,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let shm = ClockShm::create(dir.path().join("clock"), Limits::default())?;
    shm.set_speed(speed)?;
    let preload = Preload::write_to(dir.path())?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .envs(shm.env(&preload))
        .spawn()?;
    shm.register_process(child.id() as i32)?;
    let start = shm.now().virt_mono_ns;
    let target = start.saturating_add(virtual_secs.saturating_mul(1_000_000_000));
    let mut status = None;
    let report = run_until_with(&shm, target, &[], &RunOptions::default(), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    })?;
    let virt = (report.end_virt_mono_ns - start) as f64 / 1e9;
    eprintln!(
        "virtual_run: {virt:.3} s virtual in {:?} real; {} skips, {} wakes, {} checks",
        started.elapsed(),
        report.skips,
        report.wakes,
        report.checks
    );
    if let Some(s) = status {
        return Ok(if s.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    eprintln!(
        "virtual_run: still running after {virtual_secs} s virtual; processes: {:?}",
        shm.processes()
    );
    eprintln!(
        "child pid {}; its tasks: {:?}",
        child.id(),
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    eprintln!("threads:");
    for t in shm.threads() {
        let wchan = std::fs::read_to_string(format!("/proc/{}/task/{}/wchan", t.pid, t.tid))
            .unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{}/comm", t.pid, t.tid))
            .unwrap_or_default();
        eprintln!("  {t:?} comm={} wchan={wchan}", comm.trim());
    }
    let mut pids: Vec<i32> = shm.processes().iter().map(|p| p.pid).collect();
    pids.push(child.id() as i32);
    pids.dedup();
    for pid in pids {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for e in rd.flatten() {
                let tid = e.file_name().to_string_lossy().to_string();
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let wchan = std::fs::read_to_string(e.path().join("wchan")).unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r.trim().chars().next().unwrap_or('?'));
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                let stack = std::fs::read_to_string(e.path().join("stack")).unwrap_or_default();
                let syscall = std::fs::read_to_string(e.path().join("syscall")).unwrap_or_default();
                eprintln!(
                    "  task {pid}/{tid} {} state={state:?} wchan={wchan} syscall={} stack={}",
                    comm.trim(),
                    syscall.trim(),
                    stack.replace('\n', " | ")
                );
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(10));
    Ok(ExitCode::FAILURE)
}
