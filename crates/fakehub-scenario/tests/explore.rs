//! Exploring fault schedules (docs/EXPLORE.md): from a scenario that holds only a device and the
//! generic expectations (scenarios/explore/sensor.yaml, no timeline), explore finds every
//! sample-device bug within a bounded number of schedules, shrinks it to at most 3 timeline steps,
//! and the written scenario fails with that bug and passes with the well-behaved device under
//! `fakehub run`; the well-behaved device survives the generated schedules; the search repeats
//! from its seed; and the strategy works inside `proptest!`, with proptest's own shrinking and
//! regression file.
//!
//! Every run is simulated (a paused runtime, devices in memory): each repeats exactly for its seed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use fakehub_scenario::explore::{self, Schedule, Vocabulary};
use fakehub_scenario::runner::RunOptions;
use fakehub_scenario::scenario::{self, Scenario, Step};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestError, TestRunner};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sensor() -> Scenario {
    scenario::load(&repo().join("scenarios/explore/sensor.yaml")).unwrap()
}

fn fakehub(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each bug, and the rules that show it (docs/ASSERTIONS.md).
const BUGS: [(&str, &[&str]); 11] = [
    ("no-token-renewal", &["renews_token"]),
    ("stale-token", &["renews_token", "recovers"]),
    ("no-backoff", &["backoff"]),
    ("no-jitter", &["backoff"]),
    ("lose-inflight", &["no_message_loss"]),
    ("no-resubscribe", &["resubscribes"]),
    ("no-disconnect", &["graceful_disconnect"]),
    ("huge-keepalive", &["keepalive"]),
    ("ignore-methods", &["method"]),
    ("no-c2d-ack", &["c2d_delivered"]),
    ("ignore-desired", &["desired_applied"]),
];

/// The search is bounded: each bug must be found within this many schedules.
const RUNS: usize = 60;
const SEED: u64 = 1;

/// Find `bug` from sensor.yaml, write the minimal scenario into `dir`; what was found and where.
fn find(bug: &str, dir: &Path) -> (explore::Found, PathBuf) {
    let base = sensor();
    let opts = explore::Options {
        runs: RUNS,
        seed: SEED,
        sample_bugs: vec![bug.to_owned()],
        max_shrink_runs: 200,
        ..Default::default()
    };
    let report = explore::explore(&base, &opts, &mut |_| {}).unwrap();
    let found = report
        .found
        .unwrap_or_else(|| panic!("{bug}: not found in {} schedules", report.runs));
    let provenance = explore::write::Provenance {
        source: "scenarios/explore/sensor.yaml".into(),
        seed: SEED,
        index: found.index,
        steps_before: found.original.timeline.len(),
        shrink_runs: found.shrink_runs,
        sample_bugs: vec![bug.to_owned()],
    };
    let path = explore::write_minimal(&dir.join(bug), &base, &found, &provenance).unwrap();
    (found, path)
}

/// `fakehub run FILE` fails `rule` with `bug` (exit 1) and passes with the well-behaved device.
fn reproduces(file: &str, bug: &str, rule: &str, dir: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let out = dir.join(format!("{bug}-run-bad"));
    let (code, stdout, err) = fakehub(&[
        "run",
        file,
        "--sample-bug",
        bug,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{bug}: {text}\n{stdout}\n{err}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("FAIL ") && l.contains(&format!(" · {rule}:"))),
        "{bug}: {rule} does not fail: {text}\n{stdout}"
    );
    let out = dir.join(format!("{bug}-run-good"));
    let (code, stdout, err) = fakehub(&["run", file, "--out", out.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "{bug}: the well-behaved device: {text}\n{stdout}\n{err}"
    );
}

#[test]
fn every_sample_bug_is_found_shrunk_to_three_steps_and_reproduced_by_fakehub_run() {
    let dir = tempfile::tempdir().unwrap();
    let work = Mutex::new(BUGS.to_vec());
    let rows = Mutex::new(Vec::new());
    // Two workers: each exploration is independent and deterministic.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((bug, rules)) = work.lock().unwrap().pop() else {
                    return;
                };
                let (found, path) = find(bug, dir.path());
                let rule = found.target.rule.clone();
                assert!(
                    rules.contains(&rule.as_str()),
                    "{bug}: found by {rule}, expected one of {rules:?}"
                );
                assert!(
                    found.minimal.timeline.len() <= 3,
                    "{bug}: shrunk to {} steps:\n{:?}",
                    found.minimal.timeline.len(),
                    found.minimal
                );
                // The written file is a standalone scenario: checked, and it reproduces the failure.
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.starts_with("# Minimal fault schedule found by `fakehub explore"));
                assert!(text.contains(&format!("--seed {SEED}")), "{text}");
                assert!(text.contains(&format!("Failing rule: {rule}")), "{text}");
                let file = path.to_str().unwrap();
                let (code, _, err) = fakehub(&["validate", file]);
                assert_eq!(code, 0, "{bug}: validate {file}: {err}");
                reproduces(file, bug, &rule, dir.path());
                rows.lock().unwrap().push(format!(
                    "{bug}: schedule {} broke {rule}; {} → {} steps in {} runs: {}",
                    found.index,
                    found.original.timeline.len(),
                    found.minimal.timeline.len(),
                    found.shrink_runs,
                    found
                        .minimal
                        .timeline
                        .iter()
                        .map(Step::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort();
    println!("{}", rows.join("\n"));
    assert_eq!(rows.len(), BUGS.len());
}

/// The well-behaved device breaks nothing over generated schedules (no false positives). A
/// longer run is documented in docs/EXPLORE.md (`--runs 1000` and more, release build).
#[test]
fn the_well_behaved_device_survives_generated_schedules() {
    let base = sensor();
    let opts = explore::Options {
        runs: 150,
        seed: 20,
        ..Default::default()
    };
    let report = explore::explore(&base, &opts, &mut |_| {}).unwrap();
    if let Some(f) = &report.found {
        panic!(
            "the well-behaved device failed schedule {}:\n{:?}\n{}",
            f.index, f.minimal, f.target.verdict
        );
    }
    assert_eq!(report.runs, 150);
    println!(
        "{} schedules, {:?} of virtual time, {:.1}s",
        report.runs,
        report.virtual_time,
        report.search_time.as_secs_f64()
    );
}

#[test]
fn the_search_repeats_from_its_seed() {
    let base = sensor();
    let first: Vec<String> = {
        let mut next = explore::generator(&base, 7);
        (0..30).map(|_| format!("{:?}", next().unwrap())).collect()
    };
    let again: Vec<String> = {
        let mut next = explore::generator(&base, 7);
        (0..30).map(|_| format!("{:?}", next().unwrap())).collect()
    };
    assert_eq!(first, again);
    let other: Vec<String> = {
        let mut next = explore::generator(&base, 8);
        (0..30).map(|_| format!("{:?}", next().unwrap())).collect()
    };
    assert_ne!(first, other);
    // The same failure, shrunk the same way.
    let opts = explore::Options {
        runs: RUNS,
        seed: SEED,
        sample_bugs: vec!["no-resubscribe".into()],
        ..Default::default()
    };
    let a = explore::explore(&base, &opts, &mut |_| {})
        .unwrap()
        .found
        .unwrap();
    let b = explore::explore(&base, &opts, &mut |_| {})
        .unwrap()
        .found
        .unwrap();
    assert_eq!((a.index, &a.minimal), (b.index, &b.minimal));
}

/// What generated schedules are made of: the whole catalogue but `rotate_key`, one-shot and lasting
/// faults, every kind of selector, time and service steps, all runnable.
#[test]
fn generated_schedules_cover_the_catalogue_and_stay_runnable() {
    let base = sensor();
    let mut next = explore::generator(&base, 3);
    let mut kinds = std::collections::BTreeSet::new();
    let mut selectors = std::collections::BTreeSet::new();
    let mut steps = std::collections::BTreeSet::new();
    let (mut one_shot, mut lasting) = (0, 0);
    for _ in 0..400 {
        let s: Schedule = next().unwrap();
        let scenario = s.scenario(&base);
        // Each is a scenario `fakehub validate` accepts.
        let yaml = explore::write::to_yaml(&scenario, "").unwrap();
        let back = scenario::parse(Path::new("generated.yaml"), &yaml).unwrap();
        assert_eq!(back.timeline, scenario.timeline);
        for step in &s.timeline {
            steps.insert(step.describe().split(' ').next().unwrap_or("").to_owned());
            if let Step::Fault(f) = step {
                kinds.insert(f.fault.kind.name());
                selectors.insert(
                    format!("{:?}", f.fault.devices)
                        .split('(')
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
                match f.fault.duration {
                    Some(d) => {
                        lasting += 1;
                        assert!(d <= std::time::Duration::from_secs(30 * 60), "{s:?}");
                    }
                    None => one_shot += 1,
                }
            }
        }
        // Every schedule ends quiet.
        assert!(
            matches!(s.timeline.last(), Some(Step::Advance(_) | Step::Wait(_))),
            "{s:?}"
        );
    }
    let all: std::collections::BTreeSet<&str> = fakehub::faults::FaultKind::NAMES
        .iter()
        .copied()
        // Never generated: rotate_key (no device can connect after it); the provisioning
        // service's faults (drawn only for scenarios with `dps:`).
        .filter(|n| *n != "rotate_key" && *n != "hub_down" && !n.starts_with("dps_"))
        .collect();
    assert_eq!(kinds, all);
    assert_eq!(
        selectors,
        ["All", "Glob", "Ids", "Percent"].map(String::from).into()
    );
    for s in ["advance", "wait", "fault", "method", "c2d", "desired"] {
        assert!(steps.contains(s), "{s} in {steps:?}");
    }
    assert!(
        one_shot > 50 && lasting > 50,
        "{one_shot} one-shot, {lasting} lasting"
    );
}

// A firmware test over fault schedules, as docs/EXPLORE.md shows it: proptest's own runner,
// shrinking and regression file.
proptest! {
    #![proptest_config(Config { cases: 12, failure_persistence: None, ..Config::default() })]
    #[test]
    fn the_well_behaved_sample_device_keeps_every_rule(
        schedule in explore::schedules(&Vocabulary::of(&sensor()))
    ) {
        explore::check(&sensor(), &schedule, &RunOptions::default())?;
    }
}

#[test]
fn proptest_finds_and_shrinks_a_bug_and_records_its_seed() {
    // A firmware test about one rule.
    let mut base = sensor();
    base.expect.retain(|e| e.name() == "resubscribes");
    let dir = tempfile::tempdir().unwrap();
    let regressions: &'static str = Box::leak(
        dir.path()
            .join("regressions.txt")
            .to_string_lossy()
            .into_owned()
            .into_boxed_str(),
    );
    let config = Config {
        cases: 64,
        max_shrink_iters: 300,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        source_file: Some(file!()),
        ..Config::default()
    };
    let bugs = RunOptions {
        seed: None,
        sample_bugs: vec!["no-resubscribe".into()],
        draw: false,
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let result = runner.run(&explore::schedules(&Vocabulary::of(&base)), |s| {
        explore::check(&base, &s, &bugs)
    });
    let Err(TestError::Fail(why, minimal)) = result else {
        panic!("no-resubscribe not found: {result:?}");
    };
    println!("proptest's minimal schedule ({why}):\n{minimal:?}");
    assert!(why.message().contains("resubscribes"), "{why}");
    assert!(minimal.timeline.len() <= 4, "{minimal:?}");
    // It still fails, and the well-behaved device passes it.
    assert!(explore::check(&base, &minimal, &bugs).is_err());
    explore::check(&base, &minimal, &RunOptions::default()).unwrap();
    let saved = std::fs::read_to_string(regressions).unwrap();
    assert!(saved.lines().any(|l| l.starts_with("cc ")), "{saved}");
}

/// `fakehub explore` itself: exit 0 with what was tried when nothing fails, 2 for bad input, and
/// device processes explored the same way (slower: real processes on the hub's clock).
#[test]
fn the_command_reports_exits_and_explores_device_processes() {
    let dir = tempfile::tempdir().unwrap();
    let sensor = repo().join("scenarios/explore/sensor.yaml");
    let sensor = sensor.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let (code, stdout, stderr) = fakehub(&[
        "explore", sensor, "--runs", "5", "--seed", "20", "--out", out,
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("no failure: 5 schedules, "), "{stdout}");
    assert!(stdout.contains("of virtual time"), "{stdout}");
    let (code, _, stderr) = fakehub(&["explore", sensor, "--sample-bug", "no-such-bug"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown bug"), "{stderr}");
    // A device process: the bundled sample device as `run: [sample-device]`.
    let proc = dir.path().join("proc.yaml");
    std::fs::write(
        &proc,
        "name: proc\ndevices:\n  - id: sensor\n    run: [sample-device]\nexpect:\n  - recovers: { within: 5m }\n  - graceful_disconnect: {}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = fakehub(&[
        "explore",
        proc.to_str().unwrap(),
        "--runs",
        "3",
        "--seed",
        "4",
        "--sample-bug",
        "no-disconnect",
        "--out",
        out,
    ]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let written = stdout.lines().last().unwrap_or_default();
    assert!(written.ends_with("proc-minimal.yaml"), "{stdout}");
    let text = std::fs::read_to_string(written).unwrap();
    assert!(
        text.contains("run:\n  - sample-device") || text.contains("- sample-device"),
        "{text}"
    );
    assert!(text.contains("graceful_disconnect"), "{text}");
    assert!(
        stdout.contains("FAIL sensor · graceful_disconnect"),
        "{stdout}"
    );
}

fn dps_fleet() -> Scenario {
    scenario::load(&repo().join("scenarios/explore/dps-fleet.yaml")).unwrap()
}

/// With a provisioning service and two hubs, schedules draw DPS faults too, and `hub_down` is
/// aimed at one of the scenario's hubs.
#[test]
fn dps_schedules_draw_the_provisioning_faults_and_aim_hub_down_at_a_hub() {
    let base = dps_fleet();
    let hubs = ["hub-a.azure-devices.net", "hub-b.azure-devices.net"];
    let mut next = explore::generator(&base, 5);
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let s: Schedule = next().unwrap();
        for step in &s.timeline {
            if let Step::Fault(f) = step {
                kinds.insert(f.fault.kind.name());
                match (f.fault.kind.name(), &f.hub) {
                    ("hub_down", Some(h)) => assert!(hubs.contains(&h.as_str()), "{h}"),
                    ("hub_down", None) => panic!("hub_down aimed at no hub: {s:?}"),
                    (_, hub) => assert_eq!(*hub, None, "{s:?}"),
                }
            }
        }
        let yaml = explore::write::to_yaml(&s.scenario(&base), "").unwrap();
        scenario::parse(Path::new("generated.yaml"), &yaml).unwrap();
    }
    for k in [
        "dps_throttle",
        "dps_error",
        "dps_assigning",
        "dps_drop",
        "dps_disabled",
        "hub_down",
    ] {
        assert!(kinds.contains(k), "{k} never drawn: {kinds:?}");
    }
}

/// The provisioning bugs are found from dps-fleet.yaml (the well-behaved device survives the same
/// schedules: a schedule counts only then), and the written scenario reproduces each.
#[test]
fn every_provisioning_bug_is_found_from_the_dps_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let base = dps_fleet();
    for (bug, seed, rules) in [
        ("ignore-retry-after", 1, &["honours_retry_after"][..]),
        ("no-reprovision", 1, &["reprovisions_after"][..]),
        ("short-dps-timeout", 4, &["recovers", "provisions"][..]),
    ] {
        let opts = explore::Options {
            runs: 300,
            seed,
            sample_bugs: vec![bug.to_owned()],
            max_shrink_runs: 200,
            ..Default::default()
        };
        let report = explore::explore(&base, &opts, &mut |_| {}).unwrap();
        let found = report
            .found
            .unwrap_or_else(|| panic!("{bug}: not found in {} schedules", report.runs));
        assert!(
            rules.contains(&found.target.rule.as_str()),
            "{bug}: found by {}",
            found.target.rule
        );
        let provenance = explore::write::Provenance {
            source: "scenarios/explore/dps-fleet.yaml".into(),
            seed,
            index: found.index,
            steps_before: found.original.timeline.len(),
            shrink_runs: found.shrink_runs,
            sample_bugs: vec![bug.to_owned()],
        };
        let path =
            explore::write_minimal(&dir.path().join(bug), &base, &found, &provenance).unwrap();
        reproduces(path.to_str().unwrap(), bug, &found.target.rule, dir.path());
    }
}

/// No false failures with DPS: the well-behaved device keeps every rule of dps-fleet.yaml over
/// generated schedules (the documented longer run is 1,000; see docs/EXPLORE.md).
#[test]
fn the_well_behaved_device_survives_dps_schedules() {
    let opts = explore::Options {
        runs: 150,
        seed: 2,
        ..Default::default()
    };
    let report = explore::explore(&dps_fleet(), &opts, &mut |_| {}).unwrap();
    assert!(
        report.found.is_none(),
        "{:?}",
        report.found.map(|f| f.target)
    );
    assert_eq!(report.runs, 150);
}
