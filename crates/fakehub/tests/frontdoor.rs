//! The front door seen from the wire: CONNECT and auth, QoS 1, sessions, keep-alive, takeover, how
//! each connection ends and the records it leaves.

use std::time::Duration;

use fakehub::testkit::{device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{CloseCause, CloseHow, Closer, EventKind, Hub, HubHandle, WireClose};
use rumqttc::mqttbytes::v4 as mq;

const T: Duration = Duration::from_secs(5);

async fn hub_with(devices: &[&str]) -> HubHandle {
    let mut b = Hub::builder().host_name("myhub.azure-devices.net");
    for d in devices {
        b = b.device(*d);
    }
    b.build().unwrap().start().await.unwrap()
}

/// Wait until the hub logged a `closed` for this device, and return (by, how, cause).
async fn closed_of(hub: &HubHandle, dev: &str) -> (Closer, CloseHow, CloseCause) {
    let mut s = hub.event_stream();
    let e = s
        .wait_for(T, |e| {
            e.device.as_deref() == Some(dev) && matches!(e.kind, EventKind::Closed { .. })
        })
        .await
        .expect("a closed event");
    match e.kind {
        EventKind::Closed { by, how, cause, .. } => (by, how, cause),
        _ => unreachable!(),
    }
}

fn record_codes(hub: &HubHandle, dev: &str) -> Vec<(String, Option<u32>)> {
    hub.records()
        .iter()
        .filter(|r| r.properties().is_some_and(|p| p.device_id == dev))
        .map(|r| (r.operation_name.clone(), r.code()))
        .collect()
}

#[tokio::test]
async fn qos1_telemetry_is_acked_and_a_graceful_disconnect_is_information() {
    let hub = hub_with(&["sensor-1"]).await;
    let (mut c, ack) = RawClient::connect_as(&hub, &device("sensor-1"), false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert!(!ack.session_present);
    for i in 1..=3u16 {
        let topic = format!(
            "devices/sensor-1/messages/events/%24.mid=m-{i}&%24.ct=application%2Fjson&seq={i}"
        );
        c.publish(&topic, QoS::AtLeastOnce, i, b"{}").await.unwrap();
        match c.recv(T).await {
            Received::Packet(Packet::PubAck(a)) => assert_eq!(a.pkid, i),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    c.send(&Packet::Disconnect).await.unwrap();
    assert_eq!(
        closed_of(&hub, "sensor-1").await,
        (
            Closer::Device,
            CloseHow::Disconnect,
            CloseCause::DeviceDisconnect
        )
    );
    let ids: Vec<String> = hub
        .events()
        .snapshot()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Publish { message_id, .. } => message_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["m-1", "m-2", "m-3"]);
    assert_eq!(
        record_codes(&hub, "sensor-1"),
        [
            ("deviceConnect".to_owned(), None),
            ("deviceDisconnect".to_owned(), None)
        ]
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_key_gets_connack_5_and_a_401003_record() {
    let hub = hub_with(&["sensor-1"]).await;
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    let other_key = fakehub::sas::generate_key();
    let res = fakehub::sas::resource_uri(hub.host_name(), "sensor-1", None);
    let token = fakehub::sas::mint(
        &res,
        &other_key,
        None,
        hub.clock().now() + Duration::from_secs(3600),
    )
    .unwrap();
    let connect =
        fakehub::testkit::connect_packet(hub.host_name(), &device("sensor-1"), &token, false, 60);
    c.send(&Packet::Connect(connect)).await.unwrap();
    match c.recv(T).await {
        Received::Packet(Packet::ConnAck(a)) => {
            assert_eq!(a.code, mq::ConnectReturnCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(c.recv(T).await, Received::Closed),
        "the hub closes after refusing"
    );
    closed_of(&hub, "sensor-1").await;
    assert_eq!(
        record_codes(&hub, "sensor-1"),
        [("deviceConnect".to_owned(), Some(401003))]
    );
    // The token and key never reach the log.
    let log: String = hub
        .events()
        .snapshot()
        .iter()
        .map(|e| serde_json::to_string(e.as_ref()).unwrap())
        .collect();
    assert!(!log.contains(&other_key) && !log.contains("sig="));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn keepalive_timeout_closes_after_one_and_a_half_keepalives_of_virtual_time() {
    let hub = hub_with(&["sensor-1"]).await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("sensor-1"), true, 60)
        .await
        .unwrap();
    // 90 virtual seconds at 1000× take 90 ms.
    let start = hub.clock().elapsed();
    hub.clock().set_speed(1000.0);
    match c.recv(T).await {
        Received::Closed => {}
        other => panic!("expected the hub to close, got {other:?}"),
    }
    assert_eq!(
        closed_of(&hub, "sensor-1").await,
        (Closer::Hub, CloseHow::Timeout, CloseCause::KeepAliveTimeout)
    );
    let closed_at = hub
        .events()
        .snapshot()
        .iter()
        .find(|e| matches!(e.kind, EventKind::Closed { .. }))
        .unwrap()
        .elapsed;
    let idle = closed_at - start;
    assert!(
        idle >= Duration::from_secs(89) && idle < Duration::from_secs(100),
        "{idle:?}"
    );
    assert_eq!(
        record_codes(&hub, "sensor-1").last().unwrap().1,
        Some(404104)
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn pings_keep_a_connection_alive_and_a_jump_does_not_idle_it() {
    let hub = hub_with(&["sensor-1"]).await;
    let expiry = hub.clock().now() + Duration::from_secs(4 * 3600);
    let (mut c, _) = RawClient::connect_with_expiry(&hub, &device("sensor-1"), true, 60, expiry)
        .await
        .unwrap();
    // A two-hour jump of wall time is not idleness: keep-alive follows elapsed time.
    hub.clock().advance(Duration::from_secs(7200)).await;
    hub.clock().set_speed(1000.0);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await; // 40 virtual seconds
        c.send(&Packet::PingReq).await.unwrap();
        assert!(matches!(
            c.recv(T).await,
            Received::Packet(Packet::PingResp)
        ));
    }
    assert_eq!(hub.connected_count(), 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_connection_takes_over_with_400027() {
    let hub = hub_with(&["sensor-1"]).await;
    let (mut first, _) = RawClient::connect_as(&hub, &device("sensor-1"), false, 60)
        .await
        .unwrap();
    let (mut second, ack) = RawClient::connect_as(&hub, &device("sensor-1"), false, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert!(matches!(first.recv(T).await, Received::Closed));
    second.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        second.recv(T).await,
        Received::Packet(Packet::PingResp)
    ));
    let codes = record_codes(&hub, "sensor-1");
    assert!(
        codes.contains(&("deviceDisconnect".to_owned(), Some(400027))),
        "{codes:?}"
    );
    assert_eq!(hub.connected_count(), 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn clean_session_0_persists_subscriptions_with_session_present() {
    let hub = hub_with(&["sensor-1"]).await;
    let who = device("sensor-1");
    let (mut c, ack) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    assert!(!ack.session_present);
    let sub = mq::Subscribe::new("devices/sensor-1/messages/devicebound/#", QoS::AtLeastOnce);
    c.send(&Packet::Subscribe(sub)).await.unwrap();
    match c.recv(T).await {
        Received::Packet(Packet::SubAck(s)) => {
            assert_eq!(
                s.return_codes,
                [mq::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            )
        }
        other => panic!("{other:?}"),
    }
    c.reset();
    closed_of(&hub, "sensor-1").await;
    let (_c, ack) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    assert!(ack.session_present, "CleanSession=0 session restored");
    let (_c2, ack) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    assert!(!ack.session_present, "CleanSession=1 starts afresh");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn qos2_and_foreign_topics_close_the_connection() {
    let hub = hub_with(&["a", "b"]).await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    c.publish("devices/a/messages/events/", QoS::ExactlyOnce, 1, b"x")
        .await
        .unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    assert_eq!(closed_of(&hub, "a").await.2, CloseCause::ProtocolViolation);

    let (mut c, _) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    c.publish("devices/a/messages/events/", QoS::AtLeastOnce, 1, b"x")
        .await
        .unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    let sub = mq::Subscribe::new("#", QoS::AtMostOnce);
    let (mut c, _) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    c.send(&Packet::Subscribe(sub)).await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn how_the_device_left_is_classified() {
    let hub = hub_with(&["fin", "rst"]).await;
    let (c, _) = RawClient::connect_as(&hub, &device("fin"), true, 60)
        .await
        .unwrap();
    c.close().await;
    assert_eq!(
        closed_of(&hub, "fin").await,
        (Closer::Device, CloseHow::Fin, CloseCause::DeviceClosed)
    );
    let (c, _) = RawClient::connect_as(&hub, &device("rst"), true, 60)
        .await
        .unwrap();
    c.reset();
    assert_eq!(
        closed_of(&hub, "rst").await,
        (Closer::Device, CloseHow::Rst, CloseCause::DeviceClosed)
    );
    for d in ["fin", "rst"] {
        assert_eq!(
            record_codes(&hub, d).last().unwrap(),
            &("deviceDisconnect".to_owned(), Some(404104))
        );
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_hub_can_reset_or_close_a_connection() {
    let hub = hub_with(&["a", "b"]).await;
    let (mut a, _) = RawClient::connect_as(&hub, &device("a"), true, 60)
        .await
        .unwrap();
    let (mut b, _) = RawClient::connect_as(&hub, &device("b"), true, 60)
        .await
        .unwrap();
    assert!(hub.close_connection("a", WireClose::Rst, CloseCause::Fault, "test"));
    assert!(matches!(a.recv(T).await, Received::Reset));
    assert!(hub.close_connection("b", WireClose::Fin, CloseCause::Fault, "test"));
    assert!(matches!(b.recv(T).await, Received::Closed));
    assert!(!hub.close_connection("nobody", WireClose::Fin, CloseCause::Fault, "test"));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn token_expiry_closes_at_se_plus_grace_with_401003_then_404104() {
    let hub = Hub::builder()
        .device("sensor-1")
        .token_grace(Duration::from_secs(300))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let expiry = hub.clock().now() + Duration::from_secs(3600);
    let (mut c, _) = RawClient::connect_with_expiry(&hub, &device("sensor-1"), true, 1177, expiry)
        .await
        .unwrap();
    hub.clock().advance(Duration::from_secs(3600 + 299)).await;
    c.send(&Packet::PingReq).await.unwrap();
    assert!(
        matches!(c.recv(T).await, Received::Packet(Packet::PingResp)),
        "still connected at 64:59"
    );
    hub.clock().advance(Duration::from_secs(2)).await;
    assert!(matches!(c.recv(T).await, Received::Closed));
    let closed = hub
        .events()
        .snapshot()
        .into_iter()
        .find(|e| {
            matches!(
                e.kind,
                EventKind::Closed {
                    cause: CloseCause::TokenExpired,
                    ..
                }
            )
        })
        .expect("closed for token expiry");
    // `se` is whole seconds: the drop comes exactly 300 s after it.
    let se = std::time::UNIX_EPOCH
        + Duration::from_secs(
            expiry
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    let late = closed
        .time
        .duration_since(se + Duration::from_secs(300))
        .unwrap();
    assert!(
        late < Duration::from_millis(100),
        "{late:?} after se + grace"
    );
    let codes: Vec<_> = record_codes(&hub, "sensor-1")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(codes, [None, Some(401003), Some(404104)]);
    // Reconnecting with the same, expired token is refused.
    let res = RawClient::connect_with_expiry(&hub, &device("sensor-1"), true, 60, expiry)
        .await
        .unwrap();
    assert_eq!(res.1.code, mq::ConnectReturnCode::NotAuthorized);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_hubs_in_one_process_start_on_port_0_and_free_their_ports() {
    let mut hubs = Vec::new();
    for i in 0..8 {
        hubs.push(hub_with(&[&format!("d{i}")]).await);
    }
    let mut ports = std::collections::HashSet::new();
    for (i, hub) in hubs.iter().enumerate() {
        assert!(ports.insert(hub.local_addr().port()));
        let (_c, ack) = RawClient::connect_as(hub, &device(&format!("d{i}")), true, 60)
            .await
            .unwrap();
        assert_eq!(ack.code, mq::ConnectReturnCode::Success);
        // Each hub only knows its own devices.
        let other = format!("d{}", (i + 1) % 8);
        assert!(RawClient::connect_as(hub, &device(&other), true, 60)
            .await
            .is_err());
    }
    for hub in hubs {
        let addr = hub.local_addr();
        hub.shutdown().await.unwrap();
        // The port is free again at once.
        let again = tokio::net::TcpListener::bind(addr).await;
        assert!(again.is_ok(), "{addr} still bound after shutdown");
    }
}

#[tokio::test]
async fn shutdown_closes_live_connections_and_writes_the_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::builder()
        .device("sensor-1")
        .out_dir(dir.path())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    assert!(dir.path().join("ca.pem").exists());
    let (mut c, _) = RawClient::connect_as(&hub, &device("sensor-1"), true, 60)
        .await
        .unwrap();
    hub.shutdown().await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let parsed: Vec<fakehub::Event> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(matches!(
        parsed.first().unwrap().kind,
        EventKind::HubStarted { .. }
    ));
    assert!(matches!(parsed.last().unwrap().kind, EventKind::HubStopped));
    assert!(parsed.iter().any(|e| matches!(
        e.kind,
        EventKind::Closed {
            cause: CloseCause::HubShutdown,
            ..
        }
    )));
    let records = std::fs::read_to_string(dir.path().join("connections.jsonl")).unwrap();
    let recs: Vec<fakehub::ConnectionRecord> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].code(), Some(404104));
}

#[tokio::test]
async fn hub_limits_subscriptions_size_retain_and_qos() {
    let hub = hub_with(&["d"]).await;
    let who = device("d");
    // Five filters (all of a device's documented ones, one repeated as a sixth is not possible), so
    // count distinct filters: five allowed, a sixth distinct one closes the connection.
    let allowed = [
        "devices/d/messages/devicebound/#",
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
    ];
    let (mut c, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    let mut sub = mq::Subscribe::new(allowed[0], QoS::ExactlyOnce);
    for f in &allowed[1..] {
        sub.add(f.to_string(), QoS::AtLeastOnce);
    }
    sub.pkid = 1;
    c.send(&Packet::Subscribe(sub)).await.unwrap();
    match c.recv(T).await {
        Received::Packet(Packet::SubAck(s)) => {
            // QoS 2 is granted as QoS 1.
            assert_eq!(
                s.return_codes[0],
                mq::SubscribeReasonCode::Success(QoS::AtLeastOnce)
            );
            assert_eq!(s.return_codes.len(), 4);
        }
        other => panic!("{other:?}"),
    }
    // The same filters again do not count twice, and survive a reconnect with CleanSession=0.
    c.reset();
    closed_of(&hub, "d").await;
    let (mut c, _) = RawClient::connect_as(&hub, &who, false, 60).await.unwrap();
    let mut again = mq::Subscribe::new(allowed[1], QoS::AtLeastOnce);
    again.pkid = 2;
    c.send(&Packet::Subscribe(again)).await.unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::SubAck(_))
    ));
    // RETAIN becomes the mqtt-retain property; the message is still acknowledged.
    let mut p = mq::Publish::new(
        "devices/d/messages/events/",
        QoS::AtLeastOnce,
        b"r".to_vec(),
    );
    p.pkid = 3;
    p.retain = true;
    c.send(&Packet::Publish(p)).await.unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::PubAck(_))
    ));
    let retained = hub
        .events()
        .snapshot()
        .into_iter()
        .find_map(|e| match &e.kind {
            EventKind::Publish {
                retain: true,
                properties,
                ..
            } => Some(properties.clone()),
            _ => None,
        });
    assert_eq!(
        retained
            .unwrap()
            .application
            .get("mqtt-retain")
            .map(String::as_str),
        Some("true")
    );
    // 256 KiB of telemetry is fine; one byte more closes the connection.
    c.publish(
        "devices/d/messages/events/",
        QoS::AtLeastOnce,
        4,
        &vec![0u8; 256 * 1024],
    )
    .await
    .unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::PubAck(_))
    ));
    c.publish(
        "devices/d/messages/events/",
        QoS::AtLeastOnce,
        5,
        &vec![0u8; 256 * 1024 + 1],
    )
    .await
    .unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    hub.shutdown().await.unwrap();

    // A module has one more filter to spend: five distinct are fine, the sixth is not.
    let hub = Hub::builder()
        .device("m")
        .module("m", "edge")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let who = fakehub::IdentityRef {
        device_id: "m".into(),
        module_id: Some("edge".into()),
    };
    let (mut c, _) = RawClient::connect_as(&hub, &who, true, 60).await.unwrap();
    let filters = [
        "devices/m/modules/edge/inputs/#",
        "devices/m/modules/edge/#",
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
    ];
    for (i, f) in filters.iter().enumerate() {
        let mut s = mq::Subscribe::new(*f, QoS::AtLeastOnce);
        s.pkid = i as u16 + 1;
        c.send(&Packet::Subscribe(s)).await.unwrap();
        assert!(
            matches!(c.recv(T).await, Received::Packet(Packet::SubAck(_))),
            "filter {f}"
        );
    }
    assert_eq!(hub.connected_count(), 1, "five subscriptions are allowed");
    hub.shutdown().await.unwrap();
}

/// The hub's answers carried by the data segments this socket has received (Linux TCP_INFO).
fn data_segments_in(tcp: &tokio::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed tcp_info is valid, and getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

/// A device's packets that arrive together, as a device with several messages in flight sends
/// them, are answered together: their PUBACKs leave in a few writes, in order (one send per
/// PUBACK made a segment each); and answers queued when the device's last packet ends the
/// connection (DISCONNECT, a QoS 2 PUBLISH) still go out before the close.
#[tokio::test]
async fn packets_that_arrive_together_are_answered_together_and_before_a_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let hub = hub_with(&["burst-1"]).await;
    let who = device("burst-1");
    let connect = |hub: &HubHandle| {
        let token = hub
            .sas_token(&who, hub.clock().now() + Duration::from_secs(3600))
            .unwrap();
        let c = fakehub::testkit::connect_packet(hub.host_name(), &who, &token, true, 60);
        mq::Packet::Connect(c)
    };
    let open = || async {
        let tcp = tokio::net::TcpStream::connect(hub.local_addr())
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let config = hub.certificates().client_config().unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap()
    };
    let encode = |packets: &[mq::Packet]| {
        let mut out = bytes::BytesMut::new();
        for p in packets {
            p.write(&mut out, usize::MAX).unwrap();
        }
        out
    };
    let publish = |pkid: u16, qos: QoS| {
        let mut p = mq::Publish::new("devices/burst-1/messages/events/", qos, b"{}".to_vec());
        p.pkid = pkid;
        mq::Packet::Publish(p)
    };
    // Read packets until the hub closes (or `n` arrived); `None` stands for the close.
    async fn answers(
        tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        n: usize,
    ) -> Vec<Option<mq::Packet>> {
        let mut buf = bytes::BytesMut::new();
        let mut got = Vec::new();
        while got.len() < n {
            match mq::Packet::read(&mut buf, usize::MAX) {
                Ok(p) => {
                    got.push(Some(p));
                    continue;
                }
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from the hub: {e}"),
            }
            match tokio::time::timeout(T, tls.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => {
                    got.push(None);
                    break;
                }
                Err(_) => panic!("the hub answered {} of {n}", got.len()),
            }
        }
        got
    }

    // A burst of 40 QoS 1 messages in one write.
    let mut tls = open().await;
    tls.write_all(&encode(&[connect(&hub)])).await.unwrap();
    assert!(matches!(
        answers(&mut tls, 1).await[..],
        [Some(mq::Packet::ConnAck(_))]
    ));
    let before = data_segments_in(tls.get_ref().0);
    let burst: Vec<mq::Packet> = (1..=40).map(|i| publish(i, QoS::AtLeastOnce)).collect();
    tls.write_all(&encode(&burst)).await.unwrap();
    let acks: Vec<u16> = answers(&mut tls, 40)
        .await
        .into_iter()
        .map(|p| match p {
            Some(mq::Packet::PubAck(a)) => a.pkid,
            other => panic!("expected a PUBACK, got {other:?}"),
        })
        .collect();
    assert_eq!(acks, (1..=40).collect::<Vec<u16>>(), "in order");
    let segments = data_segments_in(tls.get_ref().0).wrapping_sub(before);
    assert!(segments <= 10, "40 PUBACKs came in {segments} segments");

    // Messages then DISCONNECT in one write: the PUBACKs, then the close.
    let mut packets: Vec<mq::Packet> = (1..=3).map(|i| publish(i, QoS::AtLeastOnce)).collect();
    packets.push(mq::Packet::Disconnect);
    tls.write_all(&encode(&packets)).await.unwrap();
    let got = answers(&mut tls, 4).await;
    assert!(
        matches!(
            got[..],
            [
                Some(mq::Packet::PubAck(mq::PubAck { pkid: 1, .. })),
                Some(mq::Packet::PubAck(mq::PubAck { pkid: 2, .. })),
                Some(mq::Packet::PubAck(mq::PubAck { pkid: 3, .. })),
                None
            ]
        ),
        "{got:?}"
    );
    assert_eq!(
        closed_of(&hub, "burst-1").await.2,
        CloseCause::DeviceDisconnect
    );

    // A message, then a QoS 2 PUBLISH (IoT Hub closes): the first is acknowledged before the close.
    let mut tls = open().await;
    tls.write_all(&encode(&[connect(&hub)])).await.unwrap();
    assert!(matches!(
        answers(&mut tls, 1).await[..],
        [Some(mq::Packet::ConnAck(_))]
    ));
    tls.write_all(&encode(&[
        publish(7, QoS::AtLeastOnce),
        publish(8, QoS::ExactlyOnce),
    ]))
    .await
    .unwrap();
    let got = answers(&mut tls, 2).await;
    assert!(
        matches!(
            got[..],
            [Some(mq::Packet::PubAck(mq::PubAck { pkid: 7, .. })), None]
        ),
        "{got:?}"
    );
    hub.event_stream()
        .wait_for(T, |e| {
            matches!(
                e.kind,
                EventKind::Closed {
                    cause: CloseCause::ProtocolViolation,
                    ..
                }
            )
        })
        .await
        .expect("closed for the QoS 2 PUBLISH");
}
