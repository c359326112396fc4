//! `fakehub serve` with the documented config, driven by the official Azure IoT Python SDK
//! (azure-iot-device 2.14.0) changed only by `GatewayHostName=localhost` and its trusted CA.

mod common;

use std::path::Path;
use std::time::Duration;

use fakehub::{ConnectionRecord, Event, EventKind};

const KEY: &str = "c2Vuc29yLTEgcHJpbWFyeSBrZXkgZm9yIGZha2VodWI=";

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_python_sdk_connects_to_serve_unchanged() {
    let python = common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fakehub-out");
    let config = dir.path().join("hub.yaml");
    std::fs::write(
        &config,
        format!(
            "host_name: myhub.azure-devices.net\nlisten: 127.0.0.1:8883\nservice_listen: null\nout: {}\ndevices:\n  - id: sensor-1\n    primary_key: \"{KEY}\"\n",
            out.display()
        ),
    )
    .unwrap();
    let serve = common::Serve::start(&config, &[]);
    assert!(serve.console()[0].contains("listening on 127.0.0.1:8883"));
    let ca = out.join("ca.pem");
    assert!(ca.exists(), "ca.pem is written before listening");
    let good = format!("HostName=myhub.azure-devices.net;DeviceId=sensor-1;SharedAccessKey={KEY};GatewayHostName=localhost");
    let _ = python;

    // 50 QoS 1 messages with message ids, then shutdown().
    let run = common::run_sdk_client(&["telemetry", "--count", "50"], &good, &ca);
    assert_eq!(
        run.code, 0,
        "telemetry run failed: {:?}\n{}",
        run.lines, run.stderr
    );
    assert_eq!(run.steps("sent").len(), 50);

    // A wrong key: the SDK raises, and the hub logs 401003.
    let wrong = good.replace(KEY, &fakehub::sas::generate_key());
    let run = common::run_sdk_client(&["bad-key"], &wrong, &ca);
    assert_eq!(run.code, 0, "bad-key run: {:?}\n{}", run.lines, run.stderr);
    let failed = run.steps("connect_failed");
    assert_eq!(failed.len(), 1, "{:?}", run.lines);
    assert_eq!(failed[0]["type"], "CredentialError");
    // The console says why, once per refused connection, without the key.
    let line = serve.wait_line(|l| l.contains("refused"), Duration::from_secs(10));
    assert!(
        line.contains("'sensor-1'") && line.contains("CONNACK 5, 401003"),
        "{line}"
    );
    assert!(serve
        .console()
        .iter()
        .all(|l| !l.contains(KEY) && !l.contains("sig=")));

    serve.stop();

    let events: Vec<Event> = read_jsonl(&out.join("events.jsonl"));
    let mut ids: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Publish {
                message_id: Some(id),
                qos: 1,
                ..
            } => Some(id.clone()),
            _ => None,
        })
        .collect();
    ids.dedup();
    let expected: Vec<String> = (0..50).map(|i| format!("m-{i}")).collect();
    assert_eq!(
        ids, expected,
        "every message id appears in the event log, in order"
    );
    let sdk = events.iter().find_map(|e| match &e.kind {
        EventKind::Connect { sdk, .. } => sdk.clone(),
        _ => None,
    });
    assert!(sdk
        .unwrap_or_default()
        .starts_with("azure-iot-device-iothub-py/2.14.0"));

    let records: Vec<ConnectionRecord> = read_jsonl(&out.join("connections.jsonl"));
    let summary: Vec<(String, String, Option<u32>)> = records
        .iter()
        .map(|r| (r.operation_name.clone(), r.level.clone(), r.code()))
        .collect();
    assert_eq!(
        summary,
        [
            ("deviceConnect".to_owned(), "Information".to_owned(), None),
            (
                "deviceDisconnect".to_owned(),
                "Information".to_owned(),
                None
            ),
            ("deviceConnect".to_owned(), "Error".to_owned(), Some(401003)),
        ],
        "shutdown() is a graceful disconnect; the wrong key is 401003"
    );
    // No secret in any output file.
    for f in ["events.jsonl", "connections.jsonl"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            !text.contains(KEY) && !text.contains("sig="),
            "{f} leaks a secret"
        );
    }
}
