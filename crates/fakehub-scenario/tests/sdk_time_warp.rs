//! The official Python SDK (azure-iot-device 2.14.0), unmodified, on the hub's virtual clock through
//! the shim in adapters/python: it renews its SAS token every 58 virtual minutes (120 s before a
//! one-hour token expires) with a graceful DISCONNECT, so the hub logs only Information records.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use fakehub::clock_file::ClockFileWriter;
use fakehub::{EventKind, Hub, HubHandle};

async fn nth_connect(hub: &HubHandle, n: usize) -> std::time::SystemTime {
    let mut seen = 0;
    hub.event_stream()
        .wait_for(Duration::from_secs(30), |e| {
            seen += usize::from(matches!(e.kind, EventKind::Connack { code: 0, .. }));
            seen == n
        })
        .await
        .unwrap_or_else(|| panic!("no connect #{n}"))
        .time
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_renews_every_58_virtual_minutes_under_the_shim() {
    let python = common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = common::hub_on_8883(Hub::builder().device("sensor-1"), dir.path()).await;
    let clock_file = dir.path().join("clock.json");
    let _writer = ClockFileWriter::start(hub.clock(), clock_file.clone(), None).unwrap();
    let sdk = Command::new(python)
        .arg(common::repo_root().join("tests/python/sdk_client.py"))
        .args(["connect-shutdown", "--hold", "30"])
        .env(
            "FAKEHUB_CONNECTION_STRING",
            hub.connection_string("sensor-1").unwrap(),
        )
        .env("FAKEHUB_CA_FILE", &ca)
        .env("FAKEHUB_CLOCK_FILE", &clock_file)
        .env("PYTHONPATH", common::repo_root().join("adapters/python"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut connects = vec![nth_connect(&hub, 1).await];
    for n in 2..=4 {
        // 58 minutes: past the SDK's renewal point, short of the hub's expiry (65 minutes).
        hub.clock().advance(Duration::from_secs(58 * 60)).await;
        connects.push(nth_connect(&hub, n).await);
    }
    // Let the rest of the hold pass quickly, then the SDK shuts down (DISCONNECT).
    hub.clock().set_speed(30.0);
    let out = tokio::task::spawn_blocking(move || sdk.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for pair in connects.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(
            gap >= Duration::from_secs(58 * 60) && gap < Duration::from_secs(58 * 60 + 30),
            "renewed {gap:?} after the previous connect"
        );
    }
    let records = hub.records();
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.operation_name.as_str(), r.level.as_str()))
        .collect();
    assert_eq!(
        records.len(),
        8,
        "4 connects, 3 renewals and the final shutdown: {summary:?}"
    );
    assert!(
        records.iter().all(|r| r.level == "Information"),
        "{summary:?}"
    );
    hub.shutdown().await.unwrap();
}
