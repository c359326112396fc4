//! The official Python SDK (azure-iot-device 2.14.0), unmodified, against the hub's device surface:
//! C2D with properties, a direct method, the twin and reported properties, a desired-property
//! patch, X.509 authentication, a module client, and a session that outlives hub-side drops.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{sdk_command, SdkProcess, SdkRun};
use fakehub::tls::DeviceCertificate;
use fakehub::{
    CloseCause, CloudMessage, EventKind, Hub, HubHandle, IdentityRef, WireClose, X509Auth,
};
use serde_json::json;

const HOST: &str = "myhub.azure-devices.net";
/// Real time allowed for an SDK step (process start, TLS, subscribe).
const STEP: Duration = Duration::from_secs(60);

fn spawn_sas(args: &[&str], hub: &HubHandle, who: &IdentityRef, ca: &Path) -> SdkProcess {
    let connection_string = match &who.module_id {
        Some(m) => hub.module_connection_string(&who.device_id, m),
        None => hub.connection_string(&who.device_id),
    };
    let mut cmd = sdk_command(args, ca);
    cmd.env("FAKEHUB_CONNECTION_STRING", connection_string.unwrap());
    SdkProcess::spawn(cmd)
}

/// Write a device certificate and key where the X.509 client reads them.
fn spawn_x509(args: &[&str], device: &str, cert: &DeviceCertificate, dir: &Path) -> SdkProcess {
    let (cert_file, key_file) = (
        dir.join(format!("{device}.pem")),
        dir.join(format!("{device}.key")),
    );
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let mut cmd = sdk_command(args, &dir.join("ca.pem"));
    cmd.env("FAKEHUB_CERT_FILE", cert_file)
        .env("FAKEHUB_KEY_FILE", key_file)
        .env("FAKEHUB_HOST_NAME", HOST)
        .env("FAKEHUB_DEVICE_ID", device)
        .env("FAKEHUB_GATEWAY_HOST", "localhost");
    SdkProcess::spawn(cmd)
}

fn assert_ok(run: &SdkRun) {
    assert_eq!(
        run.code, 0,
        "sdk_client.py: {:#?}\n{}",
        run.lines, run.stderr
    );
}

async fn nth_connack(hub: &HubHandle, n: usize) -> (u8, bool) {
    let mut seen = 0;
    let e = hub
        .event_stream()
        .wait_for(STEP, |e| {
            seen += usize::from(matches!(e.kind, EventKind::Connack { .. }));
            seen == n
        })
        .await
        .unwrap_or_else(|| panic!("no CONNACK #{n}"));
    match e.kind {
        EventKind::Connack {
            code,
            session_present,
            ..
        } => (code, session_present),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_receives_c2d_with_properties_and_answers_a_method() {
    common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = common::hub_on_8883(Hub::builder().device("sensor-1"), dir.path()).await;
    let who = IdentityRef::device("sensor-1");

    let mut sdk = spawn_sas(&["receive-c2d", "--count", "1"], &hub, &who, &ca);
    sdk.wait_step("ready", STEP).await;
    let message = CloudMessage::new(br#"{"cmd":"blink"}"#.to_vec())
        .message_id("c2d-1")
        .correlation_id("job 42")
        .content_type("application/json")
        .content_encoding("utf-8")
        .ack("full")
        .property("priority", "high")
        .property("note", "a/b c");
    hub.send_c2d("sensor-1", message).await.unwrap();
    let got = sdk.wait_step("c2d", STEP).await;
    assert_eq!(got["message_id"], "c2d-1");
    assert_eq!(got["correlation_id"], "job 42");
    assert_eq!(got["content_type"], "application/json");
    assert_eq!(got["content_encoding"], "utf-8");
    assert_eq!(got["data"], r#"{"cmd":"blink"}"#);
    assert_eq!(
        got["custom_properties"],
        json!({"priority": "high", "note": "a/b c"}),
        "system properties ($.to, iothub-ack) are not custom ones"
    );
    assert_ok(&sdk.finish(STEP).await);
    assert_eq!(
        hub.c2d_queue_depth("sensor-1").await,
        0,
        "the SDK acknowledged it"
    );

    let mut sdk = spawn_sas(&["method", "--name", "reboot"], &hub, &who, &ca);
    sdk.wait_step("ready", STEP).await;
    let response = hub
        .invoke_method(&who, "reboot", json!({"delay": 3}), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json().unwrap(), json!({"echo": {"delay": 3}}));
    assert_ok(&sdk.finish(STEP).await);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_the_twin_patches_reported_and_gets_desired_patches() {
    common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = common::hub_on_8883(Hub::builder().device("sensor-1"), dir.path()).await;
    let who = IdentityRef::device("sensor-1");
    assert_eq!(
        hub.patch_desired(&who, json!({"interval": 10})).await,
        Ok(2)
    );

    let mut sdk = spawn_sas(&["twin"], &hub, &who, &ca);
    let twin = sdk.wait_step("twin", STEP).await;
    assert_eq!(
        twin["twin"],
        json!({"desired": {"interval": 10, "$version": 2}, "reported": {"$version": 1}})
    );
    sdk.wait_step("reported_patched", STEP).await;
    assert_ok(&sdk.finish(STEP).await);
    let stored = hub.twin(&who).unwrap();
    assert_eq!(stored.reported_version, 2);
    assert_eq!(stored.reported["firmware"], "1.2.3");

    let mut sdk = spawn_sas(&["desired"], &hub, &who, &ca);
    sdk.wait_step("ready", STEP).await;
    assert_eq!(
        hub.patch_desired(&who, json!({"interval": 20, "device_count": 42}))
            .await,
        Ok(3)
    );
    let desired = sdk.wait_step("desired", STEP).await;
    assert_eq!(
        desired["patch"],
        json!({"interval": 20, "device_count": 42, "$version": 3})
    );
    // In IoT Hub's order: the properties, then `$version` (as the SDK's dict holds them).
    let keys: Vec<&str> = desired["patch"]
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["interval", "device_count", "$version"]);
    assert_ok(&sdk.finish(STEP).await);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_connects_with_x509_and_a_wrong_certificate_is_401003() {
    common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let self_signed = DeviceCertificate::self_signed("sensor-ss").unwrap();
    let b = Hub::builder()
        .device("sensor-ca")
        .x509(
            &IdentityRef::device("sensor-ca"),
            X509Auth::CertificateAuthority,
        )
        .device("sensor-ss")
        .x509(
            &IdentityRef::device("sensor-ss"),
            X509Auth::SelfSigned {
                primary: self_signed.thumbprints.sha256.clone(),
                secondary: None,
            },
        );
    let (hub, _ca) = common::hub_on_8883(b, dir.path()).await;

    // Issued by the hub's CA with CN = the device id.
    let issued = hub
        .certificates()
        .issue_device_certificate("sensor-ca")
        .unwrap();
    let sdk = spawn_x509(
        &["telemetry", "--count", "2"],
        "sensor-ca",
        &issued,
        dir.path(),
    );
    assert_ok(&sdk.finish(STEP).await);
    // Self-signed, registered by its SHA-256 thumbprint.
    let sdk = spawn_x509(
        &["telemetry", "--count", "1"],
        "sensor-ss",
        &self_signed,
        dir.path(),
    );
    assert_ok(&sdk.finish(STEP).await);
    let x509_connects = hub
        .events()
        .snapshot()
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Connect {
                    auth: fakehub::events::AuthKind::X509,
                    token_expiry: None,
                    ..
                }
            )
        })
        .count();
    assert_eq!(x509_connects, 2);

    // An unregistered certificate: the SDK raises CredentialError, the hub logs 401003.
    let stranger = DeviceCertificate::self_signed("sensor-ss").unwrap();
    let run = spawn_x509(&["bad-key"], "sensor-ss", &stranger, dir.path())
        .finish(STEP)
        .await;
    assert_ok(&run);
    assert_eq!(run.steps("connect_failed")[0]["type"], "CredentialError");
    let record = hub.records().pop().unwrap();
    assert_eq!(record.code(), Some(401003));
    assert!(record
        .error_message()
        .starts_with("Thumbprint does not match configuration"));
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sdk_module_client_sends_telemetry() {
    common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = common::hub_on_8883(
        Hub::builder().device("gw").module("gw", "filter"),
        dir.path(),
    )
    .await;
    let module = IdentityRef::module("gw", "filter");
    let sdk = spawn_sas(&["telemetry", "--count", "3"], &hub, &module, &ca);
    let run = sdk.finish(STEP).await;
    assert_ok(&run);
    assert_eq!(run.steps("start")[0]["client_class"], "IoTHubModuleClient");
    let published: Vec<(String, Option<String>)> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Publish {
                topic, message_id, ..
            } if e.module.as_deref() == Some("filter") => Some((
                topic.split('%').next().unwrap().to_owned(),
                message_id.clone(),
            )),
            _ => None,
        })
        .collect();
    let expected: Vec<(String, Option<String>)> = (0..3)
        .map(|i| {
            (
                "devices/gw/modules/filter/messages/events/".to_owned(),
                Some(format!("m-{i}")),
            )
        })
        .collect();
    assert_eq!(published, expected);
    let client_id = hub.events().snapshot().iter().find_map(|e| match &e.kind {
        EventKind::Connect { client_id, .. } => Some(client_id.clone()),
        _ => None,
    });
    assert_eq!(client_id.as_deref(), Some("gw/filter"));
    hub.shutdown().await.unwrap();
}

/// The Python SDK subscribes once and never again: after the hub resets its connection it
/// reconnects with CleanSession=0, and C2D messages and method calls still reach it because the
/// hub kept its session. A C2D message sent while it is away arrives after it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_session_outlives_hub_side_drops() {
    common::python_with_sdk();
    let _port = common::lock_8883();
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = common::hub_on_8883(Hub::builder().device("sensor-1"), dir.path()).await;
    let who = IdentityRef::device("sensor-1");
    let mut sdk = spawn_sas(
        &[
            "session",
            "--c2d",
            "3",
            "--methods",
            "2",
            "--retry-interval",
            "3",
        ],
        &hub,
        &who,
        &ca,
    );
    sdk.wait_step("ready", STEP).await;
    let call = |n: i64| {
        let (hub, who) = (&hub, &who);
        async move {
            let r = hub
                .invoke_method(who, "ping", json!({"n": n}), Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json().unwrap()["echo"], json!({"n": n}));
        }
    };
    hub.send_c2d("sensor-1", CloudMessage::new("one").message_id("c2d-1"))
        .await
        .unwrap();
    sdk.wait_step("c2d", STEP).await;
    call(1).await;

    // 1. The hub resets the connection; the SDK is back at once, with its session.
    assert!(hub.close_connection("sensor-1", WireClose::Rst, CloseCause::Fault, "test reset"));
    assert_eq!(nth_connack(&hub, 2).await, (0, true));
    hub.send_c2d("sensor-1", CloudMessage::new("two").message_id("c2d-2"))
        .await
        .unwrap();
    sdk.wait_step("c2d", STEP).await;
    call(2).await;

    // 2. Disabling drops it and refuses its next attempt (CONNACK 3, which it retries after its
    // 3-second retry interval); a message sent while it is away waits in its session.
    assert!(hub.set_enabled(&who, false));
    assert_eq!(nth_connack(&hub, 3).await.0, 3);
    assert!(hub.set_enabled(&who, true));
    hub.send_c2d("sensor-1", CloudMessage::new("three").message_id("c2d-3"))
        .await
        .unwrap();
    assert_eq!(
        hub.connected_count(),
        0,
        "sent while the device was offline"
    );
    assert_eq!(nth_connack(&hub, 4).await, (0, true));
    let third = sdk.wait_step("c2d", STEP).await;
    assert_eq!(third["message_id"], "c2d-3");
    let run = sdk.finish(STEP).await;
    assert_ok(&run);

    let ids: Vec<_> = run
        .steps("c2d")
        .iter()
        .map(|l| l["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["c2d-1", "c2d-2", "c2d-3"]);
    // It subscribed on its first connection only.
    let events = hub.events().snapshot();
    let first_conn = events.iter().find_map(|e| match e.kind {
        EventKind::Connack { code: 0, .. } => e.conn,
        _ => None,
    });
    let subscribing_conns: std::collections::BTreeSet<_> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Subscribe { .. }))
        .map(|e| e.conn)
        .collect();
    assert_eq!(
        subscribing_conns.into_iter().collect::<Vec<_>>(),
        [first_conn]
    );
    hub.shutdown().await.unwrap();
}
