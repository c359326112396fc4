//! `fakehub bench` at smoke size: both servers start, every row is measured for each, and the
//! ratios are printed. The real sizes are run by hand (docs/BENCH.md), never by the suite.

use std::process::Command;

#[test]
fn bench_measures_fakehub_and_mosquitto_and_prints_ratios() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["bench", "--devices", "20", "--publishers", "2"])
        .args(["--publish-for", "300ms", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ratio = fakehub / mosquitto"), "{stdout}");
    let header = stdout
        .lines()
        .find(|l| l.starts_with("measure"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    assert!(header.contains("fakehub") && header.contains("mosquitto"));
    for row in [
        "connection storm, connects/s",
        "held connections",
        "KB per held connection",
        "QoS 1 unpaced, msgs/s",
        "server CPU per QoS 1 msg, unpaced, µs",
        "PUBACK p99 at half rate, ms",
        "server killed -> all back, s",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        let cells: Vec<&str> = line[row.len()..].split_whitespace().collect();
        // fakehub, mosquitto, the ratio (and which way is better): all measured.
        assert!(cells.len() >= 3, "{line}");
        for cell in &cells[..3] {
            assert!(cell.parse::<f64>().is_ok(), "unmeasured cell in {line:?}");
        }
    }
    let held = stdout
        .lines()
        .find(|l| l.starts_with("held connections"))
        .unwrap();
    assert!(
        held.split_whitespace().filter(|c| *c == "20").count() == 2,
        "{held}"
    );
}
