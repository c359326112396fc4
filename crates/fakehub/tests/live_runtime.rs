//! A hub with a runtime for live connections (`HubBuilder::live_runtime`, as `fakehub serve` runs):
//! connections are accepted, handshaken and authenticated on the hub's runtime, then served on the
//! live thread — handed over in batches when they come in a storm — and the hub's shutdown still
//! closes and records every one.

use std::sync::Arc;
use std::time::Duration;

use fakehub::testkit::{device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{CloseCause, EventKind, Hub, HubHandle, LiveThread};

const T: Duration = Duration::from_secs(10);
const DEVICES: usize = 40;
const MESSAGES: u16 = 20;

/// Publish `pkids` at QoS 1 and wait for each PUBACK.
async fn publish_acked(c: &mut RawClient, id: &str, pkids: std::ops::RangeInclusive<u16>) {
    let topic = format!("devices/{id}/messages/events/");
    for pkid in pkids {
        c.publish(&topic, QoS::AtLeastOnce, pkid, b"{}")
            .await
            .unwrap();
        match c.recv(T).await {
            Received::Packet(Packet::PubAck(a)) => assert_eq!(a.pkid, pkid, "{id}"),
            other => panic!("{id}: expected PUBACK {pkid}, got {other:?}"),
        }
    }
}

/// The devices connect at once (a storm: handed over in batches) and publish once each while the
/// hub's runtime runs; then the hub's runtime is not driven at all, and the devices go on
/// publishing: only connections served on the live thread can be acknowledged now.
#[test]
fn live_connections_are_served_on_the_live_thread_and_closed_at_shutdown() {
    let accepting = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let live = LiveThread::start().unwrap();
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("d{i}")).collect();
    let hub: Arc<HubHandle> = Arc::new(accepting.block_on(async {
        let mut b = Hub::builder()
            .host_name("myhub.azure-devices.net")
            .live_runtime(live.runtime());
        for id in &ids {
            b = b.device(id.clone());
        }
        b.build().unwrap().start().await.unwrap()
    }));

    let (first_acked, all_first_acked) = tokio::sync::oneshot::channel::<()>();
    let (go, go_on) = tokio::sync::oneshot::channel::<()>();
    let (done, all_done) = std::sync::mpsc::channel::<Vec<RawClient>>();
    let devices = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut connects = tokio::task::JoinSet::new();
                for id in ids {
                    let hub = hub.clone();
                    connects.spawn(async move {
                        let (mut c, ack) = RawClient::connect_as(&hub, &device(&id), true, 60)
                            .await
                            .unwrap();
                        assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
                        publish_acked(&mut c, &id, 1..=1).await;
                        (id, c)
                    });
                }
                let clients = connects.join_all().await;
                drop(hub);
                let _ = first_acked.send(());
                go_on.await.unwrap();
                let mut rest = tokio::task::JoinSet::new();
                for (id, mut c) in clients {
                    rest.spawn(async move {
                        publish_acked(&mut c, &id, 2..=MESSAGES).await;
                        c
                    });
                }
                let _ = done.send(rest.join_all().await);
            });
        })
    };

    accepting.block_on(async { all_first_acked.await.unwrap() });
    // The hub's runtime is idle from here on: nothing drives it until the devices are done.
    go.send(()).unwrap();
    let clients = all_done
        .recv_timeout(Duration::from_secs(30))
        .expect("every PUBACK while the hub's runtime was not driven");
    devices.join().unwrap();

    let hub = Arc::into_inner(hub).expect("the devices' thread let the hub go");
    let events = hub.events().snapshot();
    accepting.block_on(async { hub.shutdown().await.unwrap() });
    drop(clients);

    let acks = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Puback {
                    dir: fakehub::events::Direction::Out,
                    ..
                }
            )
        })
        .count();
    assert_eq!(acks, DEVICES * usize::from(MESSAGES));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Closed { .. })),
        "no connection closed before the shutdown"
    );
}

/// Every connection served on the live thread is closed by the hub's shutdown, and recorded so.
#[test]
fn shutdown_closes_the_live_threads_connections() {
    let accepting = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let live = LiveThread::start().unwrap();
    accepting.block_on(async {
        let hub = Hub::builder()
            .host_name("myhub.azure-devices.net")
            .device("a")
            .device("b")
            .live_runtime(live.runtime())
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let mut clients = Vec::new();
        for id in ["a", "b"] {
            let (mut c, _) = RawClient::connect_as(&hub, &device(id), true, 60)
                .await
                .unwrap();
            publish_acked(&mut c, id, 1..=1).await;
            clients.push(c);
        }
        let log = hub.events().clone();
        hub.shutdown().await.unwrap();
        let causes: Vec<CloseCause> = log
            .snapshot()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Closed { cause, .. } => Some(*cause),
                _ => None,
            })
            .collect();
        assert_eq!(causes, [CloseCause::HubShutdown, CloseCause::HubShutdown]);
        for mut c in clients {
            assert!(matches!(
                c.recv(T).await,
                Received::Closed | Received::Reset
            ));
        }
    });
}
