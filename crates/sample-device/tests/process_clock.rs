//! The sample device as a separate process, following the hub's clock through the clock file and
//! through libfaketime: the 65-minute drop without token renewal, and renewal when it is on.
//!
//! A process cannot hold a hub jump at its own deadlines, so these tests jump to just past the
//! instant that matters and then let the device act in real time (the way the runner drives
//! external devices).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use fakehub::clock_file::ClockFileWriter;
use fakehub::{EventKind, HubHandle};

const MIN: u64 = 60;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

enum Adapter {
    ClockFile,
    Faketime,
}

struct Device {
    child: Child,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // libfaketime leaves its shared-memory files behind when its process is killed.
        let pid = self.child.id();
        let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
        let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
    }
}

/// libfaketime, installed from Debian if it is missing (the tests run as root in CI).
fn libfaketime() -> PathBuf {
    if !Path::new(LIBFAKETIME).exists() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "faketime"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is not installed: apt-get install faketime"
    );
    PathBuf::from(LIBFAKETIME)
}

fn spawn(hub: &HubHandle, dir: &Path, adapter: &Adapter, bugs: &[&str]) -> Device {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, hub.ca_pem()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample-device"));
    for b in bugs {
        cmd.args(["--bug", b]);
    }
    cmd.env(
        "FAKEHUB_CONNECTION_STRING",
        hub.connection_string("sensor-1").unwrap(),
    )
    .env("FAKEHUB_CA_FILE", &ca)
    .env_remove("FAKETIME")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    match adapter {
        Adapter::ClockFile => {
            cmd.env("FAKEHUB_CLOCK_FILE", dir.join("clock.json"));
        }
        Adapter::Faketime => {
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME_TIMESTAMP_FILE", dir.join("faketime"))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
    }
    Device {
        child: cmd.spawn().expect("start sample-device"),
    }
}

/// Wait (real time) for the `n`th successful CONNACK.
async fn connected(hub: &HubHandle, n: usize) -> SystemTime {
    let mut seen = 0;
    let mut stream = hub.event_stream();
    let e = stream
        .wait_for(Duration::from_secs(20), |e| {
            if matches!(e.kind, EventKind::Connack { code: 0, .. }) {
                seen += 1;
            }
            seen == n
        })
        .await
        .unwrap_or_else(|| panic!("no connect #{n}: {:?}", story(hub)));
    e.time
}

fn story(hub: &HubHandle) -> Vec<String> {
    hub.events()
        .snapshot()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Connack { .. } | EventKind::Closed { .. }))
        .map(|e| format!("{} {:?}", humantime::format_rfc3339_millis(e.time), e.kind))
        .collect()
}

async fn drops_every_65_minutes(adapter: Adapter) {
    let dir = tempfile::tempdir().unwrap();
    let hub = fakehub::testkit::start_hub(&["sensor-1"]).await.unwrap();
    let _writer = ClockFileWriter::start(
        hub.clock(),
        dir.path().join("clock.json"),
        Some(dir.path().join("faketime")),
    )
    .unwrap();
    let _device = spawn(&hub, dir.path(), &adapter, &["no-token-renewal"]);
    let mut connect = connected(&hub, 1).await;
    for cycle in 1..=2 {
        // Past the drop at 65:00, then the device reconnects in real time.
        let target = connect + Duration::from_secs(65 * MIN + 30);
        hub.clock()
            .advance(target.duration_since(hub.clock().now()).unwrap())
            .await;
        let reconnect = connected(&hub, cycle + 1).await;
        let records = hub.records();
        let drop_at = records
            .iter()
            .rev()
            .find(|r| r.code() == Some(401003))
            .map(|r| humantime::parse_rfc3339(&r.time).unwrap())
            .unwrap_or_else(|| panic!("a 401003 drop: {:?}", story(&hub)));
        let after = drop_at.duration_since(connect).unwrap();
        assert!(
            after.abs_diff(Duration::from_secs(65 * MIN)) <= Duration::from_secs(1),
            "dropped {after:?} after connecting: {:?}",
            story(&hub)
        );
        let back = reconnect.duration_since(drop_at).unwrap();
        assert!(
            back < Duration::from_secs(60),
            "reconnected {back:?} after the drop"
        );
        connect = reconnect;
    }
    let codes: Vec<Option<u32>> = hub.records().iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [
            None,
            Some(401003),
            Some(404104),
            None,
            Some(401003),
            Some(404104),
            None
        ]
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_file_device_without_renewal_drops_at_65_minutes() {
    drops_every_65_minutes(Adapter::ClockFile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faketime_device_without_renewal_drops_at_65_minutes() {
    drops_every_65_minutes(Adapter::Faketime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_file_device_renews_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fakehub::testkit::start_hub(&["sensor-1"]).await.unwrap();
    let _writer = ClockFileWriter::start(hub.clock(), dir.path().join("clock.json"), None).unwrap();
    let _device = spawn(&hub, dir.path(), &Adapter::ClockFile, &[]);
    let mut connect = connected(&hub, 1).await;
    for n in 2..=3 {
        // Into the window between the device's renewal (55:00) and the hub's expiry (65:00).
        let target = connect + Duration::from_secs(56 * MIN);
        hub.clock()
            .advance(target.duration_since(hub.clock().now()).unwrap())
            .await;
        connect = connected(&hub, n).await;
    }
    let records = hub.records();
    assert!(
        records.iter().all(|r| r.level == "Information"),
        "{:?}",
        story(&hub)
    );
    hub.shutdown().await.unwrap();
}
