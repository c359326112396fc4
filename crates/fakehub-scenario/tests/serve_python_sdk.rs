//! `fakehub serve` with the documented config, driven by the official Azure IoT Python SDK
//! (azure-iot-device 2.14.0) changed only by `GatewayHostName=localhost` and its trusted CA.

mod common;

use std::time::Duration;

use fakehub::{Event, EventKind};

const KEY: &str = "c2Vuc29yLTEgcHJpbWFyeSBrZXkgZm9yIGZha2VodWI=";

#[test]
fn the_python_sdk_connects_to_serve_unchanged() {
    let python = common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = common::serve_config_8883(dir.path(), "sensor-1", KEY);
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

    let events: Vec<Event> = common::read_jsonl(&out.join("events.jsonl"));
    let mut ids: Vec<String> = common::qos1_message_ids(&events);
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

    let summary = common::record_summary(&out);
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

/// `serve` with a `dps:` section writes what a device needs to provision (`dps.json`: where,
/// which scope, the keys), and the Python SDK provisions with it — `provisioning_host=localhost`,
/// assigned `localhost` — then connects and sends.
#[test]
fn the_python_sdk_provisions_through_serve() {
    let python = common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fakehub-out");
    let config = dir.path().join("hub.yaml");
    std::fs::write(
        &config,
        format!(
            "host_name: myhub.azure-devices.net\nlisten: 127.0.0.1:8883\nout: {}\ndps:\n  id_scope: 0ne00SERVE0\n  individual:\n    - registration_id: py-serve\n  groups:\n    - name: fleet\n",
            out.display()
        ),
    )
    .unwrap();
    let serve = common::Serve::start(&config, &["--no-service-api"]);
    let sheet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dps.json")).unwrap()).unwrap();
    assert_eq!(sheet["provisioning_host"], "localhost");
    assert_eq!(sheet["assigned_hub"], "localhost");
    assert_eq!(sheet["id_scope"], "0ne00SERVE0");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("dps.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "dps.json holds keys: private");
    }
    let key = sheet["individual"][0]["primary_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let group_key = sheet["groups"][0]["primary_key"]
        .as_str()
        .unwrap()
        .to_owned();
    for (registration, var, value) in [
        ("py-serve", "FAKEHUB_DPS_KEY", key.as_str()),
        ("py-group-1", "FAKEHUB_DPS_GROUP_KEY", group_key.as_str()),
    ] {
        let out = std::process::Command::new(&python)
            .arg(common::repo_root().join("tests/python/dps_client.py"))
            .env(
                "FAKEHUB_DPS_HOST",
                sheet["provisioning_host"].as_str().unwrap(),
            )
            .env("FAKEHUB_DPS_ID_SCOPE", "0ne00SERVE0")
            .env("FAKEHUB_DPS_REGISTRATION_ID", registration)
            .env(var, value)
            .env("FAKEHUB_CA_FILE", dir.path().join("fakehub-out/ca.pem"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{registration}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(r#""assigned_hub": "localhost""#),
            "{stdout}"
        );
        assert!(!stdout.contains(value), "no key in the output");
    }
    serve.stop();
    let events: Vec<Event> = common::read_jsonl(&out.join("events.jsonl"));
    for device in ["py-serve", "py-group-1"] {
        assert!(
            events.iter().any(|e| e.device.as_deref() == Some(device)
                && matches!(e.kind, EventKind::Connack { code: 0, .. })),
            "{device} connected to the hub"
        );
    }
    let dps_records = std::fs::read_to_string(out.join("dps.jsonl")).unwrap();
    assert_eq!(
        dps_records
            .matches("\"operationName\":\"AttestationAttempt\"")
            .count(),
        2,
        "{dps_records}"
    );
    for f in ["events.jsonl", "connections.jsonl", "dps.jsonl"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            !text.contains(&key) && !text.contains(&group_key) && !text.contains("sig="),
            "{f} leaks a secret"
        );
    }
}
