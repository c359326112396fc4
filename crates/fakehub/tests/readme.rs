//! The README's examples, kept true.

use std::time::Duration;

use fakehub::testkit::{device, RawClient};
use fakehub::CloudMessage;
use serde_json::json;

#[tokio::test]
async fn the_hub_drops_an_expired_token_at_65_minutes() -> Result<(), Box<dyn std::error::Error>> {
    let hub = fakehub::Hub::builder()
        .device("sensor-1")
        .build()?
        .start()
        .await?;
    let (_client, _connack) = RawClient::connect_as(&hub, &device("sensor-1"), false, 60).await?;
    hub.clock().advance(Duration::from_secs(66 * 60)).await;
    let codes: Vec<_> = hub.records().iter().map(|r| r.code()).collect();
    assert_eq!(codes, [None, Some(401003), Some(404104)]);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_device_gets_a_c2d_message_and_a_method_call() -> Result<(), Box<dyn std::error::Error>> {
    let hub = fakehub::Hub::builder()
        .device("sensor-1")
        .build()?
        .start()
        .await?;
    let sensor = device("sensor-1");
    let (mut client, _) = RawClient::connect_as(&hub, &sensor, false, 60).await?;
    client
        .subscribe(
            1,
            &[
                "devices/sensor-1/messages/devicebound/#",
                "$iothub/methods/POST/#",
            ],
        )
        .await?;
    hub.send_c2d(
        "sensor-1",
        CloudMessage::new("on")
            .message_id("cmd-1")
            .property("led", "1"),
    )
    .await?;
    let c2d = client
        .next_publish(Duration::from_secs(5))
        .await
        .ok_or("no C2D")?;
    assert!(c2d
        .topic
        .starts_with("devices/sensor-1/messages/devicebound/%24.mid=cmd-1&"));
    hub.clock().set_speed(100.0);
    let call = hub.invoke_method(&sensor, "reboot", json!({}), Duration::from_secs(30));
    assert_eq!(call.await.unwrap_err().code(), Some(504101));
    hub.shutdown().await?;
    Ok(())
}
