//! The IoT Hub service REST API seen over HTTPS: registry, twins, methods, the purge, policies and
//! bad requests, with IoT Hub's status codes, ETags and error bodies. The official SDKs drive it
//! in `clients/python/tests` (run by fakehub-scenario's `python_client` test).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fakehub::service_api;
use fakehub::testkit::{self, device, MqttQoS as QoS, RawClient, ServiceClient};
use fakehub::{CloudMessage, Hub, HubHandle, Rights, SymmetricKeys};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const V: &str = "api-version=2021-04-12";

async fn hub_and_api(
    b: fakehub::HubBuilder,
) -> (Arc<HubHandle>, service_api::ServiceApi, SocketAddr) {
    let hub = Arc::new(
        b.host_name("myhub.azure-devices.net")
            .build()
            .unwrap()
            .start()
            .await
            .unwrap(),
    );
    let listener = service_api::bind(&hub, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let api = listener.serve(service_api::router(hub.clone()));
    (hub, api, addr)
}

fn error_name(r: &testkit::ServiceResponse) -> String {
    let message = r.json()["Message"].as_str().unwrap_or_default().to_owned();
    message
        .strip_prefix("ErrorCode:")
        .and_then(|m| m.split(';').next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn devices_are_created_read_replaced_and_deleted_with_etags() {
    let (hub, api, addr) = hub_and_api(Hub::builder()).await;
    let c = ServiceClient::owner(&hub, addr).unwrap();

    // Create: 200 (not 201), keys generated for empty ones.
    let body = json!({"deviceId": "d1", "status": "enabled",
        "authentication": {"symmetricKey": {"primaryKey": "", "secondaryKey": ""}, "type": "sas"},
        "capabilities": {"iotEdge": false}});
    let r = c
        .request("PUT", &format!("/devices/d1?{V}"), &[], Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let created = r.json();
    assert_eq!(created["deviceId"], "d1");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["connectionState"], "Disconnected");
    let key = created["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(key.len(), 44, "a fresh 32-byte key");
    assert!(hub.connection_string("d1").unwrap().contains(&key));
    let etag = created["etag"].as_str().unwrap().to_owned();

    // Again: 409 DeviceAlreadyExists, in the shape Node's error mapping reads.
    let r = c
        .request("PUT", &format!("/devices/d1?{V}"), &[], Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(error_name(&r), "DeviceAlreadyExists");
    assert_eq!(r.header("iothub-errorcode"), Some("DeviceAlreadyExists"));

    // Replace with a stale ETag: 412; with the current one: disabled.
    let mut disabled = created.clone();
    disabled["status"] = json!("disabled");
    let r = c
        .request(
            "PUT",
            &format!("/devices/d1?{V}"),
            &[("if-match", "\"c3RhbGU=\"")],
            Some(&disabled),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    assert_eq!(error_name(&r), "PreconditionFailed");
    let quoted = format!("\"{etag}\"");
    let r = c
        .request(
            "PUT",
            &format!("/devices/d1?{V}"),
            &[("if-match", &quoted)],
            Some(&disabled),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["status"], "disabled");
    assert_ne!(r.json()["etag"], json!(etag), "the ETag moves on");
    assert_eq!(
        r.json()["authentication"]["symmetricKey"]["primaryKey"],
        json!(key),
        "keys kept"
    );
    assert!(!hub.registry().identity(&device("d1")).unwrap().enabled);

    // New keys: an empty key is generated again.
    let mut rekey = r.json();
    rekey["authentication"]["symmetricKey"]["primaryKey"] = json!("");
    let r = c
        .request(
            "PUT",
            &format!("/devices/d1?{V}"),
            &[("if-match", "\"*\"")],
            Some(&rekey),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(
        r.json()["authentication"]["symmetricKey"]["primaryKey"],
        json!(key)
    );

    // Modules, lists, statistics.
    let r = c
        .request(
            "PUT",
            &format!("/devices/d1/modules/m1?{V}"),
            &[],
            Some(&json!({"moduleId": "m1", "deviceId": "d1"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["moduleId"], "m1");
    let r = c
        .request("GET", &format!("/devices/d1/modules?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = c
        .request("GET", &format!("/devices/?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(
        r.json().as_array().unwrap().len(),
        1,
        "Node lists with a trailing slash"
    );
    let r = c
        .request("GET", &format!("/statistics/devices?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(
        r.json(),
        json!({"totalDeviceCount": 1, "enabledDeviceCount": 0, "disabledDeviceCount": 1})
    );

    // Delete: 204, then 404 DeviceNotFound (and the module went with it).
    let r = c
        .request(
            "DELETE",
            &format!("/devices/d1?{V}"),
            &[("if-match", "\"*\"")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    let r = c
        .request("GET", &format!("/devices/d1?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_name(&r), "DeviceNotFound");
    assert!(hub
        .registry()
        .identity(&fakehub::IdentityRef::from_client_id("d1/m1"))
        .is_none());
    api.shutdown().await;
}

#[tokio::test]
async fn deleting_a_device_closes_its_connection_and_its_queue() {
    let (hub, api, addr) = hub_and_api(Hub::builder().device("d")).await;
    let c = ServiceClient::owner(&hub, addr).unwrap();
    let (_dev, ack) = RawClient::connect_as(&hub, &device("d"), false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
    hub.send_c2d("d", CloudMessage::new(b"x".to_vec()))
        .await
        .unwrap();
    let r = c
        .request("DELETE", &format!("/devices/d/commands?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"totalMessagesPurged": 1, "deviceId": "d", "moduleId": null})
    );
    assert_eq!(hub.c2d_queue_depth("d").await, 0);
    let r = c
        .request("DELETE", &format!("/devices/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    let (_, _, cause) = testkit::closed(&hub, "d", T).await.unwrap();
    assert_eq!(cause, fakehub::CloseCause::Deleted);
    api.shutdown().await;
}

#[tokio::test]
async fn twins_patch_and_replace_with_etags_and_reach_the_device() {
    let (hub, api, addr) = hub_and_api(Hub::builder().device("d")).await;
    let c = ServiceClient::owner(&hub, addr).unwrap();
    let (mut dev, _) = RawClient::connect_as(&hub, &device("d"), false, 60)
        .await
        .unwrap();
    dev.subscribe(1, &["$iothub/twin/PATCH/properties/desired/#"])
        .await
        .unwrap();

    let r = c
        .request("GET", &format!("/twins/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let twin = r.json();
    assert_eq!(twin["etag"], "AAAAAAAAAAE=");
    assert_eq!(twin["connectionState"], "Connected");
    assert_eq!(twin["properties"]["desired"], json!({"$version": 1}));

    let patch = json!({"tags": {"site": "lab"}, "properties": {"desired": {"interval": 5}}});
    let r = c
        .request(
            "PATCH",
            &format!("/twins/d?{V}"),
            &[("if-match", "\"AAAAAAAAAAA=\"")],
            Some(&patch),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 412, "a stale twin ETag");
    let r = c
        .request(
            "PATCH",
            &format!("/twins/d?{V}"),
            &[("if-match", "\"AAAAAAAAAAE=\"")],
            Some(&patch),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["tags"], json!({"site": "lab"}));
    assert_eq!(
        r.json()["properties"]["desired"],
        json!({"interval": 5, "$version": 2})
    );
    let p = dev.next_publish(T).await.expect("the desired patch");
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap(),
        json!({"interval": 5, "$version": 2})
    );

    // A replacement: the device hears the difference.
    let r = c
        .request(
            "PUT",
            &format!("/twins/d?{V}"),
            &[("if-match", "\"*\"")],
            Some(&json!({"properties": {"desired": {"mode": "eco"}}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tags"], json!({}));
    let p = dev.next_publish(T).await.expect("the replacement");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap(),
        json!({"interval": null, "mode": "eco", "$version": 3})
    );

    // The service side may not write reported properties; a bad key names itself.
    let r = c
        .request(
            "PATCH",
            &format!("/twins/d?{V}"),
            &[],
            Some(&json!({"properties": {"reported": {"x": 1}}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .request(
            "PATCH",
            &format!("/twins/d?{V}"),
            &[],
            Some(&json!({"tags": {"a.b": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        error_name(&r) == "ArgumentInvalid"
            && r.json()["Message"].as_str().unwrap().contains("a.b")
    );
    api.shutdown().await;
}

#[tokio::test]
async fn methods_answer_with_the_device_status_or_404103_and_504101() {
    let (hub, api, addr) = hub_and_api(Hub::builder().device("d")).await;
    let c = ServiceClient::owner(&hub, addr).unwrap();
    let call =
        json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 5});
    let r = c
        .request("POST", &format!("/twins/d/methods?{V}"), &[], Some(&call))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("iothub-errorcode"), Some("DeviceNotOnline"));
    let inner: Value = serde_json::from_str(r.json()["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 404103);

    let (mut dev, _) = RawClient::connect_as(&hub, &device("d"), false, 60)
        .await
        .unwrap();
    dev.subscribe(1, &["$iothub/methods/POST/#"]).await.unwrap();
    let device_side = async {
        let req = dev.next_publish(T).await.expect("the method request");
        let (_, rid) = req.topic.split_once("/?$rid=").unwrap();
        let topic = format!("$iothub/methods/res/201/?$rid={rid}");
        dev.publish(&topic, QoS::AtMostOnce, 0, br#"{"rebooting":true}"#)
            .await
            .unwrap();
        dev
    };
    let path = format!("/twins/d/methods?{V}");
    let (r, mut dev) = tokio::join!(c.request("POST", &path, &[], Some(&call)), device_side);
    let r = r.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": 201, "payload": {"rebooting": true}})
    );

    // Unanswered: 504101 after the response timeout (5 s, the least IoT Hub allows).
    let r = c
        .request("POST", &format!("/twins/d/methods?{V}"), &[], Some(&call))
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("iothub-errorcode"), Some("GatewayTimeout"));
    let _ = dev.next_publish(T).await;

    // Limits and shapes are checked.
    for bad in [
        json!({"payload": 1}),
        json!({"methodName": "x", "responseTimeoutInSeconds": 1}),
    ] {
        let r = c
            .request("POST", &format!("/twins/d/methods?{V}"), &[], Some(&bad))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{bad}");
    }
    api.shutdown().await;
}

#[tokio::test]
async fn policies_rights_and_tokens_are_checked_as_iot_hub_does() {
    let reader_key = fakehub::sas::generate_key();
    let b = Hub::builder().device("d").policy_with_rights(
        "registryRead",
        SymmetricKeys::primary(reader_key.clone()),
        Rights {
            registry_read: true,
            ..Default::default()
        },
    );
    let (hub, api, addr) = hub_and_api(b).await;
    let mut c = ServiceClient::anonymous(&hub, addr).unwrap();
    let r = c
        .request("GET", &format!("/devices/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "no Authorization header");
    assert_eq!(error_name(&r), "IotHubUnauthorizedAccess");

    c.authorization = Some(
        testkit::service_token("myhub.azure-devices.net", "registryRead", &reader_key).unwrap(),
    );
    let r = c
        .request("GET", &format!("/devices/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "RegistryRead reads");
    let r = c
        .request("DELETE", &format!("/devices/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "but does not write");
    let r = c
        .request("GET", &format!("/twins/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "nor reach twins (ServiceConnect)");

    // Python's token: `sr` with the port, `sig` with a raw `/`.
    let owner = hub
        .registry()
        .policy("iothubowner")
        .unwrap()
        .keys
        .primary_key;
    let python_like = loop {
        let t =
            testkit::service_token("myhub.azure-devices.net:443", "iothubowner", &owner).unwrap();
        let sig = t
            .split("sig=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned();
        if sig.contains("%2F") {
            break t.replace(&sig, &sig.replace("%2F", "/"));
        }
        tokio::time::sleep(Duration::from_millis(1001)).await;
    };
    c.authorization = Some(python_like);
    let r = c
        .request("GET", &format!("/twins/d?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());

    // Another hub's name, a wrong key, a missing api-version.
    for (host, key) in [
        ("otherhub.azure-devices.net", owner.clone()),
        ("myhub.azure-devices.net", reader_key.clone()),
    ] {
        c.authorization = Some(testkit::service_token(host, "iothubowner", &key).unwrap());
        let r = c
            .request("GET", &format!("/devices/d?{V}"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{host}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains(&key),
            "no key in errors"
        );
    }
    let c = ServiceClient::owner(&hub, addr).unwrap();
    let r = c.request("GET", "/devices/d", &[], None).await.unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .request(
            "PUT",
            &format!("/devices/d2?{V}"),
            &[],
            Some(&json!({"status": "paused"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["Message"].as_str().unwrap().contains("`status`"),
        "{:?}",
        r.json()
    );
    let r = c
        .request("GET", &format!("/nowhere?{V}"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    api.shutdown().await;
}
