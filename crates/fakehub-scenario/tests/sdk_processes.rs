//! Real device stacks as `run:` devices with no `clock:` key — the official Node SDK, the official
//! Python SDK and a C program on Debian's libpaho-mqtt (tests/devices) — judged by `fakehub run`
//! on the hub's clock (the time preload): true verdicts for the good apps, and true failures for
//! the apps with a bug, with the times the devices really saw.
//!
//! Each scenario runs through the `fakehub` binary as a user would. Virtual hours take seconds:
//! the time driver skips the time every party spends idle.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy)]
enum App {
    Node,
    Python,
    C,
}

impl App {
    /// The `run:` command of the well-behaved app, with `extra` arguments.
    fn run(self, extra: &[&str]) -> String {
        let root = common::repo_root();
        let mut parts: Vec<String> = match self {
            App::Node => vec![
                "node".into(),
                root.join("tests/devices/node/device.js")
                    .display()
                    .to_string(),
            ],
            App::Python => vec![
                common::python_with_sdk().display().to_string(),
                root.join("tests/devices/python/device.py")
                    .display()
                    .to_string(),
            ],
            App::C => vec![c_app().display().to_string()],
        };
        parts.extend(extra.iter().map(|s| (*s).to_owned()));
        let quoted: Vec<String> = parts.iter().map(|p| format!("{p:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The same app with the token bug: it never gets a new token.
    fn run_fixed_token(self) -> String {
        match self {
            App::Node | App::Python => self.run(&["--fixed-token"]),
            App::C => self.run(&["--bug", "no-token-renewal"]),
        }
    }
}

/// The C app, built once per test run from tests/devices/c into the target directory.
fn c_app() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-device");
            let src = common::repo_root().join("tests/devices/c/device.c");
            let status = Command::new("cc")
                .args(["-Wall", "-Wextra", "-O2", "-o"])
                .arg(&out)
                .arg(&src)
                .args(["-lpaho-mqtt3cs", "-lssl", "-lcrypto", "-lpthread", "-lm"])
                .status()
                .expect("run cc");
            assert!(
                status.success(),
                "building tests/devices/c needs libpaho-mqtt-dev and libssl-dev (.ci/run installs them)"
            );
            out
        })
        .clone()
}

/// Run a scenario through the binary; (exit status, stdout, stderr).
fn run(dir: &Path, name: &str, yaml: &str) -> (i32, String, String) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["run", file.to_str().unwrap(), "--out"])
        .arg(dir.join(name))
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The verdict line of `rule` for device `d` (`PASS d · rule: …`), whatever its mark.
fn verdict<'a>(out: &'a str, rule: &str) -> &'a str {
    out.lines()
        .map(str::trim)
        .find(|l| l.contains(&format!(" d · {rule}:")))
        .unwrap_or_else(|| panic!("no verdict for {rule}:\n{out}"))
}

/// The `worst N.Ns` of a `recovers` verdict, in seconds.
fn worst_recovery(line: &str) -> f64 {
    line.split("worst ")
        .nth(1)
        .and_then(|w| w.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no worst time in {line}"))
}

fn assert_pass(out: &str, err: &str, rules: &[&str]) {
    for rule in rules {
        let line = verdict(out, rule);
        assert!(line.starts_with("PASS"), "{rule}: {line}\n{out}\n{err}");
    }
}

/// Two virtual hours (advance 64m, wait 2m, advance 60m): the good app renews its token and is
/// never dropped; the app with a fixed one-hour token is dropped at 1:05 and fails renews_token.
fn token_life(app: App) {
    let dir = tempfile::tempdir().unwrap();
    let scenario = |run: String| {
        format!(
            "name: token\nhub: {{ token_grace: 5m }}\ndevices:\n  - id: d\n    run: {run}\ntimeline:\n  - advance: 64m\n  - wait: 2m\n  - advance: 60m\nexpect:\n  - renews_token: {{ device: d }}\n  - records: {{ code: 404104, device: d, count: 0 }}\n  - recovers: {{ device: d, within: 60s }}\n"
        )
    };
    let (code, out, err) = run(dir.path(), "good", &scenario(app.run(&[])));
    assert_eq!(code, 0, "{app:?} good app:\n{out}\n{err}");
    assert!(
        out.contains("device processes on the hub's clock"),
        "the default clock of a run: device is the hub's:\n{out}"
    );
    let (code, out, err) = run(dir.path(), "fixed", &scenario(app.run_fixed_token()));
    assert_eq!(code, 1, "{app:?} fixed-token app:\n{out}\n{err}");
    let line = verdict(&out, "renews_token");
    // At 1:05, give or take the moment the app minted its token (a C app may mint it a
    // millisecond before the hub's clock reads zero: dropped at 1:04:59.999).
    assert!(
        line.starts_with("FAIL")
            && (line.contains("dropped it at 1:05:") || line.contains("dropped it at 1:04:59.")),
        "{app:?}: the drop at 1:05 is the failure: {line}"
    );
}

/// A TCP reset at 10 minutes: back within a minute, no message lost, DISCONNECT at the end.
fn reset(app: App) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: reset\ndevices:\n  - id: d\n    run: {}\ntimeline:\n  - advance: 10m\n  - fault: {{ type: reset, devices: {{ ids: [d] }} }}\n  - advance: 10m\n  - stop: {{ device: d }}\nexpect:\n  - recovers: {{ device: d, within: 60s }}\n  - graceful_disconnect: {{ device: d }}\n  - records: {{ code: 404104, device: d, count: 1 }}\n  - no_message_loss: {{ device: d, by: sequence }}\n",
        app.run(&[])
    );
    let (code, out, err) = run(dir.path(), "reset", &yaml);
    assert_eq!(code, 0, "{app:?}:\n{out}\n{err}");
    assert_pass(
        &out,
        &err,
        &[
            "recovers",
            "graceful_disconnect",
            "records",
            "no_message_loss",
        ],
    );
}

/// A quiet device (telemetry every two hours) for 31 minutes: its keep-alive keeps it connected.
fn idle(app: App) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: idle\ndevices:\n  - id: d\n    run: {}\n    env: {{ FAKEHUB_TELEMETRY_SECS: \"7200\" }}\ntimeline:\n  - wait: 31m\nexpect:\n  - keepalive: {{ device: d }}\n  - records: {{ code: 404104, device: d, count: 0 }}\n  - connected: {{ device: d }}\n",
        app.run(&[])
    );
    let (code, out, err) = run(dir.path(), "idle", &yaml);
    assert_eq!(code, 0, "{app:?}:\n{out}\n{err}");
}

/// The `mass-hub-drop` shape for one device: a reset during a 3-minute outage (CONNACK 3). The
/// device must back off while refused (the waits grow, with jitter, under the cap) and be back
/// within the outage plus one backoff step. `run` is the app's command.
fn outage(run_cmd: String) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: outage\ndevices:\n  - id: d\n    run: {run_cmd}\ntimeline:\n  - advance: 5m\n  - fault: {{ type: outage, mode: connack3, duration: 3m }}\n  - fault: {{ type: reset, devices: all }}\n  - advance: 6m\nexpect:\n  - recovers: {{ device: d, within: 5m }}\n  - backoff: {{ device: d }}\n  - no_tight_loop: {{ device: d, min_gap: 50ms }}\n  - records: {{ code: 404104, device: d, count: 1 }}\n  - no_message_loss: {{ device: d, by: sequence }}\n"
    );
    run(dir.path(), "outage", &yaml)
}

#[test]
fn node_sdk_renews_its_token_and_a_fixed_token_is_caught_at_65_minutes() {
    common::node_modules_present();
    token_life(App::Node);
}

#[test]
fn python_sdk_renews_its_token_and_a_fixed_token_is_caught_at_65_minutes() {
    token_life(App::Python);
}

#[test]
fn c_paho_device_renews_its_token_and_one_that_does_not_is_caught_at_65_minutes() {
    token_life(App::C);
}

#[test]
fn node_sdk_recovers_from_a_reset_and_stays_connected_when_quiet() {
    common::node_modules_present();
    reset(App::Node);
    idle(App::Node);
}

#[test]
fn python_sdk_recovers_from_a_reset_and_stays_connected_when_quiet() {
    reset(App::Python);
    idle(App::Python);
}

#[test]
fn c_paho_device_recovers_from_a_reset_and_stays_connected_when_quiet() {
    reset(App::C);
    idle(App::C);
}

/// Every good app backs off through an outage; the times are the devices' own.
#[test]
fn every_good_app_backs_off_through_an_outage() {
    common::node_modules_present();
    for app in [App::Node, App::Python, App::C] {
        let (code, out, err) = outage(app.run(&[]));
        assert_eq!(code, 0, "{app:?}:\n{out}\n{err}");
        // Back after the 3-minute outage (plus at most one backoff step), not before it ended.
        let recovers = verdict(&out, "recovers");
        let worst = worst_recovery(recovers);
        assert!((180.0..=300.0).contains(&worst), "{app:?}: {recovers}");
    }
}

/// What the SDKs do by default is judged as it is. The Node SDK starts a retry loop of its own
/// (each with its own reconnects) for every message sent while offline: an app that keeps
/// sending through an outage reconnects in overlapping bursts that never slow down. The Python
/// SDK's own reconnect (connection_retry) retries at a fixed 10 s interval. Neither backs off.
#[test]
fn sdk_default_retry_patterns_that_do_not_back_off_fail_backoff() {
    common::node_modules_present();
    for (what, cmd) in [
        (
            "node, sending while offline",
            App::Node.run(&["--send-while-offline"]),
        ),
        (
            "python, the SDK's reconnect",
            App::Python.run(&["--sdk-retry"]),
        ),
    ] {
        let (code, out, err) = outage(cmd);
        assert_eq!(code, 1, "{what}:\n{out}\n{err}");
        let line = verdict(&out, "backoff");
        assert!(
            line.starts_with("FAIL") && line.contains("delays do not grow"),
            "{what}: {line}"
        );
        // Nothing else is charged to them: they do come back and lose nothing.
        assert_pass(&out, &err, &["recovers", "records", "no_message_loss"]);
    }
}

/// The Python SDK app as an X.509 device of a scenario (`x509: ca`): it connects with
/// `create_from_x509_certificate` and the certificate the runner issued from the hub's CA, is
/// reset at 10 minutes, and comes back with its certificate (no SAS token anywhere).
#[test]
fn python_sdk_as_an_x509_device_recovers_from_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: x509\ndevices:\n  - id: d\n    x509: ca\n    run: {}\ntimeline:\n  - advance: 10m\n  - fault: {{ type: reset, devices: all }}\n  - advance: 10m\nexpect:\n  - recovers: {{ device: d, within: 60s }}\n  - records: {{ code: 404104, device: d, count: 1 }}\n  - connected: {{ device: d }}\n",
        App::Python.run(&[])
    );
    let (code, out, err) = run(dir.path(), "x509", &yaml);
    assert_eq!(code, 0, "{out}\n{err}");
    let events = std::fs::read_to_string(dir.path().join("x509/events.jsonl")).unwrap();
    let connects: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("\"event\":\"connect\""))
        .collect();
    assert!(connects.len() >= 2, "{connects:?}");
    assert!(
        connects.iter().all(|l| l.contains("\"auth\":\"x509\"")),
        "{connects:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("x509/devices/d.log")).unwrap();
    assert!(log.contains("auth=x509"), "{log}");
}
