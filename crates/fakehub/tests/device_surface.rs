//! The IoT Hub device surface seen from the wire with a raw MQTT client: twins, desired-property
//! patches, direct methods, cloud-to-device messages and their queue, enabling and disabling, and
//! the topic limits.

use std::time::Duration;

use fakehub::testkit::{self, device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{
    C2dError, CloseCause, CloudMessage, EventKind, Hub, HubHandle, IdentityRef, MethodError,
    TwinError, TwinSection,
};
use rumqttc::mqttbytes::v4 as mq;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

async fn hub_with(devices: &[&str]) -> HubHandle {
    testkit::start_hub(devices).await.unwrap()
}

fn json_of(p: &mq::Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap()
}

async fn puback(c: &mut RawClient, pkid: u16) {
    c.send(&Packet::PubAck(mq::PubAck::new(pkid)))
        .await
        .unwrap();
}

/// Wait for the `closed` event of a device, and return its cause.
async fn closed_cause(hub: &HubHandle, dev: &str) -> CloseCause {
    testkit::closed(hub, dev, T)
        .await
        .expect("a closed event")
        .2
}

#[tokio::test]
async fn twin_get_reported_patch_and_malformed_json() {
    let hub = hub_with(&["d1", "d2"]).await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("d1"), false, 60)
        .await
        .unwrap();
    let (mut other, _) = RawClient::connect_as(&hub, &device("d2"), false, 60)
        .await
        .unwrap();
    c.subscribe(1, &["$iothub/twin/res/#"]).await.unwrap();
    other.subscribe(1, &["$iothub/twin/res/#"]).await.unwrap();

    // GET: both sections with their $version, at QoS 0 as IoT Hub sends $iothub topics.
    c.publish("$iothub/twin/GET/?$rid=get-1", QoS::AtLeastOnce, 2, b" ")
        .await
        .unwrap();
    let res = c.next_publish(T).await.expect("twin response");
    assert_eq!(res.topic, "$iothub/twin/res/200/?$rid=get-1");
    assert_eq!(res.qos, QoS::AtMostOnce);
    assert_eq!(
        json_of(&res),
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    // Reported PATCH: 204 with the new $version.
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=7",
        QoS::AtMostOnce,
        0,
        br#"{"firmware":"1.2.3","net":{"rssi":-40}}"#,
    )
    .await
    .unwrap();
    let res = c.next_publish(T).await.expect("patch response");
    assert_eq!(res.topic, "$iothub/twin/res/204/?$rid=7&$version=2");
    assert!(res.payload.is_empty());

    // Malformed JSON: 400, nothing changes.
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=8",
        QoS::AtMostOnce,
        0,
        b"{\"firmware\": ",
    )
    .await
    .unwrap();
    let res = c.next_publish(T).await.expect("error response");
    assert_eq!(res.topic, "$iothub/twin/res/400/?$rid=8");
    assert!(json_of(&res)["message"]
        .as_str()
        .unwrap()
        .contains("not JSON"));

    c.publish("$iothub/twin/GET/?$rid=get-2", QoS::AtMostOnce, 0, b"")
        .await
        .unwrap();
    let res = c.next_publish(T).await.expect("twin response");
    assert_eq!(
        json_of(&res)["reported"],
        json!({"firmware": "1.2.3", "net": {"rssi": -40}, "$version": 2})
    );
    let twin = hub.twin(&device("d1")).unwrap();
    assert_eq!(twin.reported_version, 2);
    assert_eq!(twin.reported["firmware"], "1.2.3");
    assert_eq!(hub.twin(&device("d2")).unwrap().reported_version, 1);
    assert!(hub.twin(&device("nobody")).is_none());

    // The other device saw none of d1's responses.
    assert!(matches!(
        other.recv(Duration::from_millis(200)).await,
        Received::Silence
    ));
    let updates: Vec<_> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::TwinUpdated {
                section, version, ..
            } => Some((section, version)),
            _ => None,
        })
        .collect();
    assert_eq!(updates, [(TwinSection::Reported, 2)]);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn desired_patches_are_pushed_with_their_version() {
    let hub = Hub::builder()
        .device("d")
        .module("d", "edge")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let module = IdentityRef::module("d", "edge");
    let (mut c, _) = RawClient::connect_as(&hub, &module, false, 60)
        .await
        .unwrap();
    c.subscribe(
        1,
        &[
            "$iothub/twin/PATCH/properties/desired/#",
            "$iothub/twin/res/#",
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        hub.patch_desired(&module, json!({"interval": 5, "mode": {"eco": true}}))
            .await,
        Ok(2)
    );
    let p = c.next_publish(T).await.expect("desired patch");
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert_eq!(
        json_of(&p),
        json!({"interval": 5, "mode": {"eco": true}, "$version": 2})
    );
    // Read as the Azure SDK for C twin sample reads: token by token, stopping at `$version`. Every
    // property comes before it on the wire, as IoT Hub sends them.
    let before_version = |payload: &[u8]| -> String {
        let text = String::from_utf8_lossy(payload).into_owned();
        text.split("\"$version\"")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        before_version(&p.payload).contains("\"interval\"")
            && before_version(&p.payload).contains("\"mode\""),
        "{}",
        String::from_utf8_lossy(&p.payload)
    );
    assert_eq!(
        hub.patch_desired(&module, json!({"device_count": 42}))
            .await,
        Ok(3)
    );
    let p = c.next_publish(T).await.expect("desired patch");
    assert_eq!(
        String::from_utf8_lossy(&p.payload),
        r#"{"device_count":42,"$version":3}"#
    );
    assert_eq!(
        hub.patch_desired(&module, json!({"mode": null, "device_count": null}))
            .await,
        Ok(4)
    );
    let p = c.next_publish(T).await.expect("third patch");
    assert_eq!(
        json_of(&p),
        json!({"mode": null, "device_count": null, "$version": 4})
    );
    c.publish("$iothub/twin/GET/?$rid=1", QoS::AtMostOnce, 0, b"")
        .await
        .unwrap();
    let res = c.next_publish(T).await.expect("twin");
    assert_eq!(
        json_of(&res)["desired"],
        json!({"interval": 5, "$version": 4})
    );
    assert!(before_version(&res.payload).contains("\"interval\""));
    // The device's own twin is a different one.
    assert_eq!(hub.twin(&device("d")).unwrap().desired_version, 1);

    // Refusals change nothing.
    assert!(matches!(
        hub.patch_desired(&module, json!({"a.b": 1})).await,
        Err(TwinError::Invalid(_))
    ));
    assert!(matches!(
        hub.patch_desired(&module, json!([1])).await,
        Err(TwinError::Invalid(_))
    ));
    assert_eq!(
        hub.patch_desired(&device("ghost"), json!({})).await,
        Err(TwinError::DeviceNotFound("ghost".into()))
    );
    assert_eq!(hub.twin(&module).unwrap().desired_version, 4);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn direct_methods_go_out_at_qos0_and_are_matched_by_rid() {
    let hub = hub_with(&["d"]).await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("d"), false, 60)
        .await
        .unwrap();
    c.subscribe(1, &["$iothub/methods/POST/#"]).await.unwrap();
    let call = {
        let who = device("d");
        let hub = &hub;
        async move {
            hub.invoke_method(&who, "reboot", json!({"delay": 1}), T)
                .await
        }
    };
    let device_side = async {
        let req = c.next_publish(T).await.expect("method request");
        assert_eq!(req.qos, QoS::AtMostOnce, "method requests are QoS 0");
        let (path, rid) = req.topic.split_once("/?$rid=").unwrap();
        assert_eq!(path, "$iothub/methods/POST/reboot");
        assert_eq!(json_of(&req), json!({"delay": 1}));
        // An answer with another request id is not this call's.
        c.publish(
            "$iothub/methods/res/500/?$rid=999",
            QoS::AtMostOnce,
            0,
            b"{}",
        )
        .await
        .unwrap();
        let topic = format!("$iothub/methods/res/200/?$rid={rid}");
        c.publish(&topic, QoS::AtLeastOnce, 5, br#"{"rebooting":true}"#)
            .await
            .unwrap();
        rid.to_owned()
    };
    let (result, rid) = tokio::join!(call, device_side);
    let response = result.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json().unwrap(), json!({"rebooting": true}));
    let results: Vec<_> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MethodResult {
                rid,
                status,
                result,
                ..
            } => Some((rid.clone(), *status, *result)),
            _ => None,
        })
        .collect();
    assert_eq!(results, [(Some(rid), Some(200), None)]);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn methods_fail_with_404103_when_offline_or_unsubscribed_and_504101_when_unanswered() {
    let hub = hub_with(&["d"]).await;
    let who = device("d");
    let payload = json!(null);
    assert_eq!(
        hub.invoke_method(&who, "m", payload.clone(), T).await,
        Err(MethodError::DeviceNotOnline("d".into()))
    );
    let (mut c, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    c.subscribe(1, &["$iothub/twin/res/#"]).await.unwrap();
    let e = hub
        .invoke_method(&who, "m", payload.clone(), T)
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(404103),
        "connected but not subscribed to methods"
    );
    c.subscribe(2, &["$iothub/methods/POST/#"]).await.unwrap();
    // Subscribed but silent: 30 s of the hub's elapsed time, run 300 times faster.
    hub.clock().set_speed(300.0);
    let e = hub
        .invoke_method(&who, "m", payload.clone(), Duration::from_secs(30))
        .await
        .unwrap_err();
    hub.clock().set_speed(1.0);
    assert_eq!(e, MethodError::Timeout);
    assert_eq!(e.code(), Some(504101));
    assert!(c.next_publish(T).await.is_some(), "the request did go out");
    assert_eq!(
        hub.invoke_method(&device("ghost"), "m", payload.clone(), T)
            .await
            .unwrap_err()
            .code(),
        Some(404001)
    );
    assert!(matches!(
        hub.invoke_method(&who, "a/b", payload, T).await,
        Err(MethodError::Invalid(_))
    ));
    let codes: Vec<_> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MethodResult { result, .. } => *result,
            _ => None,
        })
        .collect();
    assert_eq!(codes, [404103, 404103, 504101]);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn c2d_carries_its_properties_at_qos1_and_completes_on_puback() {
    let hub = hub_with(&["d"]).await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("d"), false, 60)
        .await
        .unwrap();
    c.subscribe(1, &["devices/d/messages/devicebound/#"])
        .await
        .unwrap();
    let message = CloudMessage::new(br#"{"led":"on"}"#.to_vec())
        .message_id("cmd-1")
        .correlation_id("corr 7")
        .content_type("application/json")
        .content_encoding("utf-8")
        .property("priority", "high")
        .property("path", "/a b");
    assert_eq!(hub.send_c2d("d", message).await, Ok("cmd-1".to_owned()));
    let p = c.next_publish(T).await.expect("c2d");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(
        p.topic,
        "devices/d/messages/devicebound/%24.mid=cmd-1&%24.to=%2Fdevices%2Fd%2Fmessages%2Fdevicebound&%24.cid=corr%207&%24.ct=application%2Fjson&%24.ce=utf-8&path=%2Fa%20b&priority=high"
    );
    assert_eq!(&p.payload[..], br#"{"led":"on"}"#);
    assert_eq!(hub.c2d_queue_depth("d").await, 1, "not acknowledged yet");
    puback(&mut c, p.pkid).await;
    let done = hub
        .event_stream()
        .wait_for(T, |e| matches!(e.kind, EventKind::C2dCompleted { .. }))
        .await;
    assert!(done.is_some());
    assert_eq!(hub.c2d_queue_depth("d").await, 0);
    // A generated message id, and the limits of the service call.
    let id = hub.send_c2d("d", CloudMessage::new("x")).await.unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(
        c.next_publish(T).await.unwrap().topic,
        format!(
            "devices/d/messages/devicebound/%24.mid={id}&%24.to=%2Fdevices%2Fd%2Fmessages%2Fdevicebound"
        )
    );
    assert_eq!(
        hub.send_c2d("d", CloudMessage::new(vec![0; 64 * 1024 + 1]))
            .await,
        Err(C2dError::TooLarge(64 * 1024 + 1))
    );
    assert_eq!(
        hub.send_c2d("ghost", CloudMessage::new("x")).await,
        Err(C2dError::DeviceNotFound("ghost".into()))
    );
    hub.shutdown().await.unwrap();
}

/// The device's queue: 50 messages wait for an offline CleanSession=0 session and arrive complete
/// and in order after the reconnect; a 51st is refused with 403004 until the device acknowledges.
#[tokio::test]
async fn c2d_queue_of_50_survives_offline_in_order_and_the_51st_is_403004() {
    let hub = hub_with(&["d"]).await;
    let who = device("d");
    let (mut c, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    c.subscribe(1, &["devices/d/messages/devicebound/#"])
        .await
        .unwrap();
    c.reset();
    closed_cause(&hub, "d").await;
    for i in 0..50 {
        let m = CloudMessage::new(vec![b'x'; 1024]).message_id(format!("m-{i}"));
        hub.send_c2d("d", m).await.unwrap();
    }
    let full = hub
        .send_c2d("d", CloudMessage::new("one more").message_id("m-50"))
        .await
        .unwrap_err();
    assert_eq!(full, C2dError::QueueFull("d".into()));
    assert_eq!(full.code(), Some(403004));
    assert!(hub.events().snapshot().iter().any(|e| matches!(
        &e.kind,
        EventKind::C2dRefused { message_id, result, .. } if message_id == "m-50" && *result == 403004
    )));

    let (mut c, ack) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    assert!(ack.session_present);
    let mut ids = Vec::new();
    while ids.len() < 50 {
        let p = c.next_publish(T).await.expect("a queued message");
        ids.push(p.topic.split('&').next().unwrap().to_owned());
        puback(&mut c, p.pkid).await;
    }
    let expected: Vec<String> = (0..50)
        .map(|i| format!("devices/d/messages/devicebound/%24.mid=m-{i}"))
        .collect();
    assert_eq!(ids, expected);
    let mut s = hub.event_stream();
    let mut completed = 0;
    s.wait_for(T, |e| {
        completed += usize::from(matches!(e.kind, EventKind::C2dCompleted { .. }));
        completed == 50
    })
    .await
    .expect("50 completions");
    assert_eq!(hub.c2d_queue_depth("d").await, 0);
    hub.send_c2d("d", CloudMessage::new("again").message_id("m-50"))
        .await
        .unwrap();
    hub.shutdown().await.unwrap();
}

/// IoT Hub keeps C2D messages for a device whatever its session: sent before the device ever
/// subscribed, they wait in the hub; unacknowledged ones survive a CleanSession=1 reconnect.
#[tokio::test]
async fn c2d_waits_for_a_subscription_and_survives_a_clean_session() {
    let hub = hub_with(&["d"]).await;
    let who = device("d");
    hub.send_c2d("d", CloudMessage::new("1").message_id("early-1"))
        .await
        .unwrap();
    hub.send_c2d("d", CloudMessage::new("2").message_id("early-2"))
        .await
        .unwrap();
    let (mut c, _) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    c.subscribe(1, &["devices/d/messages/devicebound/#"])
        .await
        .unwrap();
    let first = c.next_publish(T).await.expect("early-1");
    assert!(first.topic.contains("mid=early-1"), "{}", first.topic);
    puback(&mut c, first.pkid).await;
    let second = c.next_publish(T).await.expect("early-2");
    assert!(second.topic.contains("mid=early-2"), "{}", second.topic);
    // early-2 is not acknowledged; a clean session forgets it in the core, the hub does not.
    c.reset();
    closed_cause(&hub, "d").await;
    let (mut c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert!(!ack.session_present);
    c.subscribe(1, &["devices/d/messages/devicebound/#"])
        .await
        .unwrap();
    let again = c.next_publish(T).await.expect("early-2 again");
    assert!(again.topic.contains("mid=early-2"), "{}", again.topic);
    puback(&mut c, again.pkid).await;
    assert!(c.next_publish(Duration::from_millis(200)).await.is_none());
    hub.shutdown().await.unwrap();
}

/// azure-sdk-for-c subscribes to `devices/+/messages/devicebound/#`: the hub accepts it and gives
/// the device its own C2D only. A device has five distinct filters to use; all five fit.
#[tokio::test]
async fn the_wildcard_c2d_filter_gets_only_the_devices_own_messages() {
    let hub = hub_with(&["a", "b"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), false, 60)
        .await
        .unwrap();
    let (mut b, _) = RawClient::connect_as(&hub, &device("b"), false, 60)
        .await
        .unwrap();
    let codes = a
        .subscribe(
            1,
            &[
                "devices/+/messages/devicebound/#",
                "devices/a/messages/devicebound/#",
                "$iothub/twin/res/#",
                "$iothub/twin/PATCH/properties/desired/#",
                "$iothub/methods/POST/#",
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        codes,
        vec![mq::SubscribeReasonCode::Success(QoS::AtLeastOnce); 5]
    );
    b.subscribe(1, &["devices/+/messages/devicebound/#"])
        .await
        .unwrap();
    hub.send_c2d("a", CloudMessage::new("for a").message_id("to-a"))
        .await
        .unwrap();
    let p = a.next_publish(T).await.expect("a's message");
    assert!(p
        .topic
        .starts_with("devices/a/messages/devicebound/%24.mid=to-a"));
    puback(&mut a, p.pkid).await;
    assert!(
        a.next_publish(Duration::from_millis(200)).await.is_none(),
        "one delivery although two filters match"
    );
    assert!(b.next_publish(Duration::from_millis(200)).await.is_none());
    assert_eq!(hub.connected_count(), 2);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn disabling_closes_and_refuses_enabling_lets_the_device_back() {
    let hub = hub_with(&["d"]).await;
    let who = device("d");
    let (mut c, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    assert!(hub.set_enabled(&who, false));
    assert!(matches!(c.recv(T).await, Received::Closed));
    assert_eq!(closed_cause(&hub, "d").await, CloseCause::Disabled);
    let (_, ack) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::ServiceUnavailable);
    assert!(hub.set_enabled(&who, true));
    let (_, ack) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert!(!hub.set_enabled(&device("ghost"), false));
    let statuses: Vec<bool> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::IdentityStatus { enabled } => Some(enabled),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [false, true]);
    hub.shutdown().await.unwrap();
}
