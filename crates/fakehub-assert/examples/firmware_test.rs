//! How a firmware team tests its device code with fakehub, in-process, in seconds:
//! start a hub, run the device on the hub's clock, inject faults, move time, assert.
//!
//! Run: `cargo run -p fakehub-assert --example firmware_test`. Here the sample device stands in for
//! your firmware's connectivity layer: anything that takes a connection string, a CA and a clock.

use std::time::Duration;

use fakehub::faults::{Fault, FaultKind, OutageMode};
use fakehub::Hub;
use fakehub_assert::{
    backoff, no_message_loss, recovers, renews_token, BackoffRule, Log, LossRule,
};
use sample_device::{DeviceOptions, InProcess};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A hub that drops expired tokens 5 minutes after `se` (the "65-minute" pattern).
    let hub = Hub::builder()
        .device("sensor-1")
        .token_grace(Duration::from_secs(300))
        .build()?
        .start()
        .await?;

    // 2. The device under test, on the hub's clock (it sees every jump at its own instant). Here the
    //    bundled sample device; your firmware's connectivity layer takes the same three inputs:
    //    hub.connection_string(id), hub.ca_pem() and DeviceClock::Shared(hub.clock().clone()).
    let mut device = InProcess::spawn(&hub, "sensor-1", DeviceOptions::default())?;
    device.connected(Duration::from_secs(5)).await;

    // 3. Field failures, on demand: a transient hub fault drops the device and refuses it for
    //    10 minutes; then two hours pass.
    hub.inject(
        Fault::new(FaultKind::Outage(fakehub::faults::Outage {
            mode: OutageMode::Connack3,
        }))
        .lasting(Duration::from_secs(600)),
    );
    hub.inject(Fault::new(FaultKind::Reset(Default::default())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.clock().advance(Duration::from_secs(2 * 3600)).await;
    device.stop().await;

    // 4. The verdicts, from what the hub saw.
    let log = Log::of(&hub);
    let verdicts = [
        recovers(&log, "sensor-1", Duration::from_secs(11 * 60)),
        backoff(
            &log,
            "sensor-1",
            BackoffRule {
                cap: Duration::from_secs(60),
                ..Default::default()
            },
        ),
        renews_token(&log, "sensor-1"),
        no_message_loss(&log, "sensor-1", LossRule::default()),
    ];
    for v in &verdicts {
        println!("{v}");
    }
    hub.shutdown().await?;
    if verdicts.iter().all(|v| v.passed) {
        Ok(())
    } else {
        Err("an assertion failed".into())
    }
}
