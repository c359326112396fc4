//! Native C programs under the preload, driven by the reference driver.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fakehub_proctime::{ClockShm, Limits, ShmOptions, ThreadState, WaitCall};

fn harness_long_slices() -> Option<Harness> {
    // With 10 s slices, a wake that is not delivered by the signal costs 10 s of real time, which the
    // real-time bounds below do not allow: the tests fail if the wake signal does not work.
    let h = Harness::new()?;
    let shm = ClockShm::create_with(
        h.dir.path().join("clock-long"),
        Limits {
            max_processes: 64,
            max_threads: 1024,
        },
        ShmOptions {
            other_slice: Duration::from_secs(10),
            ..ShmOptions::default()
        },
    )
    .expect("clock file");
    Some(Harness {
        shm,
        dir: h.dir,
        preload: h.preload,
    })
}

fn check_events(p: &Proc, names: &[&str], late: i64) {
    let events = p.events();
    eprintln!("events: {events:?}");
    for name in names {
        let ev = events.get(*name).unwrap_or_else(|| {
            panic!(
                "no event {name}; got {events:?}\nstderr {:?}",
                p.err_lines()
            )
        });
        assert_eq!(
            ev.get("ok").map(String::as_str),
            Some("1"),
            "{name}: {ev:?}"
        );
        assert_on_time(
            name,
            field_i64(ev, "elapsed_ns"),
            field_i64(ev, "expected_ns"),
            late,
        );
    }
}

#[test]
fn every_wrapped_wait_ends_at_its_virtual_deadline() {
    let _s = serial();
    let Some(h) = harness_long_slices() else {
        return;
    };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    h.set_epoch(1.0);
    let mut cmd = h.command(&bin);
    cmd.arg("waits");
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(&mut p, Duration::from_secs(200), Duration::from_secs(20));
    let real = started.elapsed();
    check_events(
        &p,
        &[
            "usleep",
            "sleep",
            "nanosleep",
            "ppoll",
            "poll",
            "pselect",
            "clock_nanosleep_mono_abs",
            "clock_nanosleep_wall_abs",
            "select",
            "masked_nanosleep",
            "epoll_wait",
            "epoll_pwait2",
            "cond_realtime",
            "cond_monotonic",
            "cond_clockwait",
            "sem_timedwait",
            "sem_clockwait",
            "mutex_timedlock",
            "futex_wait",
            "futex_bitset_mono",
            "futex_bitset_wall",
            "woken_cond",
            "woken_sem",
            "woken_futex",
            "woken_select",
            "untimed_cond",
        ],
        250_000_000,
    );
    eprintln!("70 s of virtual waits took {real:?} real; {report:?}");
    assert!(
        report.skips >= 20,
        "the driver skipped only {} times",
        report.skips
    );
    assert!(real < Duration::from_secs(10), "took {real:?} real");
}

#[test]
fn other_signals_still_interrupt_wrapped_waits() {
    let _s = serial();
    let Some(h) = harness_long_slices() else {
        return;
    };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("eintr");
    let mut p = h.spawn(cmd);
    h.drive(&mut p, Duration::from_secs(100), Duration::from_secs(15));
    check_events(
        &p,
        &[
            "eintr_nanosleep",
            "eintr_clock_nanosleep",
            "eintr_poll",
            "eintr_select",
            "eintr_epoll_wait",
            "eintr_sem_clockwait",
            "eintr_futex",
            "eintr_usleep",
        ],
        250_000_000,
    );
}

#[test]
fn a_stray_wake_signal_does_not_interrupt_unwrapped_calls() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("stray");
    let mut p = h.spawn(cmd);
    h.drive(&mut p, Duration::from_secs(60), Duration::from_secs(15));
    check_events(&p, &["stray_read"], 250_000_000);
}

#[test]
fn clocks_follow_the_anchor() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    h.set_epoch(1.0);
    let lo = h.shm.now();
    let mut cmd = h.command(&bin);
    cmd.arg("clocks");
    let mut p = h.spawn(cmd);
    p.wait_real(Duration::from_secs(10));
    let hi = h.shm.now();
    let events = p.events();
    let ev = events.get("clocks").expect("clocks event");
    let in_range = |name: &str, v: i64, lo: i64, hi: i64| {
        assert!(v >= lo && v <= hi, "{name} = {v} not in [{lo}, {hi}]");
    };
    for name in ["realtime", "realtime_coarse", "timespec_get"] {
        in_range(name, field_i64(ev, name), lo.virt_wall_ns, hi.virt_wall_ns);
    }
    for name in ["monotonic", "monotonic_raw", "monotonic_coarse", "boottime"] {
        in_range(name, field_i64(ev, name), lo.virt_mono_ns, hi.virt_mono_ns);
    }
    in_range(
        "gettimeofday",
        field_i64(ev, "gettimeofday_us"),
        lo.virt_wall_ns / 1000,
        hi.virt_wall_ns / 1000,
    );
    for name in ["time", "time_arg"] {
        in_range(
            name,
            field_i64(ev, name),
            lo.virt_wall_ns / SEC,
            hi.virt_wall_ns / SEC,
        );
    }
    // TAI keeps the kernel's TAI - UTC offset
    let real_offset = real_clock(libc::CLOCK_TAI) - real_clock(libc::CLOCK_REALTIME);
    let tai = field_i64(ev, "tai") - field_i64(ev, "realtime");
    assert!(
        (tai - real_offset).abs() < 50_000_000,
        "tai offset {tai} vs real {real_offset}"
    );
    // CPU time is not virtual: a short-lived probe used well under a second of it
    let cpu = field_i64(ev, "process_cpu");
    assert!((0..SEC).contains(&cpu), "process cpu time {cpu}");
}

fn real_clock(c: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(c, &mut ts) };
    ts.tv_sec * SEC + ts.tv_nsec
}

#[test]
fn forked_and_execed_children_join_the_clock() {
    let _s = serial();
    let Some(h) = harness_long_slices() else {
        return;
    };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("fork");
    let mut p = h.spawn(cmd);
    let parent = p.child.id() as i32;
    let mut seen = std::collections::BTreeMap::new();
    h.drive_with(
        &mut p,
        Duration::from_secs(100),
        Duration::from_secs(15),
        |shm| {
            for s in shm.processes() {
                seen.insert(s.pid, s);
            }
        },
    );
    check_events(
        &p,
        &["fork_child", "exec_child", "fork_parent"],
        250_000_000,
    );
    let events = p.events();
    let child: i32 = events["fork_child"]["pid"].parse().expect("pid");
    assert_eq!(events["exec_child"]["pid"], events["fork_child"]["pid"]);
    assert!(
        seen.get(&parent)
            .is_some_and(|s| s.preload && s.registered_by_hub),
        "{seen:?}"
    );
    assert!(
        seen.get(&child)
            .is_some_and(|s| s.preload && !s.registered_by_hub && s.condvar_clock),
        "the forked child did not register itself: {seen:?}"
    );
}

/// Waits (bounded, real time) until `n` threads of the process are in timed waits.
fn wait_for_timed(h: &Harness, pid: i32, n: usize) {
    let start = Instant::now();
    loop {
        let timed = h
            .shm
            .threads()
            .into_iter()
            .filter(|t| t.pid == pid && matches!(t.state, ThreadState::TimedWait { .. }))
            .count();
        if timed >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "only {timed} of {n} threads in timed waits: {:?}",
            h.shm.threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_wall_clock_jump_moves_wall_deadlines_only() {
    let _s = serial();
    let Some(h) = harness_long_slices() else {
        return;
    };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("jump");
    let mut p = h.spawn(cmd);
    let pid = p.child.id() as i32;
    wait_for_timed(&h, pid, 7);
    let calls: Vec<WaitCall> = h
        .shm
        .threads()
        .iter()
        .filter(|t| t.pid == pid)
        .map(|t| t.call)
        .collect();
    for c in [
        WaitCall::CondTimedwait,
        WaitCall::ClockNanosleep,
        WaitCall::SemTimedwait,
        WaitCall::FutexWaitBitset,
        WaitCall::Select,
        WaitCall::FutexWait,
    ] {
        assert!(calls.contains(&c), "{c:?} not among {calls:?}");
    }
    let before = h.shm.now();
    h.shm.jump_wall(1800 * SEC).expect("jump");
    let after = h.shm.now();
    assert!(
        after.virt_mono_ns - before.virt_mono_ns < SEC,
        "monotonic time moved"
    );
    assert!(after.virt_wall_ns - before.virt_wall_ns >= 1800 * SEC);
    assert_eq!(h.shm.wake_all_timed(), 7);
    h.drive(&mut p, Duration::from_secs(4000), Duration::from_secs(15));
    check_events(
        &p,
        &[
            "jump_cond_realtime",
            "jump_cond_monotonic",
            "jump_clock_nanosleep_wall",
            "jump_sem_timedwait",
            "jump_futex_wall",
            "jump_select",
            "jump_futex_relative",
        ],
        // the wall-clock deadlines were armed up to ~1 s of real time before the jump
        1_500_000_000,
    );
}

#[test]
fn a_speed_change_reaches_a_sleep_in_progress() {
    let _s = serial();
    let Some(h) = harness_long_slices() else {
        return;
    };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("speed");
    let mut p = h.spawn(cmd);
    wait_for_timed(&h, p.child.id() as i32, 1);
    let started = Instant::now();
    h.shm.set_speed(100.0).expect("speed");
    h.shm.wake_all_timed();
    // No driver: time only flows, 100 times faster (0.6 s real). Flowing time has no skip to land on:
    // the sleeper's real wake-up latency is multiplied by 100 (30 ms on a loaded machine = 3 s).
    p.wait_real(Duration::from_secs(10));
    let real = started.elapsed();
    check_events(&p, &["speed_nanosleep"], 3 * SEC);
    assert!(real < Duration::from_secs(3), "60 s at x100 took {real:?}");
}

#[test]
fn timerfd_and_itimers_scale_with_the_speed() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    h.set_epoch(20.0);
    let mut cmd = h.command(&bin);
    cmd.arg("timers");
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    p.wait_real(Duration::from_secs(10));
    let real = started.elapsed();
    // at x20 a 10 s timer is 0.5 s real; a timer firing 1 real ms late is 20 ms virtual late
    check_events(
        &p,
        &["timerfd_relative", "timerfd_absolute", "alarm", "setitimer"],
        400_000_000,
    );
    assert!(
        real < Duration::from_secs(5),
        "four 10 s timers at x20 took {real:?}"
    );
}

#[test]
fn a_c_select_loop_idles_through_virtual_minutes() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.args(["idle", "600"]);
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(&mut p, Duration::from_secs(700), Duration::from_secs(60));
    let real = started.elapsed();
    let events = p.events();
    let ev = events.get("idle").expect("idle event");
    eprintln!("C 1 s select loop, 600 s virtual in {real:?}: {ev:?} {report:?}");
    assert!(field_i64(ev, "loops") >= 590);
    assert!(field_i64(ev, "max_late_ns") < 100_000_000, "{ev:?}");
}

/// `wake_due_tracked` + `rewaited`: a thread woken at its deadline is seen (in its slot) to leave its
/// wait and wait again, for its next deadline.
#[test]
fn a_woken_thread_is_seen_waiting_again() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.args(["idle", "5"]);
    let mut p = h.spawn(cmd);
    let pid = p.child.id() as i32;
    wait_for_timed(&h, pid, 1);
    let deadline = h
        .shm
        .threads()
        .into_iter()
        .filter(|t| t.pid == pid)
        .find_map(|t| match t.state {
            ThreadState::TimedWait {
                deadline_virt_mono_ns,
            } => Some(deadline_virt_mono_ns),
            _ => None,
        })
        .expect("a timed wait");
    // nothing is due yet: nobody is woken, and an empty set has settled
    let none = h.shm.wake_due_tracked(deadline - SEC / 2);
    assert!(none.is_empty());
    assert!(h.shm.rewaited(&none));
    h.shm.skip_to(deadline).expect("skip");
    let woken = h.shm.wake_due_tracked(h.shm.now().virt_mono_ns);
    assert_eq!(woken.len(), 1);
    let start = Instant::now();
    while !h.shm.rewaited(&woken) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the woken thread never waited again: {:?}",
            h.shm.threads()
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    // it waits for its next second now
    let next = h
        .shm
        .threads()
        .into_iter()
        .filter(|t| t.pid == pid)
        .find_map(|t| match t.state {
            ThreadState::TimedWait {
                deadline_virt_mono_ns,
            } => Some(deadline_virt_mono_ns),
            _ => None,
        })
        .expect("a timed wait again");
    assert!(next > deadline, "{next} > {deadline}");
    h.drive(&mut p, Duration::from_secs(60), Duration::from_secs(20));
}

#[test]
fn threads_that_take_turns_are_never_taken_for_idle() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("pingpong");
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(&mut p, Duration::from_secs(2000), Duration::from_secs(60));
    let real = started.elapsed();
    let events = p.events();
    let ev = events.get("pingpong").expect("pingpong event");
    eprintln!("ping-pong: {ev:?} in {real:?}; {report:?}");
    assert_eq!(ev.get("ok").map(String::as_str), Some("1"));
    // the ping-pong ran for about its real time; a false idle would have skipped ~1000 s
    let virt = field_i64(ev, "elapsed_ns");
    assert!(
        virt < real.as_nanos() as i64 + SEC,
        "skipped time during the ping-pong: {virt} ns virtual in {real:?}"
    );
}

/// Threads that hand a token on to a thread they start, then exit: the set of threads changes all the
/// time while their number hardly does (the scan re-lists a process's tasks only when the count in its
/// `stat` changes or a listed task is gone). Never idle: a 1000 s sleeper's time is never skipped.
#[test]
fn threads_that_replace_each_other_are_never_taken_for_idle() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let mut cmd = h.command(&bin);
    cmd.arg("relay");
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(&mut p, Duration::from_secs(2000), Duration::from_secs(60));
    let real = started.elapsed();
    let events = p.events();
    let ev = events.get("relay").expect("relay event");
    eprintln!("relay: {ev:?} in {real:?}; {report:?}");
    assert_eq!(ev.get("ok").map(String::as_str), Some("1"));
    let virt = field_i64(ev, "elapsed_ns");
    assert!(
        virt < real.as_nanos() as i64 + SEC,
        "skipped time during the relay: {virt} ns virtual in {real:?}"
    );
}

/// The pending-signal mask of a thread, from /proc (SigPnd, hex).
fn pending_signals(pid: i32, tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("SigPnd:"))
        .expect("SigPnd");
    u64::from_str_radix(line.trim_start_matches("SigPnd:").trim(), 16).expect("hex")
}

#[test]
fn a_stopped_process_neither_holds_time_back_nor_collects_wake_signals() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    // A: a 60 s sleep, frozen with SIGSTOP while it sleeps
    let mut a_cmd = h.command(&bin);
    a_cmd.arg("speed");
    let mut a = h.spawn(a_cmd);
    let a_pid = a.child.id() as i32;
    wait_for_timed(&h, a_pid, 1);
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(a_pid, libc::SIGSTOP) }, 0);
    // B: a device that keeps running for 300 s of virtual time
    let mut b_cmd = h.command(&bin);
    b_cmd.args(["idle", "300"]);
    let mut b = h.spawn(b_cmd);
    let started = Instant::now();
    h.drive(&mut b, Duration::from_secs(400), Duration::from_secs(20));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the frozen process held time back"
    );
    // A's deadline passed long ago, but no wake signal was queued for it while stopped
    let wake_bit = 1u64 << (h.shm.options().wake_signal - 1);
    assert_eq!(
        pending_signals(a_pid, a_pid) & wake_bit,
        0,
        "wake signals queued for a stopped thread"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(a_pid, libc::SIGCONT) }, 0);
    h.drive(&mut a, Duration::from_secs(100), Duration::from_secs(10));
    let events = a.events();
    let ev = events.get("speed_nanosleep").expect("event");
    assert_eq!(ev.get("ok").map(String::as_str), Some("1"));
    // it slept through the freeze: woke after B's 300 s, not at 60 s
    assert!(field_i64(ev, "elapsed_ns") >= 300 * SEC, "{ev:?}");
}

#[test]
fn a_wait_inside_a_signal_handler_leaves_the_outer_deadline_published() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    for _ in 0..3 {
        let mut cmd = h.command(&bin);
        cmd.arg("handler");
        let mut p = h.spawn(cmd);
        h.drive(&mut p, Duration::from_secs(1000), Duration::from_secs(15));
        // the handler's 1 s sleep happened at 5 s; the outer condvar wait still ends at 60 s
        check_events(&p, &["handler_outer_cond"], 250_000_000);
    }
}
