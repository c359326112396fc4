//! The README's example, kept true.

use std::time::Duration;

use fakehub::testkit::{device, RawClient};

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
