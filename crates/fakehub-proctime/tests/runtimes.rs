//! Node, CPython and Rust-std programs under the preload, driven by the reference driver.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn node() -> Option<std::path::PathBuf> {
    let n = tool("node");
    if n.is_none() {
        skip("node is not installed");
    }
    n
}

fn python() -> Option<std::path::PathBuf> {
    let p = tool("python3");
    if p.is_none() {
        skip("python3 is not installed");
    }
    p
}

fn check(p: &Proc, names: &[&str], late: i64) {
    let events = p.events();
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
fn node_timeout_of_45_minutes_fires_on_time_within_seconds() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(node) = node() else { return };
    let mut cmd = h.command(node);
    cmd.arg(probe_path("timers.js")).arg("timeout45");
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(
        &mut p,
        Duration::from_secs(3 * 3600),
        Duration::from_secs(60),
    );
    let real = started.elapsed();
    eprintln!("node 45 min: {real:?} real, {report:?}, {:?}", p.events());
    let events = p.events();
    let ev = events.get("timeout45").expect("timeout45 event");
    assert_eq!(ev.get("ok").map(String::as_str), Some("1"), "{ev:?}");
    // libuv arms timers from its cached loop time, taken before the script started: the timeout may
    // come a few ms before 45:00 measured from the script's first performance.now().
    assert_within(
        "timeout45",
        field_i64(ev, "elapsed_ns"),
        2_700 * SEC,
        SEC,
        SEC,
    );
    // Date.now() and process.hrtime() moved with performance.now()
    let elapsed = field_i64(ev, "elapsed_ns");
    assert!(
        (field_i64(ev, "date_elapsed_ns") - elapsed).abs() < 5_000_000,
        "{ev:?}"
    );
    assert!(
        (field_i64(ev, "hrtime_elapsed_ns") - elapsed).abs() < 5_000_000,
        "{ev:?}"
    );
    assert!(
        real < Duration::from_secs(20),
        "45 virtual minutes took {real:?}"
    );
}

#[test]
fn node_clocks_follow_the_anchor() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(node) = node() else { return };
    h.set_epoch(1.0);
    let lo = h.shm.now();
    let mut cmd = h.command(node);
    cmd.arg(probe_path("timers.js")).arg("clocks");
    let mut p = h.spawn(cmd);
    h.drive(&mut p, Duration::from_secs(60), Duration::from_secs(30));
    let hi = h.shm.now();
    let ev = &p.events()["clocks"];
    let date = field_i64(ev, "date_now_ms");
    assert!(
        date >= lo.virt_wall_ns / 1_000_000 && date <= hi.virt_wall_ns / 1_000_000,
        "Date.now() {date} outside [{}, {}]",
        lo.virt_wall_ns / 1_000_000,
        hi.virt_wall_ns / 1_000_000
    );
    let hr = field_i64(ev, "hrtime_ns");
    assert!(
        hr >= lo.virt_mono_ns && hr <= hi.virt_mono_ns,
        "hrtime {hr}"
    );
}

#[test]
fn python_waits_end_at_their_virtual_deadlines() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(py) = python() else { return };
    let mut cmd = h.command(py);
    cmd.arg(probe_path("waits.py")).arg("waits");
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(&mut p, Duration::from_secs(600), Duration::from_secs(60));
    let real = started.elapsed();
    eprintln!("python waits: {real:?} real, {report:?}, {:?}", p.events());
    check(
        &p,
        &[
            "event_wait",
            "time_sleep",
            "selectors_select",
            "select_select",
            "queue_get",
            "lock_acquire",
            "condition_wait",
            "event_set_by_thread",
            "selectors_woken",
        ],
        250_000_000,
    );
    let net = &p.events()["net_loop"];
    // ~141 s of 1 s selects in the background thread, none of them late
    assert!(field_i64(net, "loops") >= 130, "{net:?}");
    assert!(field_i64(net, "max_late_ns") < 250_000_000, "{net:?}");
    assert!(real < Duration::from_secs(30), "took {real:?}");
}

#[test]
fn python_clocks_follow_the_anchor() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(py) = python() else { return };
    h.set_epoch(1.0);
    let lo = h.shm.now();
    let mut cmd = h.command(py);
    cmd.arg(probe_path("waits.py")).arg("clocks");
    let mut p = h.spawn(cmd);
    h.drive(&mut p, Duration::from_secs(60), Duration::from_secs(30));
    let hi = h.shm.now();
    let ev = &p.events()["clocks"];
    let t = field_i64(ev, "time_ns");
    assert!(
        t >= lo.virt_wall_ns && t <= hi.virt_wall_ns,
        "time.time_ns() {t}"
    );
    let m = field_i64(ev, "monotonic_ns");
    assert!(
        m >= lo.virt_mono_ns && m <= hi.virt_mono_ns,
        "time.monotonic_ns() {m}"
    );
}

#[test]
fn rust_std_waits_through_futex_end_at_their_virtual_deadlines() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let rustc = std::env::var_os("RUSTC")
        .map(std::path::PathBuf::from)
        .or_else(|| tool("rustc"));
    let Some(rustc) = rustc else {
        skip("rustc is not available");
        return;
    };
    let bin = h.dir.path().join("rust_probe");
    let status = std::process::Command::new(rustc)
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&bin)
        .arg(probe_path("rust_probe.rs"))
        .status()
        .expect("run rustc");
    assert!(status.success(), "compiling the Rust probe failed");
    let mut cmd = h.command(&bin);
    cmd.arg("waits");
    let mut p = h.spawn(cmd);
    h.drive(&mut p, Duration::from_secs(200), Duration::from_secs(30));
    check(
        &p,
        &[
            "thread_sleep",
            "condvar_wait_timeout",
            "park_timeout",
            "mpsc_recv_timeout",
            "condvar_notified",
            "system_time",
        ],
        250_000_000,
    );
}
