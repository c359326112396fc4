//! Measurements for the README: real time per virtual hour for each runtime idling with its natural
//! wake-ups, and how late (in virtual time) its timers fire. Ignored by default (about a minute):
//!
//! cargo test -p fakehub-proctime --release --test measure -- --ignored --nocapture --test-threads 1
//!
//! FAKEHUB_MEASURE_SECONDS sets the virtual duration (default 3600).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn seconds() -> u64 {
    std::env::var("FAKEHUB_MEASURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600)
}

fn measure(what: &str, h: &Harness, cmd: std::process::Command, secs: u64) {
    let started = Instant::now();
    let mut p = h.spawn(cmd);
    let report = h.drive(
        &mut p,
        Duration::from_secs(secs + 600),
        Duration::from_secs(600),
    );
    let real = started.elapsed();
    let events = p.events();
    let ev = events.get("idle").expect("idle event");
    let per_hour = real.as_secs_f64() * 3600.0 / secs as f64;
    let ms = |k: &str| {
        ev.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |v| v / 1e6)
    };
    println!(
        "MEASURE {what}: {secs} s virtual in {:.3} s real = {per_hour:.3} s real per virtual hour; \
         timer lateness max {:.3} ms, mean {:.3} ms (virtual); wait lateness {:.3} ms; loops {}; \
         skips {}, wakes {}, checks {}",
        real.as_secs_f64(),
        ms("max_late_ns"),
        ms("mean_late_ns"),
        ms("wait_late_ns"),
        ev.get("loops").or_else(|| ev.get("ticks")).map_or("-", String::as_str),
        report.skips,
        report.wakes,
        report.checks
    );
}

#[test]
#[ignore = "measurement: run explicitly"]
fn node_idle_with_a_60_s_interval() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(node) = tool("node") else {
        skip("node is not installed");
        return;
    };
    let secs = seconds();
    let mut cmd = h.command(node);
    cmd.arg(probe_path("timers.js"))
        .arg("idle")
        .arg(secs.to_string());
    measure("node 20, setInterval(60 s)", &h, cmd, secs);
}

#[test]
#[ignore = "measurement: run explicitly"]
fn python_idle_with_a_paho_like_select_loop() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(py) = tool("python3") else {
        skip("python3 is not installed");
        return;
    };
    let secs = seconds();
    let mut cmd = h.command(py);
    cmd.arg(probe_path("waits.py"))
        .arg("idle")
        .arg(secs.to_string());
    measure(
        "cpython 3.11, select(timeout=1) thread + Event.wait",
        &h,
        cmd,
        secs,
    );
}

#[test]
#[ignore = "measurement: run explicitly"]
fn c_idle_with_a_1_s_select_loop() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let secs = seconds();
    let mut cmd = h.command(&bin);
    cmd.arg("idle").arg(secs.to_string());
    measure("C, select(1 s) loop", &h, cmd, secs);
}
