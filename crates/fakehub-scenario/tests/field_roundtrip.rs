//! Round trips: run each scenario of scenarios/ with the sample-device bug it targets, export the
//! run's Connections records in every field shape, import each, and check the diagnosis names the
//! right cause with the right parameters; then the scenario `fakehub import` writes must pass
//! `validate`, fail with that bug, pass with the well-behaved device, and `fakehub compare` must
//! say the buggy reproduction matches the field.

use std::path::{Path, PathBuf};
use std::process::Command;

use fakehub_field::diagnose::Pattern;
use fakehub_field::export;

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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run `scenario` with `bug`, export its records in every shape, and check each diagnosis with
/// `check` (which returns the slug of the finding that names the cause). Then run the written
/// scenario for that finding with and without the bug, and compare.
fn round_trip(scenario: &str, bug: &str, check: impl Fn(&Pattern) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let field_run = dir.path().join("field");
    let (code, out, err) = fakehub(&[
        "run",
        &format!("scenarios/{scenario}.yaml"),
        "--out",
        s(&field_run),
        "--sample-bug",
        bug,
    ]);
    assert_eq!(code, 1, "{scenario} with {bug}:\n{out}\n{err}");
    let jsonl = std::fs::read_to_string(field_run.join("connections.jsonl")).unwrap();
    let records = export::read_jsonl(&jsonl).unwrap();
    let shapes = dir.path().join("shapes");
    std::fs::create_dir_all(&shapes).unwrap();
    let mut first: Option<Vec<Pattern>> = None;
    let mut files: Vec<PathBuf> = Vec::new();
    for (shape, name) in export::ALL {
        let file = shapes.join(name);
        std::fs::write(&file, export::export(&records, shape)).unwrap();
        let import =
            fakehub_field::import_files(&[&file]).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // One event body on one line is also a `{"records": [...]}` document.
        let one_body = shape == fakehub_field::Shape::EventBodies && records.len() <= 50;
        if !(one_body && import.files[0].shape == fakehub_field::Shape::RecordsDocument) {
            assert_eq!(import.files[0].shape, shape, "{name} read as its own shape");
        }
        assert_eq!(import.records.len(), records.len(), "{name}: every record");
        let hubs = fakehub_field::diagnose(&import);
        assert_eq!(hubs.len(), 1);
        let patterns: Vec<Pattern> = hubs[0].findings.iter().map(|f| f.pattern.clone()).collect();
        let named = hubs[0]
            .findings
            .iter()
            .find(|f| check(&f.pattern))
            .unwrap_or_else(|| panic!("{scenario} via {name}: {:#?}", hubs[0].findings));
        assert_eq!(named.bug, Some(bug), "{name}: the finding points at {bug}");
        match &first {
            None => first = Some(patterns),
            Some(p) => assert_eq!(p, &patterns, "{name} diagnosed as the other shapes"),
        }
        files.push(file);
    }
    // `fakehub import` of all shapes at once: every record 8 times, de-duplicated to one diagnosis.
    let imported = dir.path().join("imported");
    let mut args = vec!["import"];
    args.extend(files.iter().map(|f| s(f)));
    args.extend(["--out", s(&imported)]);
    let (code, out, err) = fakehub(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("{} duplicate records dropped", records.len() * 7)),
        "{out}"
    );
    assert!(imported.join("diagnosis.md").exists() && imported.join("diagnosis.html").exists());
    let md = std::fs::read_to_string(imported.join("diagnosis.md")).unwrap();
    let scenario_file = md
        .lines()
        .filter(|l| l.contains(&format!("--sample-bug {bug}`")))
        .find_map(|l| l.split('`').nth(1))
        .unwrap_or_else(|| panic!("a scenario for {bug}:\n{md}"))
        .to_owned();
    let written = imported.join(&scenario_file);
    let (code, out, err) = fakehub(&["validate", s(&written)]);
    assert_eq!(code, 0, "{out}\n{err}");
    let good = dir.path().join("good");
    let (code, out, err) = fakehub(&["run", s(&written), "--out", s(&good)]);
    assert_eq!(code, 0, "{scenario_file}, well-behaved:\n{out}\n{err}");
    let bad = dir.path().join("bad");
    let (code, out, err) = fakehub(&["run", s(&written), "--out", s(&bad), "--sample-bug", bug]);
    assert_eq!(code, 1, "{scenario_file} with {bug}:\n{out}\n{err}");
    // The buggy reproduction shows the field's pattern; the well-behaved one does not.
    let csv = shapes.join("query_data.csv");
    let (code, out, err) = fakehub(&["compare", s(&csv), s(&bad)]);
    assert_eq!(
        code, 0,
        "compare with the buggy reproduction:\n{out}\n{err}"
    );
    assert!(out.contains("MATCH"), "{out}");
    let (code, out, _) = fakehub(&["compare", s(&csv), s(&good)]);
    assert_eq!(
        code, 1,
        "compare with the well-behaved reproduction:\n{out}"
    );
}

#[test]
fn token_expiry_65m() {
    round_trip("token-expiry-65m", "no-token-renewal", |p| {
        matches!(p, Pattern::TokenExpiry { period_ms, with_401003, drops, .. }
            if (period_ms - 65 * 60_000).abs() <= 60_000 && with_401003 == drops && *drops >= 1)
    });
}

#[test]
fn token_expiry_60m() {
    round_trip("token-expiry-60m", "no-token-renewal", |p| {
        matches!(p, Pattern::TokenExpiry { period_ms, with_401003, drops, .. }
            if (period_ms - 60 * 60_000).abs() <= 60_000 && with_401003 == drops && *drops >= 2)
    });
}

#[test]
fn keepalive_idle_timeout() {
    round_trip(
        "keepalive-idle-timeout",
        "huge-keepalive",
        |p| matches!(p, Pattern::IdleTimeout { session_ms, .. } if (session_ms - 1_767_000).abs() <= 30_000),
    );
}

#[test]
fn tcp_reset_no_disconnect() {
    round_trip("tcp-reset-no-disconnect", "no-disconnect", |p| {
        matches!(
            p,
            Pattern::RandomDrops {
                drops: 2,
                not_reconnected: 1,
                ..
            }
        )
    });
}

#[test]
fn device_crash() {
    round_trip("device-crash", "no-backoff", |p| {
        matches!(p, Pattern::ReconnectStorm { median_gap_ms, codes, span_ms, .. }
            if *median_gap_ms < 1000 && codes.contains_key(&500001) && (120_000..=300_000).contains(span_ms))
    });
}

#[test]
fn mass_hub_drop() {
    round_trip("mass-hub-drop", "no-jitter", |p| {
        matches!(p, Pattern::FleetBurst { dropped: 20, fleet: 20, connect_codes, outage_ms, back: 20, peak_per_second, .. }
            if connect_codes.contains_key(&500001) && (60_000..=200_000).contains(outage_ms) && peak_per_second * 2 >= 20)
    });
}
