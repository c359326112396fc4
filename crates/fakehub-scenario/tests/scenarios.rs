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
    matrix_of(scenario, &[(bug, rule)]);
}

/// Run `scenario` with the well-behaved device, then with each bug; each must be caught by its rule.
fn matrix_of(scenario: &str, bugs: &[(&str, &str)]) {
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
    for (bug, rule) in bugs {
        caught(dir.path(), &path, bug, rule);
    }
}

fn caught(dir: &Path, path: &str, bug: &str, rule: &str) {
    let scenario = path;
    let bad = dir.join(format!("bad-{bug}"));
    let (code, out, err) = fakehub(&[
        "run",
        path,
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

#[test]
fn service_calls() {
    matrix_of(
        "service-calls",
        &[
            ("ignore-methods", "method"),
            ("no-c2d-ack", "c2d_delivered"),
            ("ignore-desired", "desired_applied"),
        ],
    );
}

#[test]
fn dps_provisioning() {
    matrix("dps-provisioning", "short-dps-timeout", "provisions");
}

#[test]
fn dps_hub_failover() {
    matrix_of(
        "dps-hub-failover",
        &[
            ("no-reprovision", "reprovisions_after"),
            ("ignore-retry-after", "honours_retry_after"),
        ],
    );
    // The DPS diagnostic records are written beside the Connections records.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = fakehub(&[
        "run",
        "scenarios/dps-hub-failover.yaml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let records = std::fs::read_to_string(out.join("dps.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().all(|r| r["category"] == "DeviceOperations"));
    assert!(records
        .iter()
        .any(|r| r["operationName"] == "RegisterDevice" && r["resultSignature"] == "429"));
    // Both hubs' Connections records, each with its own resource id.
    let connections = std::fs::read_to_string(out.join("connections.jsonl")).unwrap();
    assert!(connections.contains("/IOTHUBS/HUB-A\""), "{connections}");
    assert!(connections.contains("/IOTHUBS/HUB-B\""));
}

#[test]
fn dps_scenarios_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "name: x\ndevices:\n  - id: d\n    provision: individual\n",
            "no `dps:`",
        ),
        (
            "name: x\ndps: {}\ndevices:\n  - id: d\n    provision: { group: nope }\n",
            "no enrollment group `nope`",
        ),
        (
            "name: x\nhub: { token_grace: 1m }\nhubs:\n  - host_name: a\ndevices:\n  - id: d\n",
            "either `hub` or `hubs`",
        ),
        (
            "name: x\nhubs:\n  - host_name: a\n  - host_name: a\ndevices:\n  - id: d\n",
            "defined twice",
        ),
        (
            "name: x\ndevices:\n  - id: d\ntimeline:\n  - fault: { type: dps_throttle }\n",
            "needs a provisioning service",
        ),
        (
            "name: x\ndps: {}\ndevices:\n  - id: d\ntimeline:\n  - fault: { type: hub_down, hub: nowhere }\n",
            "no hub `nowhere`",
        ),
    ];
    for (i, (yaml, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let (code, out, err) = fakehub(&["validate", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{yaml}\n{out}{err}");
        assert!(err.contains(says), "{yaml}: {err}");
    }
}

/// Write `yaml` as a scenario, run it; (exit status, stdout, stderr, output directory).
fn run_yaml(dir: &Path, yaml: &str) -> (i32, String, String, std::path::PathBuf) {
    let file = dir.join("s.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = dir.join("out");
    let (code, stdout, stderr) = fakehub(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    (code, stdout, stderr, out)
}

/// A device process that exits by itself 10 s in: its exit is an event at that instant (not when
/// the run stops it at 90 s), and the rules that fail because of it name it.
#[test]
fn a_device_process_exit_is_recorded_when_it_happens_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err, dir) = run_yaml(
        dir.path(),
        "name: exits\ndevices:\n  - id: sensor-1\n    run: [sample-device, --exit-after, \"10\"]\ntimeline:\n  - advance: 90s\nexpect:\n  - connected: { device: sensor-1 }\n  - recovers: { device: sensor-1, within: 30s }\n",
    );
    assert_eq!(code, 1, "{out}\n{err}");
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let exited: serde_json::Value = events
        .lines()
        .find(|l| l.contains("\"action\":\"exited\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("the exit is an event:\n{events}"));
    assert_eq!(exited["code"], 3);
    let at = exited["elapsed_ms"].as_u64().unwrap();
    assert!(
        (10_000..11_000).contains(&at),
        "exited at {at} ms: {exited}"
    );
    for rule in ["connected", "recovers"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("FAIL sensor-1 · {rule}:")))
            .unwrap_or_else(|| panic!("{rule} fails:\n{out}"));
        assert!(
            line.contains("the device process exited (exit status 3) at 00:10."),
            "{line}"
        );
    }
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("exited"), "the report shows the exit");
}

/// A rule with nothing to judge is neither a pass nor a fail: CANNOT JUDGE, exit 2, a JUnit
/// `<error>`; the report and JUnit say how each device kept time.
#[test]
fn a_rule_that_cannot_be_judged_exits_2_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err, dir) = run_yaml(
        dir.path(),
        "name: nothing-to-judge\ndevices:\n  - id: sensor-1\ntimeline:\n  - advance: 10m\nexpect:\n  - connected: { device: sensor-1 }\n  - method: { device: sensor-1 }\n  - renews_token: { device: sensor-1 }\n",
    );
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("nothing-to-judge — CANNOT JUDGE"), "{out}");
    assert!(out.contains("PASS sensor-1 · connected"), "{out}");
    assert!(
        out.contains(
            "CANNOT JUDGE sensor-1 · method: cannot judge: no direct method was invoked on it"
        ),
        "{out}"
    );
    assert!(
        out.contains("CANNOT JUDGE sensor-1 · renews_token: cannot judge"),
        "a 10-minute run is shorter than the token's life:\n{out}"
    );
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains("errors=\"2\""), "{junit}");
    assert!(junit.contains("<error type=\"cannot-judge\""), "{junit}");
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert!(
        junit.contains("<property name=\"clock.sensor-1\" value=\"simulated\"/>"),
        "{junit}"
    );
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("CANNOT JUDGE"));
    assert!(report.contains("simulated (discrete-event virtual time) — sensor-1"));
}

/// Without `device`, a rule is judged per device; `fleet: true` counts the fleet's records together.
#[test]
fn records_are_per_device_unless_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err, _) = run_yaml(
        dir.path(),
        "name: per-device\ndevices:\n  - id: meter\n    count: 3\ntimeline:\n  - advance: 1m\n  - fault: { type: reset, devices: all }\n  - advance: 1m\nexpect:\n  - records: { code: 404104, count: 1 }\n  - records: { code: 404104, fleet: true, count: 1 }\n",
    );
    assert_eq!(code, 1, "{out}\n{err}");
    for d in ["meter-0", "meter-1", "meter-2"] {
        assert!(out.contains(&format!("PASS {d} · records")), "{out}");
    }
    let fleet = out
        .lines()
        .find(|l| l.contains("FAIL fleet · records"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(fleet.contains('3'), "{fleet}");
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
    // The sample device answers methods with 200; the result is in the log.
    assert!(
        stderr.contains("method reset on sensor-1: status 200"),
        "{stderr}"
    );
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

// ---- Issue 14: scenarios that passed `validate` and then could not run ----

#[test]
fn timeline_lengths_past_a_month_are_refused_with_the_allowed_range() {
    for (step, line_col) in [
        ("advance: 18446744073709551615s", "5:5"),
        ("advance: 1000000h", "5:5"),
        ("wait: 745h", "5:5"),
    ] {
        refused(
            &format!("{GOOD_HEAD}timeline:\n  - {step}\n"),
            line_col,
            "a run may let 0s to 31days pass in all",
        );
    }
    // Added up: each step is fine, the sum is not.
    refused(
        &format!("{GOOD_HEAD}timeline:\n  - advance: 20days\n  - wait: 1h\n  - advance: 20days\n"),
        "5:5",
        "a run may let 0s to 31days pass",
    );
}

#[test]
fn durations_that_overflow_the_clock_are_refused_where_they_are_written() {
    refused(
        &format!(
            "{GOOD_HEAD}timeline:\n  - fault: {{ type: outage, mode: refuse_tcp, duration: 18446744073709551615s }}\n"
        ),
        "5:56",
        "a duration may be 0s to 31days",
    );
    refused(
        &format!("{GOOD_HEAD}hub:\n  token_grace: 99999999999999999999999s\n"),
        "5:16",
        "expected a duration",
    );
    refused(
        "name: t\ndevices:\n  - id: sensor-1\n    telemetry_interval: 0s\n",
        "4:5",
        "`telemetry_interval` may be 1ms to 31days",
    );
}

#[test]
fn speed_is_refused_whatever_its_value() {
    refused(
        &format!("{GOOD_HEAD}hub:\n  speed: 1.0e308\n"),
        "5:3",
        "`speed` is no longer needed",
    );
}

#[test]
fn a_zero_keepalive_cap_is_refused() {
    refused(
        &format!("{GOOD_HEAD}hub:\n  keepalive_cap: 0s\n"),
        "5:3",
        "it may be 1s to 31days",
    );
}

#[test]
fn fleets_too_large_for_memory_or_descriptors_are_refused_at_once() {
    let started = std::time::Instant::now();
    refused(
        "name: t\ndevices:\n  - id: fleet\n    count: 1000000000\n",
        "3:9",
        "a scenario may run 1 to 100000",
    );
    refused(
        "name: t\ndevices:\n  - id: fleet\n    count: 100001\n",
        "3:9",
        "a scenario may run 1 to 100000",
    );
    refused(
        "name: t\ndevices:\n  - id: procs\n    count: 100000\n    run: [sample-device]\n",
        "3:9",
        "device processes in all; a scenario may run 1 to",
    );
    // Within the fleet limit, but more messages than a run can send.
    refused(
        "name: t\ndevices:\n  - id: fleet\n    count: 10000\n    telemetry_interval: 1s\ntimeline:\n  - advance: 1h\n",
        "3:9",
        "a run may send up to 20000000",
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn deep_nesting_and_huge_files_are_refused_before_the_yaml_parser() {
    let started = std::time::Instant::now();
    let deep = format!("{GOOD_HEAD}expect: {}\n", "[".repeat(100_000));
    refused(
        &deep,
        "4:41",
        "nested 33 deep: at most 32 levels are allowed",
    );
    let big = format!("{GOOD_HEAD}description: \"{}\"\n", "x".repeat(2 << 20));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    std::fs::write(&file, big).unwrap();
    let (code, _, err) = fakehub(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("over 1048576 bytes"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused at once: {:?}",
        started.elapsed()
    );
    // Brackets in quotes and comments are text, not nesting.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.yaml");
    let text = format!(
        "{GOOD_HEAD}description: \"{}\" # {}\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    std::fs::write(&file, text).unwrap();
    let (code, _, err) = fakehub(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

/// X.509 devices in a scenario: the runner makes each a certificate (issued by the hub's CA, or
/// self-signed and registered by its thumbprint); in-process sample devices and the bundled
/// sample device as a process connect with it (no SAS token), are reset, and come back the same
/// way. A token rule cannot judge a device that never used a token.
#[test]
fn x509_devices_connect_with_their_certificates_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: x509\ndevices:\n  - id: cam-ca\n    x509: ca\n  - id: cam-self\n    x509: self_signed\n  - id: cam-proc\n    x509: ca\n    run: [sample-device]\ntimeline:\n  - advance: 5m\n  - fault: { type: reset, devices: all }\n  - advance: 5m\nexpect:\n  - recovers: { within: 60s }\n  - records: { code: 404104, count: 1 }\n  - connected: {}\n";
    let (code, stdout, stderr, out) = run_yaml(dir.path(), yaml);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    for d in ["cam-ca", "cam-self", "cam-proc"] {
        let connects: Vec<&str> = events
            .lines()
            .filter(|l| {
                l.contains(&format!("\"device\":\"{d}\"")) && l.contains("\"event\":\"connect\"")
            })
            .collect();
        assert!(connects.len() >= 2, "{d} connected again after the reset");
        assert!(
            connects.iter().all(|l| l.contains("\"auth\":\"x509\"")),
            "{d} used its certificate every time: {connects:?}"
        );
    }
    // The process got its certificate and a private key file.
    let key = out.join("devices/cam-proc.key");
    assert!(std::fs::read_to_string(out.join("devices/cam-proc.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is private");
    }
    // No key in the logs or reports.
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    for f in [
        "events.jsonl",
        "connections.jsonl",
        "report.html",
        "junit.xml",
    ] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(!text.contains(key_body), "{f} leaks the device key");
    }
    // renews_token has nothing to judge on a certificate.
    let yaml = yaml.replace(
        "  - connected: {}\n",
        "  - renews_token: { device: cam-self }\n",
    );
    let (code, stdout, _, _) = run_yaml(dir.path(), &yaml);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("CANNOT JUDGE cam-self · renews_token"),
        "{stdout}"
    );
}

/// Found by explore: a device whose hub refuses it registers with DPS again, and `provisions`
/// follows it to the hub assigned last (it used to judge it against its first assignment and fail
/// a well-behaved device: "assigned … but never connected to its hub"). `short-dps-timeout` still
/// fails it.
#[test]
fn provisions_follows_a_device_that_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: reprovisioned\nseed: 13373260722406342303\nhubs:\n  - host_name: hub-a.azure-devices.net\n  - host_name: hub-b.azure-devices.net\ndps:\n  id_scope: 0ne0000F4KE\n  groups:\n    - name: fleet\ndevices:\n  - id: meter\n    count: 2\n    provision: { group: fleet }\ntimeline:\n  - fault: { type: connack, mode: refuse, code: 3, duration: 45s }\n  - fault: { type: hub_down, mode: refuse_tcp, duration: 15s, hub: hub-b.azure-devices.net }\n  - advance: 7m 15s\nexpect:\n  - provisions: { within: 6m }\n  - reprovisions_after: { device: meter-1, failures: 3, within: 6m }\n";
    let (code, stdout, stderr, _) = run_yaml(dir.path(), yaml);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PASS meter-1 · reprovisions_after: 1 times"),
        "the device did register again: {stdout}"
    );
}
