//! Hand-made field files in each shape (a few dozen records with noise: unrelated devices, other
//! categories, out-of-order lines, a duplicate, offsets, two hubs) are diagnosed correctly;
//! malformed ones get an error that names the file, the line and the field.

use std::path::{Path, PathBuf};

use fakehub_field::diagnose::Pattern;
use fakehub_field::{import_files, HubDiagnosis, Shape};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn diagnose(paths: &[PathBuf]) -> (fakehub_field::Import, Vec<HubDiagnosis>) {
    let import = import_files(paths).unwrap_or_else(|e| panic!("{e:?}"));
    let hubs = fakehub_field::diagnose(&import);
    (import, hubs)
}

fn hub<'a>(hubs: &'a [HubDiagnosis], name: &str) -> &'a HubDiagnosis {
    hubs.iter().find(|h| h.hub == name).unwrap_or_else(|| {
        panic!(
            "hub {name} in {:?}",
            hubs.iter().map(|h| &h.hub).collect::<Vec<_>>()
        )
    })
}

fn slugs(h: &HubDiagnosis) -> Vec<&'static str> {
    h.findings.iter().map(|f| f.pattern.slug()).collect()
}

#[test]
fn log_analytics_csv_token_expiry_on_one_hub_of_two() {
    let (import, hubs) = diagnose(&[fixture("la-export-token-expiry.csv")]);
    assert_eq!(import.files[0].shape, Shape::LogAnalyticsCsv);
    assert_eq!(
        import.skipped.values().sum::<usize>(),
        7,
        "telemetry and twin rows skipped"
    );
    assert_eq!(hubs.len(), 2, "two hubs kept apart");
    assert!(hub(&hubs, "LAB-HUB").findings.is_empty());
    let plant = hub(&hubs, "PLANT-HUB");
    assert_eq!(slugs(plant), ["token-expiry"], "{:#?}", plant.findings);
    let f = &plant.findings[0];
    let Pattern::TokenExpiry {
        period_ms,
        drops,
        with_401003,
        ..
    } = f.pattern
    else {
        unreachable!()
    };
    assert!((period_ms - 65 * 60_000).abs() <= 60_000, "{period_ms}");
    assert_eq!((drops, with_401003), (12, 12));
    assert_eq!(f.devices, ["press-01", "press-02", "press-03"]);
    assert_eq!(f.sdks, ["azure-iot-device-iothub-py/2.3.0"]);
    assert_eq!(f.bug, Some("no-token-renewal"));
    // Every cited record is a line of the CSV (the shuffled rows keep their own lines).
    let text = std::fs::read_to_string(fixture("la-export-token-expiry.csv")).unwrap();
    for s in &f.evidence {
        let line = s.line.unwrap();
        let row = text.lines().nth(line - 1).unwrap();
        assert!(
            row.contains("press-0") && row.contains("deviceDisconnect"),
            "{s}: {row}"
        );
    }
    let md = fakehub_field::report::markdown(&import, &hubs, &[]);
    assert!(md.contains("la-export-token-expiry.csv:"), "{md}");
}

#[test]
fn az_cli_json_fleet_burst_with_500001() {
    let (import, hubs) = diagnose(&[fixture("az-query-fleet-burst.json")]);
    assert_eq!(import.files[0].shape, Shape::LogAnalyticsCliJson);
    let h = hub(&hubs, "GRID-HUB");
    assert_eq!(slugs(h), ["fleet-burst"], "{:#?}", h.findings);
    let Pattern::FleetBurst {
        dropped,
        fleet,
        ref connect_codes,
        outage_ms,
        back,
        spread_ms,
        peak_per_second,
        ..
    } = h.findings[0].pattern
    else {
        unreachable!()
    };
    assert_eq!((dropped, fleet, back), (12, 16, 12));
    assert_eq!(connect_codes.get(&500001), Some(&36));
    assert!((60_000..=180_000).contains(&outage_ms), "{outage_ms}");
    assert!(
        spread_ms >= 10_000 && peak_per_second <= 3,
        "{spread_ms} {peak_per_second}"
    );
}

#[test]
fn storage_blob_lines_auth_loop_random_drops_takeovers() {
    let (import, hubs) = diagnose(&[fixture("storage-PT1H.json")]);
    assert_eq!(import.files[0].shape, Shape::ResourceLogLines);
    assert_eq!(import.duplicates, 1);
    let h = hub(&hubs, "EDGE-HUB");
    assert_eq!(
        slugs(h),
        ["token-expiry", "random-drops", "auth-loop", "takeover"],
        "{:#?}",
        h.findings
    );
    for f in &h.findings {
        match &f.pattern {
            Pattern::AuthLoop {
                failures,
                recovered,
                after_expiry,
                ..
            } => {
                assert_eq!((*failures, *recovered, *after_expiry), (9, false, true));
                assert_eq!(f.devices, ["gw-7"]);
                assert_eq!(f.bug, Some("stale-token"));
            }
            Pattern::RandomDrops {
                drops,
                not_reconnected,
                ..
            } => {
                assert_eq!((*drops, *not_reconnected), (3, 1));
                assert_eq!(f.devices, ["cam-2"]);
            }
            Pattern::Takeover { count, interval_ms } => {
                assert_eq!((*count, *interval_ms), (3, Some(5 * 60_000)));
            }
            _ => {}
        }
    }
}

#[test]
fn event_hub_body_with_offsets_idle_timeout() {
    let (import, hubs) = diagnose(&[fixture("eventhub-body-idle.json")]);
    assert_eq!(import.files[0].shape, Shape::RecordsDocument);
    let h = hub(&hubs, "SILO-HUB");
    // +02:00 times read as the same instants in UTC.
    assert_eq!(
        fakehub_field::time::format(h.first),
        "2024-08-20T20:00:00.000Z"
    );
    assert_eq!(slugs(h), ["keepalive-idle-timeout"]);
    let Pattern::IdleTimeout { session_ms, drops } = h.findings[0].pattern else {
        unreachable!()
    };
    assert_eq!((session_ms, drops), (1_767_000, 3));
    // The records of a pretty-printed document are cited by their own lines.
    let text = std::fs::read_to_string(fixture("eventhub-body-idle.json")).unwrap();
    let s = &h.findings[0].evidence[0];
    assert!(
        text.lines().nth(s.line.unwrap() - 1).unwrap().trim() == "{",
        "{s}"
    );
    assert!(s.item.as_deref().unwrap().starts_with("records["), "{s}");
}

#[test]
fn event_hub_bodies_and_their_capture_file_throttling() {
    let bodies = fixture("eventhub-bodies-throttling.jsonl");
    let (import, hubs) = diagnose(std::slice::from_ref(&bodies));
    assert_eq!(import.files[0].shape, Shape::EventBodies);
    let h = hub(&hubs, "FLEET-HUB");
    assert_eq!(slugs(h), ["throttling"]);
    // The same bodies as Event Hubs Capture writes them (Avro, one body an event).
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<(String, Vec<u8>)> = std::fs::read_to_string(&bodies)
        .unwrap()
        .lines()
        .map(|l| ("9/2/2024 3:20:00 AM".to_owned(), l.as_bytes().to_vec()))
        .collect();
    let avro = dir.path().join("17.avro");
    std::fs::write(&avro, fakehub_field::avro::write_capture(&events, true)).unwrap();
    let (import2, hubs2) = diagnose(std::slice::from_ref(&avro));
    assert_eq!(import2.files[0].shape, Shape::CaptureAvro);
    assert_eq!(import2.records.len(), import.records.len());
    assert_eq!(hubs2[0].findings[0].pattern, h.findings[0].pattern);
    let s = &hubs2[0].findings[0].evidence[0];
    assert!(s.to_string().contains("17.avro event "), "{s}");
    // Both files together: every record twice, de-duplicated.
    let (both, _) = diagnose(&[bodies, avro]);
    assert_eq!(both.duplicates, import.records.len());
}

#[test]
fn query_api_tables_reconnect_storm() {
    let (import, hubs) = diagnose(&[fixture("api-query-storm.json")]);
    assert_eq!(import.files[0].shape, Shape::LogAnalyticsApiJson);
    let h = hub(&hubs, "PUMP-HUB");
    assert_eq!(slugs(h), ["random-drops", "reconnect-storm"]);
    let Pattern::ReconnectStorm {
        median_gap_ms,
        span_ms,
        ..
    } = h.findings[1].pattern
    else {
        unreachable!()
    };
    assert!(median_gap_ms < 1000 && (200_000..=250_000).contains(&span_ms));
    assert_eq!(h.findings[1].bug, Some("no-backoff"));
}

#[test]
fn unsorted_and_split_input_gives_the_same_diagnosis() {
    let (_, one) = diagnose(&[fixture("storage-PT1H.json")]);
    let text = std::fs::read_to_string(fixture("storage-PT1H.json")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = lines.split_at(lines.len() / 2);
    std::fs::write(dir.path().join("a.json"), a.join("\n")).unwrap();
    std::fs::write(dir.path().join("b.json"), b.join("\n")).unwrap();
    let (_, two) = diagnose(&[dir.path().join("b.json"), dir.path().join("a.json")]);
    let patterns = |h: &[HubDiagnosis]| {
        h[0].findings
            .iter()
            .map(|f| f.pattern.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(patterns(&one), patterns(&two));
}

/// Import `text` written to a file named `name`; the one error's text.
fn refused(name: &str, text: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    let errors = import_files(&[&p]).expect_err("refused");
    errors
        .iter()
        .map(|e| e.to_string().replace(&dir.path().display().to_string(), ""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn malformed_files_get_located_errors() {
    let csv = std::fs::read_to_string(fixture("la-export-token-expiry.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
    lines[3] = lines[3]
        .replacen(" AM\"", " XM\"", 1)
        .replacen(" PM\"", " XM\"", 1);
    let e = refused("bad.csv", lines.join("\n").as_bytes());
    assert!(
        e.starts_with("/bad.csv:4: field `TimeGenerated [UTC]`:"),
        "{e}"
    );
    assert!(e.contains("is not a time"), "{e}");

    let e = refused("short.csv", b"TimeGenerated [UTC],OperationName,properties_s\n\"1/1/2024, 1:00:00.000 AM\",deviceConnect\n");
    assert!(
        e.starts_with("/short.csv:2: 2 fields where the header has 3"),
        "{e}"
    );

    let e = refused(
        "PT1H.json",
        b"{\"time\":\"2024-01-01T00:00:00Z\",\"operationName\":\"deviceConnect\",\"category\":\"Connections\",\"properties\":\"{}\"}\n{\"time\":\"2024-01-01T00:00:01Z\",\"operationName\":\"deviceConnect\",\"category\":\"Connections\",\"properties\":\"{\\\"deviceId\\\":\\\"d\\\"}\"}\n",
    );
    assert_eq!(
        e,
        "/PT1H.json:1: field `properties.deviceId`: missing: a Connections record names its device"
    );

    let e = refused(
        "lines.json",
        b"{\"records\":[]}\n{\"records\": [ {\"time\": 3\n",
    );
    assert!(e.starts_with("/lines.json:2:"), "{e}");

    let e = refused(
        "body.json",
        b"{\"records\": [\n  {\"time\":\"2024-01-01T00:00:00Z\",\"operationName\":\"deviceConnect\",\"category\":\"Connections\",\"properties\":\"{\\\"deviceId\\\":\\\"d\\\"}\"},\n  {\"time\":\"2024-01-01T00:00:00Z\",\"operationName\":\"deviceDisconnect\",\"category\":\"Connections\",\"resultType\":\"oops\",\"properties\":\"{\\\"deviceId\\\":\\\"d\\\"}\"}\n]}",
    );
    assert_eq!(
        e,
        "/body.json:3: records[1] field `resultType`: `oops` is not an IoT Hub error code"
    );

    let e = refused(
        "prop.json",
        b"[{\"time\":\"2024-01-01T00:00:00Z\",\"operationName\":\"deviceConnect\",\"category\":\"Connections\",\"properties\":\"{deviceId: d}\"}]",
    );
    assert!(
        e.starts_with("/prop.json:1: [0] field `properties`: is not JSON"),
        "{e}"
    );

    let mut avro =
        fakehub_field::avro::write_capture(&[("t".into(), b"{\"records\":[]}".to_vec())], false);
    let n = avro.len();
    avro.truncate(n - 5);
    let e = refused("00.avro", &avro);
    assert!(e.starts_with("/00.avro: Avro: block 1: truncated"), "{e}");

    let e = refused("bin.json", &[b'{', 0xff, 0xfe]);
    assert_eq!(e, "/bin.json:1: not UTF-8 text, nor an Avro file");
    let e = refused("empty.csv", b"   \n");
    assert_eq!(e, "/empty.csv: the file is empty");
}
