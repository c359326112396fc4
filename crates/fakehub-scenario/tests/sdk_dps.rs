//! The official device SDKs provision through fakehub's Device Provisioning Service, unchanged:
//! Python's `ProvisioningDeviceClient` (symmetric key, individual and group enrollment, and X.509
//! with a certificate of the hubs' CA) and Node's `azure-iot-provisioning-device-mqtt` register
//! with `provisioning_host` pointing at the first hub's listener, are assigned one of two hubs,
//! and their `IoTHubDeviceClient` / `Client` then connects to the assigned hub and sends
//! telemetry. Each hub listens on port 8883 (the only port the Python SDK reaches) of a loopback
//! address of its own, which is the `assignedHub` DPS gives out: it resolves without DNS and is in
//! the server certificate. Real time; a few seconds each.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fakehub::dps::{GroupEnrollment, IndividualEnrollment};
use fakehub::events::DpsOp;
use fakehub::faults::{DpsError, Fault};
use fakehub::{Dps, DpsConfig, EventKind, EventLog, Hub, HubHandle, VirtualClock};
use fakehub_assert::Log;

const GROUP_KEY: &str = "Z3JvdXBrZXlncm91cGtleWdyb3Vwa2V5Z3JvdXBrZXk=";

/// Two hubs on port 8883 of their own loopback addresses, one log, one CA, behind one DPS.
struct Rig {
    dps: Dps,
    hubs: Vec<HubHandle>,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// Every DPS answer (operation, status, registration status), the hub it connected to, and how
/// many telemetry messages it sent there.
type Outcome = (Vec<(DpsOp, u16, Option<String>)>, Option<String>, usize);

impl Rig {
    async fn start() -> Rig {
        let config = DpsConfig {
            individual: vec![
                IndividualEnrollment {
                    registration_id: "py-solo".into(),
                    primary_key: None,
                    secondary_key: None,
                    x509: false,
                    enabled: true,
                },
                IndividualEnrollment {
                    registration_id: "node-solo".into(),
                    primary_key: None,
                    secondary_key: None,
                    x509: false,
                    enabled: true,
                },
            ],
            groups: vec![
                GroupEnrollment {
                    name: "fleet".into(),
                    primary_key: Some(GROUP_KEY.into()),
                    secondary_key: None,
                    x509: false,
                    enabled: true,
                },
                GroupEnrollment {
                    name: "cameras".into(),
                    primary_key: None,
                    secondary_key: None,
                    x509: true,
                    enabled: true,
                },
            ],
            ..Default::default()
        };
        let dps = Dps::new(&config, 3).unwrap();
        let log = EventLog::new(VirtualClock::new());
        let a = Hub::builder()
            .host_name("hub-a.azure-devices.net")
            .listen_loopback(8883)
            .dps(dps.clone())
            .event_log(log.clone())
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let certs = a.certificates().sibling("hub-b.azure-devices.net").unwrap();
        let b = Hub::builder()
            .host_name("hub-b.azure-devices.net")
            .listen_loopback(8883)
            .certificates(certs)
            .dps(dps.clone())
            .event_log(log)
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, a.ca_pem()).unwrap();
        Rig {
            dps,
            hubs: vec![a, b],
            ca,
            _dir: dir,
        }
    }

    /// The provisioning host devices are given: the first hub's own loopback address.
    fn provisioning_host(&self) -> String {
        self.hubs[0].device_host().to_owned()
    }

    fn base_env(&self, cmd: &mut Command, registration_id: &str) {
        cmd.env("FAKEHUB_DPS_HOST", self.provisioning_host())
            .env("FAKEHUB_DPS_ID_SCOPE", self.dps.id_scope())
            .env("FAKEHUB_DPS_REGISTRATION_ID", registration_id)
            .env("FAKEHUB_CA_FILE", &self.ca);
    }

    /// What the log says about one registration: every DPS answer, and the hub (by name) its hub
    /// connection got CONNACK 0 from, with the number of telemetry messages it sent there.
    fn outcome(&self, device: &str) -> Outcome {
        let events = self.hubs[0].events().snapshot();
        let answers = events
            .iter()
            .filter(|e| e.device.as_deref() == Some(device))
            .filter_map(|e| match &e.kind {
                EventKind::DpsResponse(r) => Some((r.op, r.status, r.registration.clone())),
                _ => None,
            })
            .collect();
        let connected_on = events
            .iter()
            .find(|e| {
                e.device.as_deref() == Some(device)
                    && matches!(e.kind, EventKind::Connack { code: 0, .. })
            })
            .and_then(|e| e.hub.as_deref().map(str::to_owned));
        let sent = events
            .iter()
            .filter(|e| {
                e.device.as_deref() == Some(device)
                    && matches!(&e.kind, EventKind::Publish { message_id: Some(m), .. } if m.starts_with("m-"))
            })
            .count();
        (answers, connected_on, sent)
    }

    /// The assigned hub's name, as DPS recorded it.
    fn assigned(&self, device: &str) -> String {
        self.dps
            .registration(device)
            .and_then(|r| r.hub)
            .unwrap_or_else(|| panic!("{device} has no registration record"))
    }

    async fn shutdown(self) {
        for hub in self.hubs.into_iter().rev() {
            hub.shutdown().await.unwrap();
        }
    }
}

fn python(
    rig: &Rig,
    registration_id: &str,
    extra: &[(&str, &str)],
    args: &[&str],
) -> common::SdkRun {
    let mut cmd = Command::new(common::python_with_sdk());
    cmd.arg(common::repo_root().join("tests/python/dps_client.py"))
        .args(args);
    rig.base_env(&mut cmd, registration_id);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    run(cmd)
}

fn run(mut cmd: Command) -> common::SdkRun {
    let out = cmd.output().expect("run the SDK client");
    common::SdkRun {
        code: out.status.code().unwrap_or(-1),
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The registration went 202 → 200 `assigned`, the device connected to the hub DPS assigned and
/// sent its messages there, and the SDK was told that hub's address.
fn assert_provisioned(rig: &Rig, run: &common::SdkRun, device: &str) {
    assert_eq!(run.code, 0, "{device}: {:?}\n{}", run.lines, run.stderr);
    let registered = run.steps("registered");
    let hub = rig.assigned(device);
    let address = rig
        .hubs
        .iter()
        .find(|h| h.host_name() == hub)
        .map(|h| h.device_host().to_owned())
        .unwrap();
    assert_eq!(
        registered[0]["assigned_hub"],
        address.as_str(),
        "{registered:?}"
    );
    assert_eq!(registered[0]["device_id"], device);
    let (answers, connected_on, sent) = rig.outcome(device);
    assert!(
        answers.contains(&(DpsOp::Register, 202, Some("assigning".into()))),
        "{answers:?}"
    );
    assert!(
        answers.contains(&(DpsOp::Poll, 200, Some("assigned".into()))),
        "{answers:?}"
    );
    assert_eq!(
        connected_on.as_deref(),
        Some(hub.as_str()),
        "connected to the assigned hub"
    );
    assert_eq!(sent, 2, "its telemetry reached the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_provisions_individually_by_group_and_with_x509() {
    let rig = Rig::start().await;
    let key = rig.dps.device_key("py-solo", None).unwrap();
    // Individual enrollment.
    let solo = {
        let rig = &rig;
        tokio::task::block_in_place(|| python(rig, "py-solo", &[("FAKEHUB_DPS_KEY", &key)], &[]))
    };
    assert_provisioned(&rig, &solo, "py-solo");
    let sdk = rig.hubs[0]
        .events()
        .snapshot()
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::DpsConnect(d) if e.device.as_deref() == Some("py-solo") => d.sdk.clone(),
            _ => None,
        })
        .unwrap_or_default();
    assert!(
        sdk.starts_with("azure-iot-device-provisioning-py/2.14.0"),
        "{sdk}"
    );
    // Group enrollment: the script derives its key from the group key, as the group sample does.
    // The first register is throttled (429, retry-after 1 s): the SDK waits and registers again.
    rig.hubs[0].inject(Fault::new(DpsError {
        status: 429,
        retry_after: Some(Duration::from_secs(1)),
        op: Some(DpsOp::Register),
        count: Some(1),
    }));
    let group = tokio::task::block_in_place(|| {
        python(
            &rig,
            "py-dev-01",
            &[("FAKEHUB_DPS_GROUP_KEY", GROUP_KEY)],
            &[],
        )
    });
    assert_provisioned(&rig, &group, "py-dev-01");
    assert_eq!(
        rig.dps.device_key("py-dev-01", Some("fleet")).unwrap(),
        rig.hubs
            .iter()
            .find_map(|h| h
                .registry()
                .identity(&fakehub::IdentityRef::device("py-dev-01")))
            .unwrap()
            .keys
            .primary_key,
        "the hub identity has the derived key"
    );
    let log = Log::of(&rig.hubs[0]);
    let verdict =
        fakehub_assert::honours_retry_after(&log, "py-dev-01", false, Duration::from_millis(100));
    println!("{verdict}");
    assert!(verdict.judged && verdict.passed, "{verdict}");
    fakehub_assert::provisions(&log, "py-dev-01", Duration::from_secs(30)).assert();
    // A finding the rule shows: Python ignores the `retry-after` of the register's 202 (it polls
    // after 2 s, asked for 3 s); judged with `polling: true`, the SDK fails.
    let polling =
        fakehub_assert::honours_retry_after(&log, "py-solo", true, Duration::from_millis(100));
    println!("{polling}");
    assert!(polling.judged && !polling.passed, "{polling}");
    // The in-band dialect from the SDK's own provisioning payload: throttled for 2 s, once.
    let payload = r#"{"AzIoTHub_FaultOperationType": "InvokeThrottling", "AzIoTHub_FaultOperationDurationInSecs": 2}"#;
    let inband = tokio::task::block_in_place(|| {
        python(
            &rig,
            "py-dev-02",
            &[
                ("FAKEHUB_DPS_GROUP_KEY", GROUP_KEY),
                ("FAKEHUB_DPS_PAYLOAD", payload),
            ],
            &[],
        )
    });
    assert_provisioned(&rig, &inband, "py-dev-02");
    let (answers, _, _) = rig.outcome("py-dev-02");
    assert!(
        answers
            .iter()
            .any(|(op, status, _)| *op == DpsOp::Register && *status == 429),
        "{answers:?}"
    );
    let triggered = rig.hubs[0]
        .events()
        .snapshot()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Fault { fault, action: fakehub::events::FaultAction::Started, .. } if fault == "inband:dps:InvokeThrottling"))
        .count();
    assert_eq!(triggered, 1, "the trigger acts once");
    // X.509: a certificate issued by the hubs' CA, CN = the registration id, an X.509 group.
    let cert = rig.hubs[0]
        .certificates()
        .issue_device_certificate("py-cam-1")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cam.pem"), dir.path().join("cam.key"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let cam = tokio::task::block_in_place(|| {
        python(
            &rig,
            "py-cam-1",
            &[
                ("FAKEHUB_CERT_FILE", cert_file.to_str().unwrap()),
                ("FAKEHUB_KEY_FILE", key_file.to_str().unwrap()),
            ],
            &["--x509"],
        )
    });
    assert_provisioned(&rig, &cam, "py-cam-1");
    // The DPS records of the three, as Azure Monitor's DeviceOperations.
    let records = rig.hubs[0].dps_records();
    assert!(records.iter().any(|r| r.operation_name == "RegisterDevice"
        && r.result_signature == "429"
        && r.level == "Error"));
    assert!(records
        .iter()
        .filter(|r| r.operation_name == "AttestationAttempt")
        .all(|r| r.result_type == "Success"));
    rig.shutdown().await;
}

fn node_app() -> PathBuf {
    let dir = common::repo_root().join("tests/devices/node");
    assert!(
        dir.join("node_modules/azure-iot-provisioning-device-mqtt")
            .exists(),
        "the Node SDK is not installed: run `npm ci --prefix tests/devices/node`"
    );
    dir.join("dps.js")
}

fn node(rig: &Rig, app: &Path, registration_id: &str, key_var: (&str, &str)) -> common::SdkRun {
    let mut cmd = Command::new("node");
    cmd.arg(app)
        .env("NODE_EXTRA_CA_CERTS", &rig.ca)
        .env(key_var.0, key_var.1);
    rig.base_env(&mut cmd, registration_id);
    run(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_provisions_individually_and_by_group() {
    let app = node_app();
    let rig = Rig::start().await;
    let key = rig.dps.device_key("node-solo", None).unwrap();
    let solo =
        tokio::task::block_in_place(|| node(&rig, &app, "node-solo", ("FAKEHUB_DPS_KEY", &key)));
    assert_provisioned(&rig, &solo, "node-solo");
    let group = tokio::task::block_in_place(|| {
        node(
            &rig,
            &app,
            "node-dev-01",
            ("FAKEHUB_DPS_GROUP_KEY", GROUP_KEY),
        )
    });
    assert_provisioned(&rig, &group, "node-dev-01");
    let sdk = rig.hubs[0]
        .events()
        .snapshot()
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::DpsConnect(d) if e.device.as_deref() == Some("node-solo") => d.sdk.clone(),
            _ => None,
        })
        .unwrap_or_default();
    assert_eq!(sdk, "azure-iot-provisioning-device/1.9.1");
    // Node honours the 202's retry-after (3 s) before its first poll.
    let log = Log::of(&rig.hubs[0]);
    let polling =
        fakehub_assert::honours_retry_after(&log, "node-solo", true, Duration::from_millis(100));
    println!("{polling}");
    assert!(polling.judged && polling.passed, "{polling}");
    rig.shutdown().await;
}
