//! Benchmark: how long the time-warp takes for the 65-minute token-expiry scenario and for 24 hours
//! of the well-behaved in-process sample device (telemetry every minute, renewal every 55 minutes).
//! Compared, in the same run, with the same 65 minutes driven by speed instead of jumps (the clock
//! running 1000× faster, as a libfaketime-style speed-up would), and with real time.
//!
//! Run: `cargo bench -p sample-device --bench time_warp`. Goals: 65 min ≤ 5 s, 24 h ≤ 30 s.

use std::time::{Duration, Instant};

use fakehub::{EventKind, HubHandle};
use sample_device::{Bug, DeviceOptions, InProcess};

async fn with_device(bugs: &[Bug]) -> (HubHandle, InProcess) {
    let hub = fakehub::testkit::start_hub(&["sensor-1"]).await.unwrap();
    let opts = DeviceOptions {
        bugs: bugs.iter().copied().collect(),
        ..Default::default()
    };
    let mut device = InProcess::spawn(&hub, "sensor-1", opts).unwrap();
    assert!(device.connected(Duration::from_secs(5)).await);
    (hub, device)
}

fn reconnected_after_drop(hub: &HubHandle) -> bool {
    let events = hub.events().snapshot();
    let connacks = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Connack { code: 0, .. }))
        .count();
    connacks >= 2 && hub.records().iter().any(|r| r.code() == Some(401003))
}

async fn scenario_65_jumps() -> Duration {
    let (hub, device) = with_device(&[Bug::NoTokenRenewal]).await;
    let t0 = Instant::now();
    hub.clock().advance(Duration::from_secs(66 * 60)).await;
    let took = t0.elapsed();
    assert!(
        reconnected_after_drop(&hub),
        "the 65-minute drop and the reconnect happened"
    );
    device.stop().await;
    hub.shutdown().await.unwrap();
    took
}

async fn scenario_65_speed() -> Duration {
    let (hub, device) = with_device(&[Bug::NoTokenRenewal]).await;
    let t0 = Instant::now();
    let start = hub.clock().now();
    hub.clock().set_speed(1000.0);
    while hub.clock().now().duration_since(start).unwrap() < Duration::from_secs(66 * 60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed();
    device.stop().await;
    hub.shutdown().await.unwrap();
    took
}

async fn day() -> Duration {
    let (hub, device) = with_device(&[]).await;
    let t0 = Instant::now();
    hub.clock().advance(Duration::from_secs(24 * 3600)).await;
    let took = t0.elapsed();
    assert!(hub.records().iter().all(|r| r.level == "Information"));
    device.stop().await;
    hub.shutdown().await.unwrap();
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut jumps = Vec::new();
        let mut speed = Vec::new();
        for _ in 0..5 {
            jumps.push(scenario_65_jumps().await);
            speed.push(scenario_65_speed().await);
        }
        let days: Vec<Duration> = futures_days().await;
        let (j, s, d) = (median(jumps), median(speed), median(days));
        let sixty_five = Duration::from_secs(66 * 60);
        println!("time-warp (medians)");
        println!(
            "  65-minute token expiry, jumps:        {j:?}  ({:.0}× real time; goal ≤ 5 s: {})",
            sixty_five.as_secs_f64() / j.as_secs_f64(),
            if j <= Duration::from_secs(5) {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "  peer: same 66 minutes at speed 1000:   {s:?}  (ratio jumps/speed {:.3})",
            j.as_secs_f64() / s.as_secs_f64()
        );
        println!(
            "  24 hours, well-behaved device, jumps:  {d:?}  ({:.0}× real time; goal ≤ 30 s: {})",
            86400.0 / d.as_secs_f64(),
            if d <= Duration::from_secs(30) {
                "met"
            } else {
                "NOT met"
            }
        );
    });
}

async fn futures_days() -> Vec<Duration> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(day().await);
    }
    v
}
