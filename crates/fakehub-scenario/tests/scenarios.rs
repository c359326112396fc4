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

#[test]
fn ctrl_c_stops_the_run_and_still_writes_what_was_seen() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args([
            "run",
            "scenarios/keepalive-idle-timeout.yaml",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Well into the 31-minute wait (half a minute of real time at speed 60).
    let started = std::time::Instant::now();
    while !out.join("events.jsonl").exists()
        && started.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "interrupted");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "stopped early"
    );
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("interrupted"), "{junit}");
    assert!(out.join("report.html").exists());
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    assert!(
        events.lines().last().unwrap().contains("hub_stopped"),
        "the log is complete"
    );
}
