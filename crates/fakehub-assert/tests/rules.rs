//! Rules judged on logs made by raw clients (packet by packet, in memory, on the paused runtime of
//! a simulated run): what each rule counts, and where the line between pass, fail and "cannot
//! judge" lies.

use std::time::Duration;

use fakehub::faults::{DropPuback, Fault, FaultKind, Selector};
use fakehub::testkit::{device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{Hub, HubHandle};
use fakehub_assert::{no_message_loss, recovers, Log, LossRule};

const SEC: Duration = Duration::from_secs(1);

async fn hub(devices: &[&str]) -> HubHandle {
    let mut b = Hub::builder().seed(1);
    for d in devices {
        b = b.device(*d);
    }
    b.build().unwrap().start().await.unwrap()
}

fn telemetry(device: &str, n: u32) -> String {
    format!("devices/{device}/messages/events/%24.mid=m-{n}&seq={n}")
}

async fn wait_pubacks(c: &mut RawClient, n: usize) {
    for _ in 0..n {
        let got = c
            .recv_until(10 * SEC, |p| matches!(p, Packet::PubAck(_)))
            .await;
        assert!(got.is_some(), "a PUBACK");
    }
}

/// Three devices send five QoS 1 messages whose PUBACKs the hub withholds; their connections are
/// reset; each resends what was not acknowledged its own way: the Node SDK's way (its offline queue,
/// in another order, with new packet ids and no DUP), paho's (DUP, same packet ids, in order), and a
/// device that forgets one message.
#[tokio::test(start_paused = true)]
async fn no_message_loss_counts_loss_duplicates_and_reordering_apart() {
    let names = ["node", "paho", "lossy"];
    let hub = hub(&names).await;
    let withhold = hub.inject(Fault::new(FaultKind::DropPuback(DropPuback::default())));
    let mut first = Vec::new();
    for d in names {
        let (mut c, ack) = RawClient::connect_memory_as(&hub, &device(d), false, 60)
            .await
            .unwrap();
        assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
        for n in 1..=5u16 {
            c.publish(&telemetry(d, n.into()), QoS::AtLeastOnce, n, b"{}")
                .await
                .unwrap();
        }
        first.push(c);
    }
    hub.clock().sleep(SEC).await;
    withhold.end();
    hub.inject(Fault::new(FaultKind::Reset(Default::default())).devices(Selector::All));
    for mut c in first {
        assert!(matches!(c.recv(10 * SEC).await, Received::Reset));
    }
    hub.clock().sleep(SEC).await;

    let resend = |d: &'static str, order: Vec<u16>, dup: bool| {
        let hub = &hub;
        async move {
            let (mut c, _) = RawClient::connect_memory_as(hub, &device(d), false, 60)
                .await
                .unwrap();
            let n = order.len();
            for (i, m) in order.into_iter().enumerate() {
                let mut p = rumqttc::mqttbytes::v4::Publish::new(
                    telemetry(d, m.into()),
                    QoS::AtLeastOnce,
                    b"{}".to_vec(),
                );
                // paho: the same packet id, DUP; Node: a new packet id for each.
                p.pkid = if dup {
                    m
                } else {
                    100 + u16::try_from(i).unwrap()
                };
                p.dup = dup;
                c.send(&Packet::Publish(p)).await.unwrap();
            }
            wait_pubacks(&mut c, n).await;
            c
        }
    };
    let _node = resend("node", vec![5, 4, 3, 2, 1], false).await;
    let _paho = resend("paho", vec![1, 2, 3, 4, 5], true).await;
    let _lossy = resend("lossy", vec![1, 2, 4, 5], true).await;
    let log = Log::of(&hub);

    let node = no_message_loss(&log, "node", LossRule::default());
    println!("{node}");
    assert!(node.passed, "reordering alone is not a loss: {node}");
    assert!(
        node.summary
            .contains("5 messages, 0 lost, 5 duplicated, 4 reordered"),
        "{node}"
    );
    let ordered = no_message_loss(
        &log,
        "node",
        LossRule {
            ordered: true,
            ..Default::default()
        },
    );
    assert!(ordered.judged && !ordered.passed, "{ordered}");
    assert!(ordered.summary.contains("out of order"), "{ordered}");
    let strict = no_message_loss(
        &log,
        "node",
        LossRule {
            max_duplicates: Some(2),
            ..Default::default()
        },
    );
    assert!(strict.judged && !strict.passed, "{strict}");
    assert!(
        strict.summary.contains("more than the 2 duplicates"),
        "{strict}"
    );

    let paho = no_message_loss(
        &log,
        "paho",
        LossRule {
            ordered: true,
            ..Default::default()
        },
    );
    assert!(paho.passed, "{paho}");
    assert!(paho.summary.contains("0 lost, 5 duplicated, 0 reordered"));

    let lossy = no_message_loss(&log, "lossy", LossRule::default());
    assert!(lossy.judged && !lossy.passed, "{lossy}");
    assert!(lossy.summary.contains(r#"lost: ["m-3"]"#), "{lossy}");
    assert!(
        !lossy.excerpt.is_empty(),
        "the failure shows the events around it"
    );

    // A device that sent no QoS 1 telemetry cannot be judged.
    let nothing = no_message_loss(&log, "nobody", LossRule::default());
    assert!(!nothing.judged, "{nothing}");
    hub.shutdown().await.unwrap();
}

/// Connect and exchange a PINGREQ/PINGRESP.
async fn connect_and_ping(hub: &HubHandle, who: &fakehub::IdentityRef) -> RawClient {
    let (mut c, _) = RawClient::connect_memory_as(hub, who, false, 60)
        .await
        .unwrap();
    c.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        c.recv(5 * SEC).await,
        Received::Packet(Packet::PingResp)
    ));
    c
}

/// A connection accepted (CONNACK 0) but closed before the device could exchange a single packet
/// is not a recovery: recovery is timed to the first connection the hub answered on.
#[tokio::test(start_paused = true)]
async fn recovery_is_timed_to_a_connection_that_exchanged_packets() {
    let hub = hub(&["d0"]).await;
    let d0 = device("d0");
    let reset = || {
        hub.inject(Fault::new(FaultKind::Reset(Default::default())).devices(Selector::All));
    };
    let mut c = connect_and_ping(&hub, &d0).await;
    hub.clock().sleep(10 * SEC).await;
    reset();
    assert!(matches!(c.recv(5 * SEC).await, Received::Reset));
    // Back after 1 s, CONNACK 0 — and reset again before anything was exchanged.
    hub.clock().sleep(SEC).await;
    let (mut c, ack) = RawClient::connect_memory_as(&hub, &d0, false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
    reset();
    assert!(matches!(c.recv(5 * SEC).await, Received::Reset));
    // Really back 100 s after the first drop.
    hub.clock().sleep(99 * SEC).await;
    let _c = connect_and_ping(&hub, &d0).await;
    // (Within its keep-alive window: the hub would close a silent client after 90 s.)
    hub.clock().sleep(60 * SEC).await;
    let log = Log::of(&hub);

    let v = recovers(&log, "d0", 60 * SEC);
    println!("{v}");
    assert!(v.judged && !v.passed, "{v}");
    assert!(
        v.summary
            .contains("followed by a working connection only 10"),
        "timed to the connection that answered (about 100 s), not the 1 s CONNACK: {v}"
    );
    let v = recovers(&log, "d0", 3 * 60 * SEC);
    assert!(v.passed, "{v}");
    hub.shutdown().await.unwrap();
}

/// A device the hub never let in has nothing to recover from: `recovers` cannot judge it (and
/// `connected` fails it), rather than passing a device that never worked.
#[tokio::test(start_paused = true)]
async fn recovery_of_a_device_that_never_connected_cannot_be_judged() {
    let hub = hub(&["d0"]).await;
    let d0 = device("d0");
    hub.inject(Fault::new(FaultKind::Disable(Default::default())).devices(Selector::All));
    for _ in 0..3 {
        let (_c, ack) = RawClient::connect_memory_as(&hub, &d0, false, 60)
            .await
            .unwrap();
        assert_ne!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
        hub.clock().sleep(10 * SEC).await;
    }
    let log = Log::of(&hub);
    let v = recovers(&log, "d0", 60 * SEC);
    assert!(!v.judged && !v.passed, "{v}");
    assert!(v.summary.contains("never connected"), "{v}");
    let v = fakehub_assert::connected(&log, "d0");
    assert!(v.judged && !v.passed, "{v}");
    hub.shutdown().await.unwrap();
}
