//! Fleet-scale faults: a mass drop of 1,000 devices with an outage, and connection throttling.
//! Bounded: a fixed number of loopback connections, every wait with a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fakehub::events::series;
use fakehub::faults::{Fault, FaultKind, OutageMode};
use fakehub::testkit::{device, RawClient, Received};
use fakehub::{EventKind, Hub, HubHandle};
use rumqttc::mqttbytes::v4 as mq;
use tokio::sync::Semaphore;

async fn hub_of(n: usize) -> HubHandle {
    let mut b = Hub::builder();
    for i in 0..n {
        b = b.device(format!("d{i}"));
    }
    b.build().unwrap().start().await.unwrap()
}

/// Connect `ids` concurrently (at most 64 handshakes at a time), over TCP or in memory; returns
/// the clients and CONNACK codes.
async fn connect_all(
    hub: &Arc<HubHandle>,
    ids: Vec<String>,
    memory: bool,
) -> Vec<(RawClient, mq::ConnAck)> {
    let gate = Arc::new(Semaphore::new(64));
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let hub = hub.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let who = device(&id);
                if memory {
                    RawClient::connect_memory_as(&hub, &who, true, 1177)
                        .await
                        .unwrap()
                } else {
                    RawClient::connect_as(&hub, &who, true, 1177).await.unwrap()
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_drop_of_1000_devices_dips_the_count_and_an_outage_logs_500001_per_attempt() {
    let hub = Arc::new(hub_of(1000).await);
    let ids: Vec<String> = (0..1000).map(|i| format!("d{i}")).collect();
    let clients = connect_all(&hub, ids.clone(), false).await;
    assert!(clients
        .iter()
        .all(|(_, a)| a.code == mq::ConnectReturnCode::Success));
    assert_eq!(hub.connected_count(), 1000);

    // The hub has a transient fault: new connections refused for 10 minutes, everyone dropped.
    hub.inject(
        Fault::new(FaultKind::Outage(fakehub::faults::Outage {
            mode: OutageMode::Connack3,
        }))
        .lasting(Duration::from_secs(600)),
    );
    let dropped_at = hub.clock().now();
    let t0 = Instant::now();
    hub.inject(Fault::new(FaultKind::MassDrop(fakehub::faults::MassDrop {
        rst: true,
    })));
    let mut resets = 0;
    for (mut c, _) in clients {
        if matches!(
            c.recv(Duration::from_secs(10)).await,
            Received::Reset | Received::Closed
        ) {
            resets += 1;
        }
    }
    let wall = t0.elapsed();
    assert_eq!(resets, 1000, "every device saw its connection end");
    eprintln!("mass drop of 1000 devices: all closed after {wall:?} of wall time");

    // 100 devices try to come back during the outage: each attempt is refused and logged.
    let retry: Vec<String> = ids[..100].to_vec();
    let refused = connect_all(&hub, retry, false).await;
    assert!(refused
        .iter()
        .all(|(_, a)| a.code == mq::ConnectReturnCode::ServiceUnavailable));
    let records = hub.records();
    let count = |code| records.iter().filter(|r| r.code() == Some(code)).count();
    assert_eq!(count(404104), 1000, "a 404104 per dropped device");
    assert_eq!(count(500001), 100, "a 500001 per refused attempt");

    // The connected-devices series shows the dip to zero.
    let events = hub.events().snapshot();
    let s = series::connected_device_count(events.iter().map(|e| e.as_ref()));
    assert_eq!(s.iter().map(|p| p.count).max(), Some(1000));
    assert_eq!(
        series::minimum_between(&s, dropped_at, hub.clock().now()),
        Some(0)
    );

    // After the outage the fleet comes back.
    hub.clock().advance(Duration::from_secs(601)).await;
    let back = connect_all(&hub, ids[..10].to_vec(), false).await;
    assert!(back
        .iter()
        .all(|(_, a)| a.code == mq::ConnectReturnCode::Success));
}

/// On the paused runtime of a simulated run, in memory: every device asks at the same virtual
/// instant, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn throttling_holds_new_connections_to_the_limit() {
    let hub = Arc::new(hub_of(250).await);
    hub.inject(Fault::new(FaultKind::Throttle(fakehub::faults::Throttle {
        per_second: 100,
        shaping: Duration::from_secs(10),
    })));
    let ids: Vec<String> = (0..250).map(|i| format!("d{i}")).collect();
    let clients = connect_all(&hub, ids, true).await;
    assert!(clients
        .iter()
        .all(|(_, a)| a.code == mq::ConnectReturnCode::Success));
    // The admitted rate, from the CONNACK stamps (virtual elapsed time).
    let mut at: Vec<Duration> = hub
        .events()
        .snapshot()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Connack { code: 0, .. }))
        .map(|e| e.elapsed)
        .collect();
    at.sort();
    let span = (*at.last().unwrap() - at[0]).as_secs_f64();
    let rate = (at.len() - 1) as f64 / span;
    assert!(
        (90.0..=110.0).contains(&rate),
        "{rate:.1} connections/s admitted, limit 100"
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_past_the_backlog_closes_with_429002() {
    let hub = Arc::new(hub_of(20).await);
    hub.inject(Fault::new(FaultKind::Throttle(fakehub::faults::Throttle {
        per_second: 10,
        shaping: Duration::from_millis(500),
    })));
    let ids: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for id in ids {
        let hub = hub.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            RawClient::connect_memory_as(&hub, &device(&id), true, 60)
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    // 10/s with half a second of shaping admits about 6 at once; the rest are closed unanswered.
    assert!((4..=8).contains(&ok), "{ok} admitted");
    // Each refused device gave up and closed; the hub logs 429002 as each close arrives.
    let mut stream = hub.event_stream();
    let mut closed = 0;
    stream
        .wait_for(Duration::from_secs(10), |e| {
            closed += usize::from(matches!(
                e.kind,
                EventKind::Closed {
                    result: Some(fakehub::ResultCode::ThrottleBacklogLimitExceeded),
                    ..
                }
            ));
            closed == 20 - ok
        })
        .await
        .expect("a close per throttled device");
    let throttled = hub
        .records()
        .iter()
        .filter(|r| r.code() == Some(429002))
        .count();
    assert_eq!(
        throttled,
        20 - ok,
        "a 429002 per connection closed by the throttle"
    );
}
