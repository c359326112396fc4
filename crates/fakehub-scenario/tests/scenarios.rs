//! Every scenario in scenarios/ passes with the well-behaved sample device and fails (exit 1, with
//! the explaining excerpt) with the sample-device bug it targets; malformed scenarios are refused
//! with a located error (exit 2) and run nothing.

use std::path::Path;
use std::process::Command;

fn fakehub(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `scenario` with and without `bug`; check the verdicts and the outputs.
fn matrix(scenario: &str, bug: &str, rule: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("scenarios/{scenario}.yaml");
    let good = dir.path().join("good");
    let (code, out, err) = fakehub(&["run", &path, "--out", good.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "{scenario} with the well-behaved device:\n{out}\n{err}"
    );
    for f in [
        "events.jsonl",
        "connections.jsonl",
        "junit.xml",
        "report.html",
        "ca.pem",
    ] {
        assert!(good.join(f).exists(), "{f} written");
    }
    let bad = dir.path().join("bad");
    let (code, out, err) = fakehub(&[
        "run",
        &path,
        "--out",
        bad.to_str().unwrap(),
        "--sample-bug",
        bug,
    ]);
    assert_eq!(code, 1, "{scenario} with {bug}:\n{out}\n{err}");
    let failing: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("FAIL"))
        .collect();
    assert!(
        failing.iter().any(|l| l.contains(&format!(" · {rule}:"))),
        "{bug} caught by {rule}:\n{out}"
    );
    assert!(
        out.contains('▶'),
        "the failure shows the events around it:\n{out}"
    );
    let junit = std::fs::read_to_string(bad.join("junit.xml")).unwrap();
    assert!(junit.contains("<failure"), "{junit}");
}

#[test]
fn token_expiry_65m() {
    matrix("token-expiry-65m", "no-token-renewal", "renews_token");
}

#[test]
fn token_expiry_60m() {
    matrix("token-expiry-60m", "no-token-renewal", "renews_token");
}

#[test]
fn keepalive_idle_timeout() {
    matrix("keepalive-idle-timeout", "huge-keepalive", "keepalive");
}

#[test]
fn tcp_reset_no_disconnect() {
    matrix(
        "tcp-reset-no-disconnect",
        "no-disconnect",
        "graceful_disconnect",
    );
}

#[test]
fn device_crash() {
    matrix("device-crash", "no-backoff", "no_tight_loop");
}

#[test]
fn mass_hub_drop() {
    matrix("mass-hub-drop", "no-jitter", "fleet_spread");
}

/// A malformed scenario: exit 2, `FILE:LINE:COLUMN: …` naming what was expected, nothing written.
fn refused(yaml: &str, line_col: &str, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out_dir = dir.path().join("out");
    let (code, _, err) = fakehub(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("bad.yaml:{line_col}:")),
        "expected a location {line_col}: {err}"
    );
    assert!(err.contains(says), "expected `{says}` in: {err}");
    assert!(!Path::new(&out_dir).exists(), "nothing ran");
    let (code, _, err2) = fakehub(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(err, err2, "validate says the same");
}

const GOOD_HEAD: &str = "name: t\ndevices:\n  - id: sensor-1\n";

#[test]
fn a_typo_in_a_key() {
    refused(
        &format!("{GOOD_HEAD}timeline:\n  - advance: 5m\nexpct:\n  - connected: {{}}\n"),
        "6:1",
        "unknown field `expct`, expected one of",
    );
    refused(
        &format!("{GOOD_HEAD}expect:\n  - recovers: {{ withn: 60s }}\n"),
        "5:17",
        "unknown field `withn`, expected `device` or `within`",
    );
}

#[test]
fn a_bad_duration() {
    refused(
        &format!("{GOOD_HEAD}timeline:\n  - advance: 5 parsecs\n"),
        "5:14",
        "invalid value: string \"5 parsecs\", expected a duration",
    );
}

#[test]
fn a_missing_device() {
    refused(
        &format!("{GOOD_HEAD}timeline:\n  - stop: {{ device: sensor-2 }}\n"),
        "5:21",
        "no device `sensor-2`",
    );
    refused(
        &format!("{GOOD_HEAD}expect:\n  - connected: {{ device: nobody }}\n"),
        "5:26",
        "no device `nobody`",
    );
}

#[test]
fn wrong_types() {
    refused(
        "name: t\ndevices:\n  - id: fleet\n    count: many\n",
        "4:12",
        "invalid type",
    );
    refused(
        &format!("{GOOD_HEAD}timeline:\n  - fault: {{ type: outage, mode: sometimes }}\n"),
        "5:12",
        "unknown variant `sometimes`, expected one of `refuse_tcp`, `connack3`, `hang`",
    );
}

#[test]
fn schema_is_published() {
    let (code, out, _) = fakehub(&["schema"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = v.to_string();
    for key in [
        "timeline",
        "expect",
        "advance",
        "mass_drop",
        "fleet_spread",
        "telemetry_interval",
    ] {
        assert!(text.contains(key), "the schema describes {key}");
    }
}

#[test]
fn service_side_steps_reach_the_device_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.yaml");
    std::fs::write(
        &file,
        "name: svc\ndevices:\n  - id: sensor-1\ntimeline:\n  - advance: 1m\n  - c2d: { device: sensor-1, body: reboot, message_id: cmd-1, properties: { priority: high } }\n  - desired: { device: sensor-1, patch: { interval: 30 } }\n  - method: { device: sensor-1, name: reset, timeout: 5s }\n  - advance: 1m\nexpect:\n  - connected: { device: sensor-1 }\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = fakehub(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    // The C2D message went out to the device with its properties, and the device acknowledged it.
    let c2d = events
        .lines()
        .find(|l| {
            l.contains("\"dir\":\"out\"")
                && l.contains("messages/devicebound")
                && l.contains("cmd-1")
        })
        .unwrap_or_else(|| panic!("C2D delivered:\n{events}"));
    assert!(c2d.contains("priority"), "{c2d}");
    assert!(
        events.contains("\"event\":\"twin_updated\""),
        "desired patch recorded"
    );
    // The sample device does not subscribe to methods: the hub answers 404103, in the log.
    assert!(stderr.contains("method reset on sensor-1"), "{stderr}");
    assert!(events.contains("\"event\":\"method_result\""), "{events}");
}

/// A run that takes real time: a device process on real time, and ten minutes to wait.
const LONG_RUN: &str = "name: long\ndevices:\n  - id: sensor-1\n    run: [sample-device]\n    clock: real\ntimeline:\n  - wait: 10m\nexpect:\n  - connected: { device: sensor-1 }\n";

/// Start the long run; its directory, the runner, and the device process's pid once connected.
fn start_long_run(dir: &std::path::Path) -> (std::path::PathBuf, std::process::Child, u32) {
    let file = dir.join("long.yaml");
    std::fs::write(&file, LONG_RUN).unwrap();
    let out = dir.join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Connected: the run is in its wait.
    let started = std::time::Instant::now();
    loop {
        let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap_or_default();
        if events.contains("\"connack\"") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap_or_default();
    let device: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the device process is a child of the runner");
    (out, child, device)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Ctrl-C, SIGTERM and SIGHUP all stop a run the same way: the devices are stopped, what was seen
/// is judged and written (exit 2, marked interrupted), and the log is complete.
#[test]
fn a_signal_stops_the_run_and_still_writes_what_was_seen() {
    for signal in ["INT", "TERM", "HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let (out, mut child, device) = start_long_run(dir.path());
        let asked = std::time::Instant::now();
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(2), "SIG{signal}: interrupted");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(15),
            "SIG{signal}: stopped promptly"
        );
        assert!(
            !alive(device),
            "SIG{signal}: the device process was stopped"
        );
        let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
        assert!(junit.contains("interrupted"), "{junit}");
        assert!(out.join("report.html").exists());
        let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
        assert!(
            events.lines().last().unwrap().contains("hub_stopped"),
            "SIG{signal}: the log is complete"
        );
        assert!(events.contains("\"action\":\"stopped\""), "{events}");
    }
}

/// Even when the runner is killed outright, its device processes die with it.
#[test]
fn device_processes_die_with_a_killed_runner() {
    let dir = tempfile::tempdir().unwrap();
    let (_out, mut child, device) = start_long_run(dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let started = std::time::Instant::now();
    while alive(device) && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!alive(device), "the device process outlived the runner");
}
