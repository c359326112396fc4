//! `fakehub serve` driven by the official Azure IoT Node device SDK (azure-iot-device 1.18.4 +
//! azure-iot-device-mqtt 1.16.4, `tests/devices/node/device.js`), changed only by
//! `GatewayHostName=localhost` and its trusted CA. `serve` hands each live connection to its
//! event-loop thread (`LiveThread`): the SDK's CONNECT, SUBSCRIBEs, telemetry and DISCONNECT must
//! all be answered there.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fakehub::{Event, EventKind};

const KEY: &str = "bm9kZSBzZW5zb3IgcHJpbWFyeSBrZXkgZm9yIGZha2VodWI=";
const ACKED: usize = 20;

#[test]
fn the_node_sdk_sends_telemetry_through_serve_and_disconnects_gracefully() {
    let root = common::repo_root();
    common::node_modules_present();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = common::serve_config_8883(dir.path(), "node-1", KEY);
    let serve = common::Serve::start(&config, &[]);

    let mut device = Command::new("node")
        .arg(root.join("tests/devices/node/device.js"))
        .env(
            "FAKEHUB_CONNECTION_STRING",
            format!("HostName=myhub.azure-devices.net;DeviceId=node-1;SharedAccessKey={KEY};GatewayHostName=localhost"),
        )
        .env("FAKEHUB_CA_FILE", out.join("ca.pem"))
        .env("FAKEHUB_TELEMETRY_SECS", "0.05")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = device.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let acked = |lines: &[String]| lines.iter().filter(|l| l.contains(" acked ")).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked(&lines.lock().unwrap()) < ACKED {
        assert!(
            Instant::now() < deadline,
            "the Node SDK did not get {ACKED} PUBACKs: {:?}\nconsole:\n{}",
            lines.lock().unwrap(),
            serve.console().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: the app closes the client (an MQTT DISCONNECT) and exits.
    Command::new("kill")
        .args(["-TERM", &device.id().to_string()])
        .status()
        .unwrap();
    let status = device.wait().unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap().clone();
    assert!(status.success(), "node exited with {status}: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("stopped disconnect=sent")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(" disconnected ") || l.contains("send failed")),
        "no drop while serve was up: {lines:?}"
    );
    // The hub logs the device's close (the writer thread flushes within 100 ms) before it stops,
    // so that the close is the device's, not the shutdown's.
    let deadline = Instant::now() + Duration::from_secs(10);
    let device_closed = || {
        // Read while the hub writes: a line still being written is skipped.
        std::fs::read_to_string(out.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
            .any(|e| {
                e.device.as_deref() == Some("node-1") && matches!(e.kind, EventKind::Closed { .. })
            })
    };
    while !device_closed() {
        assert!(Instant::now() < deadline, "no closed event for node-1");
        std::thread::sleep(Duration::from_millis(50));
    }
    serve.stop();

    // Every message the SDK saw acknowledged is in the log, in order, acknowledged by the hub.
    let events: Vec<Event> = common::read_jsonl(&out.join("events.jsonl"));
    let published: Vec<String> = common::qos1_message_ids(&events);
    let acked_ids: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split(" acked ").nth(1).map(str::to_owned))
        .collect();
    assert!(acked_ids.len() >= ACKED);
    assert_eq!(
        published.get(..acked_ids.len()),
        Some(&acked_ids[..]),
        "the hub logged the SDK's messages in its order"
    );
    let pubacks = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Puback {
                    dir: fakehub::events::Direction::Out,
                    ..
                }
            )
        })
        .count();
    assert!(pubacks >= acked_ids.len(), "{pubacks} PUBACKs sent");
    let subscribed = events.iter().any(
        |e| matches!(&e.kind, EventKind::Suback { codes, .. } if codes.iter().all(|c| *c != 128)),
    );
    assert!(subscribed, "the SDK's subscriptions were granted");

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
        ],
        "one connection, ended by the device's DISCONNECT"
    );
}
