//! The simulated regime repeats itself: every scenario of `scenarios/` whose devices run in-process,
//! run 20 times with the same seed, gives the same event sequence (every event, its virtual elapsed
//! time, connection and device) and the same Connections records (times taken from the run's
//! start). Only what names the moment or the machine is left out: the wall-clock start, the
//! listening port.

use std::path::{Path, PathBuf};
use std::process::Command;

const RUNS: usize = 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The scenarios whose devices all run in-process.
fn simulated_scenarios() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join("scenarios"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| {
            !std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim_start().starts_with("run:"))
        })
        .collect();
    out.sort();
    out
}

/// The events of a run without what names the moment or the machine.
fn events(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("time");
                o.remove("listen");
                if let Some(se) = o.remove("token_expiry") {
                    // Kept as an offset from the run's start (below): the absolute value names it.
                    o.insert(
                        "token_expiry_set".into(),
                        serde_json::Value::Bool(!se.is_null()),
                    );
                }
            }
            v
        })
        .collect()
}

/// The records of a run, with times as milliseconds since its first record.
fn records(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("connections.jsonl")).unwrap();
    let mut first = None;
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = v["time"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .unwrap();
            let start = *first.get_or_insert(t);
            let offset = t.duration_since(start).unwrap_or_default().as_millis() as u64;
            v["time"] = serde_json::Value::from(offset);
            v
        })
        .collect()
}

#[test]
fn every_simulated_scenario_repeats_exactly_for_the_same_seed() {
    let scenarios = simulated_scenarios();
    assert!(scenarios.len() >= 5, "{scenarios:?}");
    let dir = tempfile::tempdir().unwrap();
    for scenario in &scenarios {
        let name = scenario.file_stem().unwrap().to_string_lossy().into_owned();
        let mut first: Option<(Vec<serde_json::Value>, Vec<serde_json::Value>)> = None;
        for run in 0..RUNS {
            let out = dir.path().join(format!("{name}-{run}"));
            let status = Command::new(env!("CARGO_BIN_EXE_fakehub"))
                .args(["run", "--seed", "7", "--out"])
                .arg(&out)
                .arg(scenario)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert_eq!(status.code(), Some(0), "{name} run {run}");
            let got = (events(&out), records(&out));
            match &first {
                None => first = Some(got),
                Some(expected) => {
                    if let Some(i) = (0..expected.0.len().max(got.0.len()))
                        .find(|i| expected.0.get(*i) != got.0.get(*i))
                    {
                        panic!(
                            "{name}: run {run} differs from run 0 at event {i}:\n  {:?}\n  {:?}",
                            expected.0.get(i),
                            got.0.get(i)
                        );
                    }
                    assert_eq!(expected.1, got.1, "{name}: run {run}'s records differ");
                }
            }
        }
        let (events, records) = first.unwrap_or_default();
        println!(
            "{name}: {RUNS} runs, {} events and {} records each, identical",
            events.len(),
            records.len()
        );
    }
}
