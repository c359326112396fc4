use super::*;
use crate::events::EventLog;

fn sessions() -> Sessions {
    let clock = VirtualClock::new();
    Sessions::new(EventLog::new(clock.clone()), clock)
}

fn c2d(i: usize) -> C2dMessage {
    C2dMessage {
        message_id: format!("m-{i}"),
        topic: format!("devices/d1/messages/devicebound/%24.mid=m-{i}"),
        payload: Bytes::from(vec![b'x'; 64 * 1024]),
    }
}

fn c2d_filter() -> Vec<(String, SubscriptionKind, u8)> {
    vec![(
        "devices/d1/messages/devicebound/#".into(),
        SubscriptionKind::CloudToDevice,
        1,
    )]
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Box<Outgoing>>) -> Vec<Outgoing> {
    let mut out = Vec::new();
    while let Ok(o) = rx.try_recv() {
        out.push(*o);
    }
    out
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscriptions_and_resends_what_was_not_acknowledged() {
    let s = sessions();
    let a = s.attach("d1", 1, false).await;
    assert!(!a.session_present, "nothing to resume the first time");
    assert_eq!(s.subscribe("d1", &c2d_filter()), vec![1]);
    let mut rx = a.outgoing;
    s.queue_c2d("d1", c2d(0), 1).ok();
    s.queue_c2d("d1", c2d(1), 1).ok();
    let sent = drain(&mut rx);
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|o| o.qos == 1 && !o.dup));
    assert_eq!(s.puback("d1", sent[0].pkid).as_deref(), Some("m-0"));
    assert_eq!(s.puback("d1", sent[0].pkid), None, "once");
    s.detach("d1", 1);
    assert!(!s.reachable("d1", SubscriptionKind::CloudToDevice));

    // Back with CleanSession=0: the session, its subscription and the unacknowledged message.
    let b = s.attach("d1", 2, false).await;
    assert!(b.session_present);
    assert_eq!(b.resend.len(), 1);
    assert_eq!(
        (
            b.resend[0].pkid,
            b.resend[0].dup,
            b.resend[0].topic.as_str()
        ),
        (sent[1].pkid, true, sent[1].topic.as_str())
    );
    assert!(s.reachable("d1", SubscriptionKind::CloudToDevice));
    s.detach("d1", 2);

    // Back with CleanSession=1: nothing of the session, and the message waits in the queue again.
    let c = s.attach("d1", 3, true).await;
    assert!(!c.session_present);
    assert!(c.resend.is_empty());
    assert!(!s.reachable("d1", SubscriptionKind::CloudToDevice));
    assert_eq!(s.c2d_depth("d1"), 1);
    let mut rx = c.outgoing;
    s.subscribe("d1", &c2d_filter());
    let again = drain(&mut rx);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].topic, sent[1].topic);
    assert!(!again[0].dup, "a new delivery, not a resend");
}

/// A full queue (50 messages of 64 KiB) waits for an offline device, arrives complete and in
/// order, and what was not acknowledged comes again after the next reconnect; the 51st is refused.
#[tokio::test]
async fn a_full_c2d_queue_survives_two_reconnects_in_order() {
    let s = sessions();
    let a = s.attach("d1", 1, false).await;
    s.subscribe("d1", &c2d_filter());
    drop(a);
    s.detach("d1", 1);
    for i in 0..MAX_QUEUE_DEPTH {
        assert_eq!(s.queue_c2d("d1", c2d(i), 1), Ok(i + 1));
    }
    assert_eq!(
        s.queue_c2d("d1", c2d(99), 1),
        Err(QueueRefusal::Full),
        "403004 past 50"
    );
    let b = s.attach("d1", 2, false).await;
    let mut rx = b.outgoing;
    // Subscribed already (the session was kept): everything goes out once the device is back.
    s.subscribe("d1", &c2d_filter());
    let got = drain(&mut rx);
    let topics: Vec<&str> = got.iter().map(|o| o.topic.as_str()).collect();
    let expected: Vec<String> = (0..MAX_QUEUE_DEPTH).map(|i| c2d(i).topic).collect();
    assert_eq!(topics, expected);
    for o in &got[..20] {
        assert!(s.puback("d1", o.pkid).is_some());
    }
    s.detach("d1", 2);
    let c = s.attach("d1", 3, false).await;
    let resent: Vec<&str> = c.resend.iter().map(|o| o.topic.as_str()).collect();
    assert_eq!(resent, expected[20..]);
    assert!(c.resend.iter().all(|o| o.dup));
}

#[tokio::test]
async fn a_new_connection_takes_over_and_waits_for_the_old_one() {
    let s = std::sync::Arc::new(sessions());
    let old = s.attach("d1", 1, false).await;
    let s2 = s.clone();
    let newer = tokio::spawn(async move { s2.attach("d1", 2, false).await.session_present });
    let request = tokio::time::timeout(Duration::from_secs(5), old.close.requested())
        .await
        .ok();
    assert_eq!(request.map(|r| r.cause), Some(CloseCause::Takeover));
    assert!(
        !newer.is_finished(),
        "the new one waits until the old one is gone"
    );
    s.detach("d1", 1);
    drop(old.gone);
    let present = tokio::time::timeout(Duration::from_secs(5), newer).await;
    assert!(matches!(present, Ok(Ok(true))), "{present:?}");
    assert_eq!(s.live_clients(), vec!["d1".to_owned()]);
}

#[tokio::test]
async fn qos0_messages_need_a_live_subscribed_session() {
    let s = sessions();
    let topic = || "$iothub/methods/POST/reboot/?$rid=1".to_owned();
    assert!(!s.send("d1", SubscriptionKind::Methods, topic(), Bytes::new()));
    let a = s.attach("d1", 1, false).await;
    assert!(!s.send("d1", SubscriptionKind::Methods, topic(), Bytes::new()));
    s.subscribe(
        "d1",
        &[(
            "$iothub/methods/POST/#".into(),
            SubscriptionKind::Methods,
            1,
        )],
    );
    assert!(s.send("d1", SubscriptionKind::Methods, topic(), Bytes::new()));
    let mut rx = a.outgoing;
    let got = drain(&mut rx);
    assert_eq!(
        (got.len(), got[0].qos),
        (1, 0),
        "IoT Hub sends $iothub at QoS 0"
    );
    assert_eq!(s.distinct_filters_with("d1", &["x".into()]), 2);
}
