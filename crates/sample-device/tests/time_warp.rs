//! The time-warp with the in-process sample device on the hub's shared clock: token expiry at 60
//! and 65 minutes, the well-behaved device over a day, and a stale token's 401003 loop.

use std::time::{Duration, SystemTime};

use fakehub::{ConnectionRecord, EventKind, Hub, HubBuilder, HubHandle};
use sample_device::{Bug, DeviceOptions, InProcess};

const MIN: u64 = 60;

struct Run {
    hub: HubHandle,
    device: InProcess,
    start: SystemTime,
}

/// Start a hub and the sample device with `bugs`, wait for its first connect.
async fn start(builder: HubBuilder, bugs: &[Bug]) -> Run {
    let hub = builder
        .device("sensor-1")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let start = hub.clock().now();
    let opts = DeviceOptions {
        bugs: bugs.iter().copied().collect(),
        seed: 1,
        ..Default::default()
    };
    let mut device = InProcess::spawn(&hub, "sensor-1", opts).unwrap();
    assert!(
        device.connected(Duration::from_secs(5)).await,
        "the device connected"
    );
    Run { hub, device, start }
}

impl Run {
    /// The hub's view of the connections, for failure messages.
    fn story(&self) -> String {
        self.hub
            .events()
            .snapshot()
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Connack { .. }
                        | EventKind::Closed { .. }
                        | EventKind::DisconnectPacket
                )
            })
            .map(|e| {
                format!(
                    "{:>9.3} min conn {:?}: {:?}",
                    e.time
                        .duration_since(self.start)
                        .unwrap_or_default()
                        .as_secs_f64()
                        / 60.0,
                    e.conn,
                    e.kind
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
            + &format!(
                "\nlate deadline handlers: {}",
                self.hub.clock().late_handlers()
            )
    }

    async fn finish(self) -> Vec<ConnectionRecord> {
        self.device.stop().await;
        let records = self.hub.records();
        self.hub.shutdown().await.unwrap();
        records
    }

    fn minutes(&self, r: &ConnectionRecord) -> f64 {
        let t = humantime::parse_rfc3339(&r.time).unwrap();
        t.duration_since(self.start).unwrap().as_secs_f64() / 60.0
    }
}

fn codes(records: &[ConnectionRecord]) -> Vec<(String, Option<u32>)> {
    records
        .iter()
        .map(|r| (r.operation_name.clone(), r.code()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_well_behaved_device_renews_for_24_hours_without_a_401003() {
    let run = start(Hub::builder(), &[]).await;
    run.hub
        .clock()
        .advance(Duration::from_secs(24 * 60 * MIN))
        .await;
    let connects_before_stop = run
        .hub
        .records()
        .iter()
        .filter(|r| r.operation_name == "deviceConnect")
        .count();
    let story = run.story();
    let records = run.finish().await;
    assert!(
        records.iter().all(|r| r.level == "Information"),
        "only graceful records:\n{story}"
    );
    // A 60-minute token renewed 5 minutes early: a reconnect every 55 minutes.
    assert!(
        (25..=28).contains(&connects_before_stop),
        "{connects_before_stop} connects in 24 h:\n{story}"
    );
}

async fn drops_at(grace_min: u64) {
    let run = start(
        Hub::builder().token_grace(Duration::from_secs(grace_min * MIN)),
        &[Bug::NoTokenRenewal],
    )
    .await;
    run.hub
        .clock()
        .advance(Duration::from_secs(270 * MIN))
        .await;
    let records = run.hub.records();
    let mut last_connect = None;
    let mut last_drop: Option<f64> = None;
    let mut drops = 0;
    for (i, r) in records.iter().enumerate() {
        let at = run.minutes(r);
        match (r.operation_name.as_str(), r.code()) {
            ("deviceConnect", None) => {
                if let Some(dropped) = last_drop.take() {
                    assert!(
                        at - dropped < 1.0,
                        "reconnected {:.2} min after the drop",
                        at - dropped
                    );
                }
                last_connect = Some(at);
            }
            ("deviceDisconnect", Some(404104)) => last_drop = Some(at),
            ("deviceDisconnect", Some(401003)) => {
                let since = at - last_connect.expect("a connect before the drop");
                let expected = (60 + grace_min) as f64;
                assert!(
                    (since - expected).abs() <= 1.0 / 60.0,
                    "dropped {since:.4} min after connecting, expected {expected}"
                );
                assert_eq!(records[i + 1].code(), Some(404104), "401003 then 404104");
                assert_eq!(records[i + 1].time, r.time, "in the same instant");
                drops += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        drops,
        4,
        "4.5 hours: a drop every {} minutes: {:?}",
        60 + grace_min,
        codes(&records)
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_renewal_drops_at_65_minutes_with_the_default_grace() {
    drops_at(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_renewal_drops_at_60_minutes_with_grace_0() {
    drops_at(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_is_refused_on_every_retry() {
    let run = start(Hub::builder(), &[Bug::StaleToken]).await;
    run.hub.clock().advance(Duration::from_secs(90 * MIN)).await;
    let connacks: Vec<u8> = run
        .hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Connack { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    let story = run.story();
    let refused = run
        .hub
        .records()
        .iter()
        .filter(|r| r.operation_name == "deviceConnect" && r.code() == Some(401003))
        .count();
    run.finish().await;
    assert_eq!(connacks[0], 0);
    assert!(connacks.len() >= 5, "{story}");
    assert!(
        connacks[1..].iter().all(|c| *c == 5),
        "every retry refused: {connacks:?}"
    );
    assert!(
        refused >= connacks.len() - 1,
        "a 401003 record for every refusal: {refused}"
    );
}
