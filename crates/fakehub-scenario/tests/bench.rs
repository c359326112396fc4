//! `fakehub bench` at smoke size: the four servers start (mosquitto twice: as it comes, and
//! answering at once), every row is measured for each (twice,
//! interleaved, and the medians printed), and the ratios are printed. The real sizes are run by hand (docs/BENCH.md), never by the suite.

use std::process::Command;

#[test]
fn bench_measures_fakehub_mosquitto_and_the_bare_acceptor_and_prints_ratios() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["bench", "--devices", "20", "--publishers", "2"])
        .args(["--publish-for", "300ms", "--runs", "2"])
        // A line for both mosquittos' configuration.
        .args(["--mosquitto-conf", "max_inflight_messages 20", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("÷ peer = fakehub / that peer"), "{stdout}");
    assert!(
        stdout.contains("medians of 2 interleaved runs of each server"),
        "{stdout}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("measure"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    for column in [
        "fakehub",
        "mosquitto",
        "mosquitto-nodelay",
        "bare",
        "÷ mosquitto",
        "÷ mosquitto-nodelay",
        "÷ bare",
    ] {
        assert!(header.contains(column), "{header}");
    }
    for row in [
        "connection storm, connects/s",
        "  server CPU per connect, µs",
        "held connections",
        "KB per held connection",
        "QoS 1 unpaced, msgs/s",
        "server CPU per QoS 1 msg, unpaced, µs",
        "server CPU per QoS 1 msg at 10000 msgs/s, µs",
        "  the load tool's CPU per msg meanwhile, µs",
        "  server + load tool, µs",
        "  thread switches per msg at 10000 msgs/s",
        "  PUBACK p99 at 10000 msgs/s, ms",
        "PUBACK p99 at half rate, ms",
        "server killed -> all back, s",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        let cells: Vec<&str> = line[row.len()..].split_whitespace().collect();
        // The four servers and the three ratios (and which way is better): all measured.
        assert!(cells.len() >= 7, "{line}");
        for cell in &cells[..7] {
            assert!(cell.parse::<f64>().is_ok(), "unmeasured cell in {line:?}");
        }
    }
    // The ratios run by run: a median, its lowest and highest for each peer.
    let storm = stdout
        .split("ratios run by run")
        .nth(1)
        .and_then(|block| block.lines().find(|l| l.starts_with("connection storm")))
        .unwrap_or_else(|| panic!("no run-by-run ratios in:\n{stdout}"));
    let cells: Vec<&str> = storm["connection storm, connects/s".len()..]
        .split_whitespace()
        .collect();
    assert_eq!(cells.len(), 7, "{storm}");
    for cell in [cells[0], cells[2], cells[4]] {
        assert!(cell.parse::<f64>().is_ok(), "{storm}");
    }
    for cell in [cells[1], cells[3], cells[5]] {
        let range = cell.trim_start_matches('(').trim_end_matches(')');
        let (low, high) = range.split_once('–').unwrap_or_else(|| panic!("{storm}"));
        assert!(
            low.parse::<f64>().unwrap() <= high.parse::<f64>().unwrap(),
            "{storm}"
        );
    }
    // Both mosquittos ran with the added line (after the benchmark's own); one of them answers
    // at once, the other as it comes.
    let conf =
        |kind: &str| std::fs::read_to_string(out.path().join(kind).join("mosquitto.conf")).unwrap();
    let (plain, nodelay) = (conf("mosquitto"), conf("mosquitto-nodelay"));
    for c in [&plain, &nodelay] {
        assert!(c.lines().last() == Some("max_inflight_messages 20"), "{c}");
    }
    assert!(!plain.contains("set_tcp_nodelay"), "{plain}");
    assert!(
        nodelay.lines().any(|l| l == "set_tcp_nodelay true"),
        "{nodelay}"
    );
    // Each run's own figures, so that the spread behind a median can be seen.
    for kind in ["fakehub", "mosquitto", "mosquitto-nodelay", "bare"] {
        for round in 1..=2 {
            let tag = format!("bench: {kind} run {round}: storm ");
            assert!(stderr.contains(&tag), "no {tag:?} in:\n{stderr}");
        }
    }
    // fakehub's event log writer is measured on its own (its thread is found by name).
    let writer = stdout
        .lines()
        .find(|l| l.starts_with("  of which the event log writer"))
        .unwrap_or_else(|| panic!("no event log writer row in:\n{stdout}"));
    let cells: Vec<&str> = writer.split_whitespace().skip(7).collect();
    assert!(
        cells.first().is_some_and(|c| c.parse::<f64>().is_ok()),
        "{writer}"
    );
    // The hypervisor's steal over the paced runs, for each server: a number, however small.
    let stolen = stdout
        .lines()
        .find(|l| l.starts_with("host CPU stolen by the hypervisor during the paced runs, %:"))
        .unwrap_or_else(|| panic!("no steal line in:\n{stdout}"));
    for kind in ["fakehub", "mosquitto", "mosquitto-nodelay", "bare"] {
        let after = stolen
            .split_once(&format!(" {kind} "))
            .map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""))
            .unwrap_or_else(|| panic!("no {kind} in {stolen:?}"));
        assert!(
            after
                .parse::<f64>()
                .is_ok_and(|p| (0.0..=100.0).contains(&p)),
            "{stolen}"
        );
    }
    let held = stdout
        .lines()
        .find(|l| l.starts_with("held connections"))
        .unwrap();
    assert!(
        held.split_whitespace().filter(|c| *c == "20").count() == 4,
        "{held}"
    );
}

/// The fleet scenario at 1,000 devices (the 100,000 one is run by hand): a mass drop of the whole
/// fleet, a 3-minute outage and a throttled reconnect storm, judged in a few seconds.
#[test]
fn a_thousand_device_fleet_is_dropped_and_comes_back_through_the_throttle() {
    let out = tempfile::tempdir().unwrap();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/bench/fleet-1k.yaml"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["run", scenario, "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(stdout.contains("fleet-1k — PASS"), "{stdout}");
    assert!(
        stdout.contains("PASS fleet · fleet_spread: 1000 devices back"),
        "{stdout}"
    );
}
