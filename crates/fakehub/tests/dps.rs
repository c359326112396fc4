//! The Device Provisioning Service over MQTT, packet by packet: attestation (individual keys,
//! group-derived keys, refusals), register → 202 `assigning` → poll → 200 `assigned` with the device
//! created in the assigned hub, several hubs behind one service (hashed and static allocation,
//! re-provisioning to another hub when one is down), the DPS faults, bad input, and the events
//! and DeviceOperations records. Simulated time, in memory.

use std::time::Duration;

use fakehub::dps::{Allocation, GroupEnrollment, IndividualEnrollment, Reprovision};
use fakehub::events::DpsOp;
use fakehub::faults::{
    DpsAssigning, DpsDisabled, DpsDrop, DpsError, DpsThrottle, Fault, HubDown, Selector,
};
use fakehub::testkit::{RawClient, Received};
use fakehub::{Dps, DpsConfig, EventKind, Hub, HubHandle, IdentityRef};
use fakehub_protocol::dps::Request;
use rumqttc::mqttbytes::v4 as mq;

const GROUP_KEY: &str = "Z3JvdXBrZXlncm91cGtleWdyb3Vwa2V5Z3JvdXBrZXk=";
const WAIT: Duration = Duration::from_secs(40);

fn config() -> DpsConfig {
    DpsConfig {
        individual: vec![IndividualEnrollment {
            registration_id: "solo".into(),
            primary_key: None,
            secondary_key: None,
            x509: false,
            enabled: true,
        }],
        groups: vec![GroupEnrollment {
            name: "fleet".into(),
            primary_key: Some(GROUP_KEY.into()),
            secondary_key: None,
            x509: false,
            enabled: true,
        }],
        ..Default::default()
    }
}

async fn hub_with(dps: &Dps, host: &str) -> HubHandle {
    Hub::builder()
        .host_name(host)
        .dps(dps.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

fn register(rid: &str) -> Request {
    Request::Register { rid: rid.into() }
}

fn poll(rid: &str, op: &str) -> Request {
    Request::Poll {
        rid: rid.into(),
        operation_id: op.into(),
    }
}

/// Register and poll until the registration is no longer `assigning`; the last answer's body.
async fn provision(client: &mut RawClient, registration_id: &str) -> serde_json::Value {
    let body =
        serde_json::json!({ "registrationId": registration_id, "payload": null }).to_string();
    let (a, first) = client
        .dps_request(&register("r0"), body.as_bytes(), WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, a.retry_after), (202, Some(3)), "{first}");
    assert_eq!(first["status"], "assigning");
    let op = first["operationId"].as_str().unwrap().to_owned();
    for i in 1..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (a, body) = client
            .dps_request(&poll(&format!("r{i}"), &op), b" ", WAIT)
            .await
            .unwrap();
        if body["status"] != "assigning" {
            assert_eq!(a.status, 200, "{body}");
            return body;
        }
    }
    panic!("never assigned");
}

#[tokio::test(start_paused = true)]
async fn an_individual_enrollment_registers_and_the_device_connects_to_its_hub() {
    let dps = Dps::new(&config(), 7).unwrap();
    let hub = hub_with(&dps, "hub-a.azure-devices.net").await;
    let key = dps.device_key("solo", None).unwrap();
    let (mut client, ack) = RawClient::connect_dps_memory(&hub, "solo", &key)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert!(!ack.session_present, "DPS keeps no session");
    let done = provision(&mut client, "solo").await;
    let state = &done["registrationState"];
    assert_eq!(done["status"], "assigned");
    assert_eq!(state["assignedHub"], "hub-a.azure-devices.net");
    assert_eq!(state["deviceId"], "solo");
    assert_eq!(state["substatus"], "initialAssignment");
    assert!(state["etag"].as_str().is_some_and(|e| !e.is_empty()));
    // The device exists in the hub, with the enrollment's key: it connects.
    let who = IdentityRef::device("solo");
    assert_eq!(hub.registry().identity(&who).unwrap().keys.primary_key, key);
    let (_hub_client, ack) = RawClient::connect_memory_as(&hub, &who, false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert_eq!(
        dps.registration("solo").unwrap().hub.as_deref(),
        Some("hub-a.azure-devices.net")
    );
    // The log: provisioning events that are not hub connections, and the records.
    let events = hub.events().snapshot();
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::DpsConnect(d) if d.registration_id == "solo")));
    let responses: Vec<(DpsOp, u16)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DpsResponse(r) => Some((r.op, r.status)),
            _ => None,
        })
        .collect();
    assert_eq!(responses, [(DpsOp::Register, 202), (DpsOp::Poll, 200)]);
    let connects = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Connect { .. }))
        .count();
    assert_eq!(connects, 1, "only the hub connection is a CONNECT");
    let records = hub.records();
    assert!(
        records.iter().all(|r| r.operation_name == "deviceConnect"),
        "no Connections record for the provisioning connection: {records:?}"
    );
    let dps_records = hub.dps_records();
    let ops: Vec<&str> = dps_records
        .iter()
        .map(|r| r.operation_name.as_str())
        .collect();
    assert_eq!(
        ops,
        [
            "AttestationAttempt",
            "RegisterDevice",
            "OperationStatusLookup"
        ]
    );
    assert!(dps_records.iter().all(|r| r.result_type == "Success"));
    hub.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn group_keys_are_derived_per_device_and_wrong_keys_are_refused() {
    let dps = Dps::new(&config(), 7).unwrap();
    let hub = hub_with(&dps, "hub-a.azure-devices.net").await;
    let derived = dps.device_key("dev-01", Some("fleet")).unwrap();
    assert_eq!(derived, "UbTx9Haqnr1lNBI/FN3tMT5KRSGmiH0e4h9ExF/SyWA=");
    let (mut client, ack) = RawClient::connect_dps_memory(&hub, "dev-01", &derived)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    let done = provision(&mut client, "dev-01").await;
    assert_eq!(done["registrationState"]["deviceId"], "dev-01");
    let who = IdentityRef::device("dev-01");
    let (_c, ack) = RawClient::connect_memory_as(&hub, &who, false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    // The group key itself, another device's key, or an unknown registration: CONNACK 5.
    for (registration, key) in [
        ("dev-02", GROUP_KEY),
        ("dev-02", derived.as_str()),
        ("stranger", "c3RyYW5nZXJzdHJhbmdlcnN0cmFuZ2Vy"),
    ] {
        let (_c, ack) = RawClient::connect_dps_memory(&hub, registration, key)
            .await
            .unwrap();
        assert_eq!(
            ack.code,
            mq::ConnectReturnCode::NotAuthorized,
            "{registration}"
        );
    }
    let refusals = hub
        .events()
        .snapshot()
        .iter()
        .filter(|e| {
            matches!(
                &e.kind,
                EventKind::DpsConnack {
                    code: 5,
                    error_code: Some(401_002),
                    ..
                }
            )
        })
        .count();
    assert_eq!(refusals, 3);
    let failed: Vec<_> = hub
        .dps_records()
        .into_iter()
        .filter(|r| r.result_type == "ClientError")
        .collect();
    assert_eq!(failed.len(), 3);
    assert!(failed
        .iter()
        .all(|r| r.result_signature == "401" && r.operation_name == "AttestationAttempt"));
    assert!(
        failed
            .iter()
            .all(|r| !r.result_description.contains(GROUP_KEY)),
        "no key in records"
    );
    hub.shutdown().await.unwrap();
}

/// Two hubs behind one service, one log: hashed allocation, then the assigned hub goes down and
/// a new registration moves the device to the other hub with its twin.
#[tokio::test(start_paused = true)]
async fn reprovisioning_moves_a_device_off_a_hub_that_is_down() {
    let dps = Dps::new(&config(), 7).unwrap();
    let log = fakehub::EventLog::new(fakehub::VirtualClock::new());
    let a = Hub::builder()
        .host_name("hub-a.azure-devices.net")
        .dps(dps.clone())
        .event_log(log.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let b = Hub::builder()
        .host_name("hub-b.azure-devices.net")
        .dps(dps.clone())
        .event_log(a.events().clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let key = dps.device_key("solo", None).unwrap();
    let (mut client, _) = RawClient::connect_dps_memory(&a, "solo", &key)
        .await
        .unwrap();
    let first = provision(&mut client, "solo").await;
    let first_hub = first["registrationState"]["assignedHub"]
        .as_str()
        .unwrap()
        .to_owned();
    let (home, other) = if first_hub == a.host_name() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let who = IdentityRef::device("solo");
    home.patch_desired(&who, serde_json::json!({"interval": 30}))
        .await
        .unwrap();
    let (_c, ack) = RawClient::connect_memory_as(home, &who, false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    home.inject(Fault::new(HubDown::default()));
    let refused = RawClient::connect_memory_as(home, &who, false, 60)
        .await
        .unwrap()
        .1;
    assert_eq!(refused.code, mq::ConnectReturnCode::ServiceUnavailable);
    // Re-provisioning: the hub that is down is out of rotation.
    let again = provision(&mut client, "solo").await;
    let state = &again["registrationState"];
    assert_eq!(state["assignedHub"], other.host_name());
    assert_eq!(state["substatus"], "deviceDataMigrated");
    assert!(
        home.registry().identity(&who).is_none(),
        "it left the old hub"
    );
    assert_eq!(
        other.twin(&who).unwrap().desired["interval"],
        30,
        "the twin moved with it"
    );
    let (_c, ack) = RawClient::connect_memory_as(other, &who, false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    // One log, each hub's events tagged with its name.
    let events = a.events().snapshot();
    let tagged: std::collections::BTreeSet<Option<String>> = events
        .iter()
        .map(|e| e.hub.as_deref().map(str::to_owned))
        .collect();
    assert!(tagged.contains(&Some("hub-a.azure-devices.net".into())));
    assert!(tagged.contains(&Some("hub-b.azure-devices.net".into())));
    let conns: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Accepted { .. } => e.conn,
            _ => None,
        })
        .collect();
    let unique: std::collections::BTreeSet<u64> = conns.iter().copied().collect();
    assert_eq!(
        unique.len(),
        conns.len(),
        "connection ids are unique across the hubs"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn static_allocation_and_never_reprovision_keep_their_hub() {
    let mut c = config();
    c.allocation = Allocation::Static {
        hub: "hub-b.azure-devices.net".into(),
    };
    c.reprovision = Reprovision::Never;
    let dps = Dps::new(&c, 1).unwrap();
    let a = hub_with(&dps, "hub-a.azure-devices.net").await;
    let b = Hub::builder()
        .host_name("hub-b.azure-devices.net")
        .dps(dps.clone())
        .event_log(a.events().clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let key = dps.device_key("solo", None).unwrap();
    let (mut client, _) = RawClient::connect_dps_memory(&a, "solo", &key)
        .await
        .unwrap();
    let done = provision(&mut client, "solo").await;
    assert_eq!(
        done["registrationState"]["assignedHub"],
        "hub-b.azure-devices.net"
    );
    b.inject(Fault::new(HubDown::default()));
    let again = provision(&mut client, "solo").await;
    assert_eq!(
        again["registrationState"]["assignedHub"],
        "hub-b.azure-devices.net"
    );
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dps_faults_answer_as_the_service_does_when_it_misbehaves() {
    let dps = Dps::new(&config(), 7).unwrap();
    let hub = hub_with(&dps, "hub-a.azure-devices.net").await;
    let key = dps.device_key("solo", None).unwrap();
    let body = br#"{"registrationId":"solo"}"#;
    let (mut client, _) = RawClient::connect_dps_memory(&hub, "solo", &key)
        .await
        .unwrap();

    // Throttling: 429 with an integer retry-after and an error body.
    let throttle = hub.inject(Fault::new(DpsThrottle {
        retry_after: Duration::from_millis(4500),
        per_minute: None,
    }));
    let (a, e) = client
        .dps_request(&register("t1"), body, WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, a.retry_after), (429, Some(5)));
    assert_eq!(e["errorCode"], 429_001);
    assert!(e["trackingId"].as_str().is_some() && e["timestampUtc"].as_str().is_some());
    throttle.end();

    // 5xx, once.
    hub.inject(Fault::new(DpsError {
        status: 503,
        retry_after: Some(Duration::from_secs(2)),
        op: None,
        count: Some(1),
    }));
    let (a, e) = client
        .dps_request(&register("e1"), body, WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, a.retry_after), (503, Some(2)));
    assert_eq!(e["errorCode"], 503_001);

    // A long `assigning`.
    let hold = hub.inject(Fault::new(DpsAssigning {
        hold: Duration::from_secs(60),
        retry_after: Duration::from_secs(10),
    }));
    let (_, first) = client
        .dps_request(&register("h0"), body, WAIT)
        .await
        .unwrap();
    let op = first["operationId"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (a, b) = client
        .dps_request(&poll("h1", &op), b" ", WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, a.retry_after), (202, Some(10)));
    assert_eq!(b["status"], "assigning");
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (a, b) = client
        .dps_request(&poll("h2", &op), b" ", WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, b["status"].as_str()), (200, Some("assigned")));
    hold.end();

    // A disabled enrollment: the registration ends `disabled` (200, as the service answers).
    let off = hub.inject(Fault::new(DpsDisabled {}).devices(Selector::Ids(vec!["solo".into()])));
    let (_, first) = client
        .dps_request(&register("d0"), body, WAIT)
        .await
        .unwrap();
    let op = first["operationId"].as_str().unwrap().to_owned();
    let (a, b) = client
        .dps_request(&poll("d1", &op), b" ", WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, b["status"].as_str()), (200, Some("disabled")));
    assert_eq!(b["registrationState"]["status"], "disabled");
    off.end();

    // The service's polling limit: the sixth poll in ten seconds is throttled.
    let (_, first) = client
        .dps_request(&register("p0"), body, WAIT)
        .await
        .unwrap();
    let op = first["operationId"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (a, _) = client
            .dps_request(&poll(&format!("p{}", i + 1), &op), b" ", WAIT)
            .await
            .unwrap();
        statuses.push((a.status, a.retry_after));
    }
    assert_eq!(statuses[..5], [(200, None); 5]);
    assert_eq!(statuses[5].0, 429);
    assert!(statuses[5].1.is_some_and(|s| (1..=10).contains(&s)));

    // A drop mid-registration: the connection closes, unanswered.
    hub.inject(Fault::new(DpsDrop {
        op: Some(DpsOp::Register),
        count: Some(1),
        rst: false,
    }));
    client
        .publish(
            &fakehub_protocol::dps::register_topic("x"),
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            9,
            body,
        )
        .await
        .unwrap();
    let mut ended = false;
    for _ in 0..5 {
        match client.recv(Duration::from_secs(5)).await {
            Received::Closed | Received::Reset => {
                ended = true;
                break;
            }
            Received::Packet(mq::Packet::PubAck(_)) => {
                panic!("a dropped request is not acknowledged")
            }
            Received::Packet(p) => panic!("unexpected {p:?}"),
            _ => {}
        }
    }
    assert!(ended, "the connection was dropped");
    // The next connection goes through (once the polling window has passed).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (mut client, _) = RawClient::connect_dps_memory(&hub, "solo", &key)
        .await
        .unwrap();
    let done = provision(&mut client, "solo").await;
    assert_eq!(done["status"], "assigned");
    hub.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bad_provisioning_input_closes_or_refuses_that_request_only() {
    let dps = Dps::new(&config(), 7).unwrap();
    let hub = hub_with(&dps, "hub-a.azure-devices.net").await;
    let key = dps.device_key("solo", None).unwrap();
    let (mut client, _) = RawClient::connect_dps_memory(&hub, "solo", &key)
        .await
        .unwrap();
    // Not JSON, or another registration's id: 400 with an error body; the connection stays.
    let (a, e) = client
        .dps_request(&register("b1"), b"{not json", WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, e["errorCode"].as_u64()), (400, Some(400_004)));
    let (a, _) = client
        .dps_request(
            &register("b2"),
            br#"{"registrationId":"someone-else"}"#,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    // An operation that does not exist: 404.
    let (a, _) = client
        .dps_request(&poll("b3", "4.0.nothing"), b" ", WAIT)
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    // A topic DPS does not know: the connection is closed.
    client
        .publish(
            "$dps/registrations/DELETE/whatever/?$rid=1",
            rumqttc::mqttbytes::QoS::AtMostOnce,
            0,
            b"",
        )
        .await
        .unwrap();
    assert!(matches!(
        client.recv(Duration::from_secs(5)).await,
        Received::Closed | Received::Reset
    ));
    // A DPS username where no DPS is served is an ordinary refused CONNECT.
    let plain = Hub::builder().build().unwrap().start().await.unwrap();
    let mut c = RawClient::connect_memory(&plain).await.unwrap();
    let token = fakehub::sas::mint(
        "0ne00FAKE00/registrations/solo",
        &key,
        Some("registration"),
        plain.clock().now() + Duration::from_secs(60),
    )
    .unwrap();
    c.send(&mq::Packet::Connect(fakehub::testkit::dps_connect_packet(
        "0ne00FAKE00",
        "solo",
        &token,
    )))
    .await
    .unwrap();
    assert!(matches!(
        c.recv(Duration::from_secs(5)).await,
        Received::Packet(mq::Packet::ConnAck(ack)) if ack.code == mq::ConnectReturnCode::NotAuthorized
    ));
    // The hub still provisions.
    let (mut client, _) = RawClient::connect_dps_memory(&hub, "solo", &key)
        .await
        .unwrap();
    assert_eq!(provision(&mut client, "solo").await["status"], "assigned");
    plain.shutdown().await.unwrap();
    hub.shutdown().await.unwrap();
}

/// The in-band dialect on the provisioning service: a register whose payload asks for
/// `InvokeThrottling` is throttled (the trigger too) for its duration, acted on once.
#[tokio::test(start_paused = true)]
async fn an_in_band_trigger_in_the_register_payload_throttles_the_registration() {
    let dps = Dps::new(&config(), 7).unwrap();
    let hub = hub_with(&dps, "hub-a.azure-devices.net").await;
    let key = dps.device_key("solo", None).unwrap();
    let (mut client, _) = RawClient::connect_dps_memory(&hub, "solo", &key)
        .await
        .unwrap();
    let body = br#"{"registrationId":"solo","payload":{"AzIoTHub_FaultOperationType":"InvokeThrottling","AzIoTHub_FaultOperationDurationInSecs":"3"}}"#;
    let (a, e) = client
        .dps_request(&register("i1"), body, WAIT)
        .await
        .unwrap();
    assert_eq!((a.status, a.retry_after), (429, Some(3)), "{e}");
    // The same register again, while the fault lasts: still throttled, not a new trigger.
    let (a, _) = client
        .dps_request(&register("i2"), body, WAIT)
        .await
        .unwrap();
    assert_eq!(a.status, 429);
    hub.clock().sleep(Duration::from_secs(4)).await;
    let (a, _) = client
        .dps_request(&register("i3"), body, WAIT)
        .await
        .unwrap();
    assert_eq!(a.status, 202, "the fault is over and the trigger acts once");
    let started = hub
        .events()
        .snapshot()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Fault { fault, action: fakehub::events::FaultAction::Started, .. } if fault == "inband:dps:InvokeThrottling"))
        .count();
    assert_eq!(started, 1);
    hub.shutdown().await.unwrap();
}
