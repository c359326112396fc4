//! Every fault of the catalogue, seen from the wire (what a device observes) and in the records.

use std::time::Duration;

use fakehub::faults::{ConnackMode, DropPuback, Fault, FaultKind, OutageMode, Selector};
use fakehub::testkit::{device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{CloseCause, EventKind, Hub, HubHandle};
use fakehub_protocol::IdentityRef;
use rumqttc::mqttbytes::v4 as mq;

const T: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

async fn hub(devices: &[&str]) -> HubHandle {
    let mut b = Hub::builder();
    for d in devices {
        b = b.device(*d);
    }
    b.build().unwrap().start().await.unwrap()
}

fn codes(hub: &HubHandle, dev: &str) -> Vec<(String, Option<u32>)> {
    hub.records()
        .iter()
        .filter(|r| r.properties().is_some_and(|p| p.device_id == dev))
        .map(|r| (r.operation_name.clone(), r.code()))
        .collect()
}

async fn closed_cause(hub: &HubHandle, dev: &str) -> CloseCause {
    let e = hub
        .event_stream()
        .wait_for(T, |e| {
            e.device.as_deref() == Some(dev) && matches!(e.kind, EventKind::Closed { .. })
        })
        .await
        .expect("closed");
    match e.kind {
        EventKind::Closed { cause, .. } => cause,
        _ => unreachable!(),
    }
}

fn telemetry(c: &str) -> String {
    format!("devices/{c}/messages/events/")
}

#[tokio::test]
async fn reset_is_a_tcp_reset_and_close_a_clean_eof_both_404104() {
    let hub = hub(&["a", "b", "c"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    let (mut b, _) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    let (mut c, _) = RawClient::connect_as(&hub, &device("c"), true, 60)
        .await
        .unwrap();
    hub.inject(
        Fault::new(FaultKind::Reset(Default::default())).devices(Selector::Ids(vec!["a".into()])),
    );
    assert!(matches!(a.recv(T).await, Received::Reset));
    hub.inject(
        Fault::new(FaultKind::Close(Default::default())).devices(Selector::Glob("b*".into())),
    );
    assert!(matches!(b.recv(T).await, Received::Closed));
    // The unselected device is untouched.
    c.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::PingResp)
    ));
    for d in ["a", "b"] {
        assert_eq!(closed_cause(&hub, d).await, CloseCause::Fault);
        assert_eq!(codes(&hub, d).last().unwrap().1, Some(404104));
    }
    let faults: Vec<String> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Fault {
                fault,
                action: fakehub::events::FaultAction::Started,
                ..
            } => Some(fault.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(faults, ["reset", "close"]);
    // One-shot faults end at once: nothing stays active after them.
    let ended = hub
        .events()
        .snapshot()
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Fault {
                    action: fakehub::events::FaultAction::Ended,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ended, 2);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn blackhole_is_silence_until_the_keepalive_timeout() {
    let hub = hub(&["a"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    hub.inject(Fault::new(FaultKind::Blackhole(Default::default())));
    a.send(&Packet::PingReq).await.unwrap();
    assert!(
        matches!(a.recv(SHORT).await, Received::Silence),
        "no PINGRESP from a black hole"
    );
    // 90 s of virtual idleness at 1000×.
    hub.clock().set_speed(1000.0);
    assert!(matches!(a.recv(T).await, Received::Closed));
    assert_eq!(closed_cause(&hub, "a").await, CloseCause::KeepAliveTimeout);
    assert_eq!(codes(&hub, "a").last().unwrap().1, Some(404104));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn drop_pingresp_withholds_only_pingresp() {
    let hub = hub(&["a"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    let f = hub.inject(Fault::new(FaultKind::DropPingresp(Default::default())));
    a.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(a.recv(SHORT).await, Received::Silence));
    a.publish(&telemetry("a"), QoS::AtLeastOnce, 1, b"x")
        .await
        .unwrap();
    assert!(
        matches!(a.recv(T).await, Received::Packet(Packet::PubAck(_))),
        "other packets flow"
    );
    f.end();
    a.send(&Packet::PingReq).await.unwrap();
    assert!(
        matches!(a.recv(T).await, Received::Packet(Packet::PingResp)),
        "ended: pings answered"
    );
    assert!(hub
        .events()
        .snapshot()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Withheld { packet, .. } if packet == "pingresp")));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn drop_puback_withholds_the_nth() {
    let hub = hub(&["a"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    hub.inject(Fault::new(FaultKind::DropPuback(DropPuback {
        nth: Some(2),
        ..Default::default()
    })));
    let mut acked = Vec::new();
    for pkid in 1..=3u16 {
        a.publish(&telemetry("a"), QoS::AtLeastOnce, pkid, b"x")
            .await
            .unwrap();
        if let Received::Packet(Packet::PubAck(ack)) = a.recv(SHORT).await {
            acked.push(ack.pkid);
        }
    }
    assert_eq!(acked, [1, 3], "the second PUBACK is withheld");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn delay_suback_and_latency_follow_virtual_time() {
    let hub = hub(&["a"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    hub.inject(Fault::new(FaultKind::DelaySuback(
        fakehub::faults::DelaySuback {
            delay: Duration::from_secs(30),
        },
    )));
    let sub = mq::Subscribe::new("devices/a/messages/devicebound/#", QoS::AtLeastOnce);
    a.send(&Packet::Subscribe(sub)).await.unwrap();
    assert!(
        matches!(a.recv(SHORT).await, Received::Silence),
        "30 virtual seconds at speed 1"
    );
    hub.clock().set_speed(1000.0);
    assert!(matches!(
        a.recv(T).await,
        Received::Packet(Packet::SubAck(_))
    ));
    hub.clock().set_speed(1.0);
    hub.inject(Fault::new(FaultKind::Latency(fakehub::faults::Latency {
        inbound: Duration::from_secs(2),
        outbound: Duration::from_secs(3),
    })));
    let start = hub.clock().elapsed();
    hub.clock().set_speed(100.0);
    a.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        a.recv(T).await,
        Received::Packet(Packet::PingResp)
    ));
    let took = hub.clock().elapsed() - start;
    assert!(
        took >= Duration::from_secs(5),
        "2 s in + 3 s out of virtual latency, took {took:?}"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn connack_faults_delay_withhold_and_refuse() {
    let hub = hub(&["a"]).await;
    let who = device("a");
    let f = hub.inject(Fault::new(FaultKind::Connack(ConnackMode::Refuse {
        code: 3,
        result: None,
    })));
    let (_c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::ServiceUnavailable);
    f.end();
    let f = hub.inject(Fault::new(FaultKind::Connack(ConnackMode::Withhold)));
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    let token = hub
        .sas_token(&who, hub.clock().now() + Duration::from_secs(3600))
        .unwrap();
    c.send(&Packet::Connect(fakehub::testkit::connect_packet(
        hub.host_name(),
        &who,
        &token,
        true,
        60,
    )))
    .await
    .unwrap();
    assert!(
        matches!(c.recv(SHORT).await, Received::Silence),
        "no CONNACK"
    );
    c.close().await; // the device gives up
    closed_cause(&hub, "a").await;
    f.end();
    hub.inject(Fault::new(FaultKind::Connack(ConnackMode::Delay {
        delay: Duration::from_secs(20),
    })));
    hub.clock().set_speed(100.0);
    let t0 = hub.clock().elapsed();
    let (_c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert!(hub.clock().elapsed() - t0 >= Duration::from_secs(20));
    let got: Vec<Option<u32>> = codes(&hub, "a").into_iter().map(|c| c.1).collect();
    assert_eq!(
        got,
        [Some(500001), Some(500008), None],
        "refused, timed out, then connected"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn outages_refuse_tcp_answer_connack_3_or_hang() {
    let hub = hub(&["a"]).await;
    let who = device("a");
    let f = hub.inject(Fault::new(FaultKind::Outage(fakehub::faults::Outage {
        mode: OutageMode::RefuseTcp,
    })));
    assert!(
        RawClient::connect_tls(&hub).await.is_err(),
        "TCP reset before TLS"
    );
    f.end();
    let f = hub.inject(Fault::new(FaultKind::Outage(fakehub::faults::Outage {
        mode: OutageMode::Connack3,
    })));
    for _ in 0..3 {
        let (_c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
        assert_eq!(ack.code, mq::ConnectReturnCode::ServiceUnavailable);
    }
    f.end();
    let (_c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success, "after the outage");
    let got: Vec<Option<u32>> = codes(&hub, "a").into_iter().map(|c| c.1).collect();
    assert_eq!(
        got,
        [Some(500001), Some(500001), Some(500001), None],
        "a 500001 per attempt"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_fault_with_a_duration_ends_by_itself_at_its_virtual_time() {
    let hub = hub(&["a"]).await;
    let who = device("a");
    hub.inject(
        Fault::new(FaultKind::Outage(fakehub::faults::Outage {
            mode: OutageMode::Connack3,
        }))
        .lasting(Duration::from_secs(600)),
    );
    let (_c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::ServiceUnavailable);
    hub.clock().advance(Duration::from_secs(601)).await;
    let (_c, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    let actions: Vec<(fakehub::events::FaultAction, std::time::SystemTime)> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Fault { action, .. } => Some((*action, e.time)),
            _ => None,
        })
        .collect();
    assert_eq!(actions.len(), 2);
    assert_eq!(
        actions[1].1.duration_since(actions[0].1).unwrap().as_secs(),
        600,
        "ended at start + 10 min"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn takeover_disable_rotate_key_and_clock_skew() {
    let hub = hub(&["a", "b", "c", "d"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    hub.inject(
        Fault::new(FaultKind::Takeover(Default::default()))
            .devices(Selector::Ids(vec!["a".into()])),
    );
    assert!(matches!(a.recv(T).await, Received::Closed));
    assert_eq!(codes(&hub, "a").last().unwrap().1, Some(400027));

    let (mut b, _) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    let f = hub.inject(
        Fault::new(FaultKind::Disable(Default::default())).devices(Selector::Ids(vec!["b".into()])),
    );
    assert!(matches!(b.recv(T).await, Received::Closed));
    let (_b, ack) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    assert_eq!(
        ack.code,
        mq::ConnectReturnCode::ServiceUnavailable,
        "disabled: CONNACK 3"
    );
    f.end();
    let (_b, ack) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success, "enabled again");

    // A token signed before the rotation no longer connects.
    let old = hub
        .sas_token(&device("c"), hub.clock().now() + Duration::from_secs(3600))
        .unwrap();
    hub.inject(
        Fault::new(FaultKind::RotateKey(Default::default()))
            .devices(Selector::Ids(vec!["c".into()])),
    );
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    c.send(&Packet::Connect(fakehub::testkit::connect_packet(
        hub.host_name(),
        &device("c"),
        &old,
        true,
        60,
    )))
    .await
    .unwrap();
    assert!(
        matches!(c.recv(T).await, Received::Packet(Packet::ConnAck(a)) if a.code == mq::ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(codes(&hub, "c").last().unwrap().1, Some(401003));

    // A device clock 70 minutes behind mints one-hour tokens that expired 10 minutes ago.
    hub.inject(
        Fault::new(FaultKind::ClockSkew(fakehub::faults::ClockSkew {
            behind: Duration::from_secs(70 * 60),
        }))
        .devices(Selector::Ids(vec!["d".into()])),
    );
    let (_d, ack) = RawClient::connect_as(&hub, &device("d"), true, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::NotAuthorized);
    assert_eq!(codes(&hub, "d").last().unwrap().1, Some(401003));
    hub.shutdown().await.unwrap();
}

/// A hub with device `a`, connected (a persistent session, keep-alive 60 s).
async fn hub_with_a_connected() -> (HubHandle, IdentityRef, RawClient) {
    let hub = hub(&["a"]).await;
    let who = device("a");
    let (a, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    (hub, who, a)
}

/// Publish a trigger (QoS 1) and see that no PUBACK comes for it.
async fn publish_unacked(a: &mut RawClient, topic: &str, pkid: u16, payload: &[u8]) {
    a.publish(topic, QoS::AtLeastOnce, pkid, payload)
        .await
        .unwrap();
    assert!(
        matches!(a.recv(SHORT).await, Received::Silence),
        "no PUBACK for the trigger {pkid}"
    );
}

/// How many in-band KillTcp faults have started.
fn inband_kills(hub: &HubHandle) -> usize {
    hub.events().snapshot().iter().filter(|e| matches!(&e.kind, EventKind::Fault { fault, action: fakehub::events::FaultAction::Started, .. } if fault == "inband:KillTcp")).count()
}

/// A trigger without a message id is known again by its topic and size: the same message resent is
/// acknowledged and starts nothing, one of another size is a fresh trigger.
#[tokio::test]
async fn an_inband_trigger_without_a_message_id_is_known_by_its_topic_and_size() {
    let (hub, _, mut a) = hub_with_a_connected().await;
    let trigger = "devices/a/messages/events/AzIoTHub_FaultOperationType=KillTcp&AzIoTHub_FaultOperationDelayInSecs=300";
    publish_unacked(&mut a, trigger, 1, b"x").await;
    a.publish(trigger, QoS::AtLeastOnce, 2, b"x").await.unwrap();
    assert!(
        matches!(a.recv(T).await, Received::Packet(Packet::PubAck(ack)) if ack.pkid == 2),
        "the same trigger again is acknowledged"
    );
    assert_eq!(inband_kills(&hub), 1);
    // One of another size is a fresh trigger.
    publish_unacked(&mut a, trigger, 3, b"xy").await;
    assert_eq!(inband_kills(&hub), 2);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_inband_killtcp_trigger_is_not_acked_resets_after_its_delay_and_applies_once() {
    let (hub, who, mut a) = hub_with_a_connected().await;
    let trigger = "devices/a/messages/events/%24.mid=kill-1&AzIoTHub_FaultOperationType=KillTcp&AzIoTHub_FaultOperationDelayInSecs=30&AzIoTHub_FaultOperationCloseReason=boom";
    publish_unacked(&mut a, trigger, 7, b"").await;
    hub.clock().advance(Duration::from_secs(31)).await;
    assert!(
        matches!(a.recv(T).await, Received::Reset),
        "reset after the 30 s delay"
    );
    // The device resends the unacknowledged trigger (DUP) after reconnecting: it is acked, not applied.
    let (mut a, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    let mut again = mq::Publish::new(trigger, QoS::AtLeastOnce, Vec::new());
    again.pkid = 7;
    again.dup = true;
    a.send(&Packet::Publish(again)).await.unwrap();
    assert!(matches!(
        a.recv(T).await,
        Received::Packet(Packet::PubAck(_))
    ));
    hub.clock().advance(Duration::from_secs(60)).await;
    a.send(&Packet::PingReq).await.unwrap();
    assert!(
        matches!(a.recv(T).await, Received::Packet(Packet::PingResp)),
        "still connected"
    );
    assert_eq!(inband_kills(&hub), 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn inband_throttling_closes_with_429001_and_refuses_for_its_duration() {
    let hub = hub(&["a"]).await;
    let who = device("a");
    let (mut a, _) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    let trigger = "devices/a/messages/events/%24.mid=t-1&AzIoTHub_FaultOperationType=InvokeThrottling&AzIoTHub_FaultOperationDelayInSecs=1&AzIoTHub_FaultOperationDurationInSecs=20";
    a.publish(trigger, QoS::AtLeastOnce, 1, b"").await.unwrap();
    hub.clock().advance(Duration::from_secs(2)).await;
    assert!(matches!(a.recv(T).await, Received::Closed));
    let (_a, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(
        ack.code,
        mq::ConnectReturnCode::ServiceUnavailable,
        "refused during the 20 s"
    );
    hub.clock().advance(Duration::from_secs(20)).await;
    let (_a, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    let got: Vec<Option<u32>> = codes(&hub, "a").into_iter().map(|c| c.1).collect();
    assert_eq!(got, [None, Some(429001), Some(404104), Some(429001), None]);
    hub.shutdown().await.unwrap();
}

/// `time` minus `elapsed_ms`: the virtual wall time jumped over so far when the event was stamped.
fn jumped_at(hub: &HubHandle, e: &fakehub::Event) -> Duration {
    let start = hub.events().snapshot()[0].time - hub.events().snapshot()[0].elapsed;
    e.time
        .duration_since(start)
        .unwrap_or_default()
        .saturating_sub(e.elapsed)
}

#[tokio::test(start_paused = true)]
async fn every_fault_end_is_stamped_with_agreeing_time_and_elapsed() {
    let hub = hub(&["a", "b"]).await;
    let (mut a, _) = RawClient::connect_memory_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    // An in-band throttling trigger (1 s delay, 20 s long), a catalogue fault with a duration, and
    // one ended by hand; time flows (the discrete-event runtime: no jumps).
    let trigger = "devices/a/messages/events/%24.mid=t-1&AzIoTHub_FaultOperationType=InvokeThrottling&AzIoTHub_FaultOperationDelayInSecs=1&AzIoTHub_FaultOperationDurationInSecs=20";
    a.publish(trigger, QoS::AtLeastOnce, 1, b"").await.unwrap();
    hub.inject(
        Fault::new(FaultKind::Outage(fakehub::faults::Outage {
            mode: OutageMode::Connack3,
        }))
        .devices(Selector::Ids(vec!["b".into()]))
        .lasting(Duration::from_secs(7)),
    );
    let latency = hub.inject(Fault::new(FaultKind::Latency(Default::default())));
    hub.clock().sleep(Duration::from_secs(5)).await;
    latency.end();
    hub.clock().sleep(Duration::from_secs(30)).await;
    // Then the same across a jump: the fault ends inside it, at its own instant.
    hub.inject(
        Fault::new(FaultKind::Outage(fakehub::faults::Outage {
            mode: OutageMode::Connack3,
        }))
        .devices(Selector::Ids(vec!["b".into()]))
        .lasting(Duration::from_secs(10 * 60)),
    );
    hub.clock().advance(Duration::from_secs(3600)).await;
    hub.clock().sleep(Duration::from_secs(1)).await;

    let events = hub.events().snapshot();
    let ends: Vec<&std::sync::Arc<fakehub::Event>> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Fault {
                    action: fakehub::events::FaultAction::Ended,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(ends.len(), 4, "every fault ended: {ends:#?}");
    // Before the jump every event's wall time is the start plus its elapsed time; the fault that
    // ended inside the jump carries the jump's offset up to its deadline, and nothing after it goes
    // back in time.
    let mut last = Duration::ZERO;
    for e in &events {
        let j = jumped_at(&hub, e);
        assert!(j >= last, "event {} goes back: {e:?}", e.seq);
        last = j;
    }
    for e in &ends[..3] {
        assert_eq!(jumped_at(&hub, e), Duration::ZERO, "{e:?}");
    }
    let in_jump = ends[3];
    assert_eq!(
        jumped_at(&hub, in_jump),
        Duration::from_secs(10 * 60),
        "the fault ended 10 minutes into the jump: {in_jump:?}"
    );
    hub.shutdown().await.unwrap();
}

/// `half_open`, the catalogue's newest fault (one file, one catalogue line): the hub stops reading
/// but keeps writing. The device's PINGREQs and PUBLISHes go unanswered while hub-sent packets (a
/// C2D message) still arrive; the hub's keep-alive ends it, counted as idleness (404104).
#[tokio::test(start_paused = true)]
async fn half_open_stops_reading_keeps_writing_and_the_keepalive_ends_it() {
    let hub = hub(&["a"]).await;
    let (mut a, _) = RawClient::connect_memory_as(&hub, &device("a"), false, 60)
        .await
        .unwrap();
    a.subscribe(1, &["devices/a/messages/devicebound/#"])
        .await
        .unwrap();
    hub.inject(Fault::new(FaultKind::HalfOpen(Default::default())));
    a.send(&Packet::PingReq).await.unwrap();
    a.publish(&telemetry("a"), QoS::AtLeastOnce, 7, b"x")
        .await
        .unwrap();
    assert!(
        matches!(a.recv(Duration::from_secs(10)).await, Received::Silence),
        "no PINGRESP, no PUBACK"
    );
    hub.send_c2d("a", fakehub::CloudMessage::new(b"still writing".to_vec()))
        .await
        .unwrap();
    let c2d = a.next_publish(Duration::from_secs(10)).await;
    assert!(
        c2d.is_some_and(|p| p.payload.as_ref() == b"still writing"),
        "the hub still writes"
    );
    // 1.5 × 60 s after the last packet the hub read: closed for idleness.
    assert!(matches!(
        a.recv(Duration::from_secs(120)).await,
        Received::Closed
    ));
    assert_eq!(closed_cause(&hub, "a").await, CloseCause::KeepAliveTimeout);
    assert_eq!(codes(&hub, "a").last().unwrap().1, Some(404104));
    hub.shutdown().await.unwrap();
}
