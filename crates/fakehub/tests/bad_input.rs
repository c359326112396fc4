//! Bad input closes only the offending connection: the hub keeps serving everyone else.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use fakehub::testkit::{connect_packet, device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{CloseCause, CloseHow, Closer, EventKind, Hub, HubHandle};
use rumqttc::mqttbytes::v4 as mq;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(5);

async fn hub() -> HubHandle {
    Hub::builder()
        .device("good")
        .device("bad")
        .tls_handshake_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// A well-behaved device still gets in and is served.
async fn still_serving(hub: &HubHandle) {
    let (mut c, ack) = RawClient::connect_as(hub, &device("good"), true, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    c.publish("devices/good/messages/events/", QoS::AtLeastOnce, 7, b"ok")
        .await
        .unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::PubAck(_))
    ));
    c.send(&Packet::Disconnect).await.unwrap();
}

/// The `closed` event of connection `conn`.
async fn closed(hub: &HubHandle, conn: u64) -> (Closer, CloseHow, CloseCause, String) {
    let e = hub
        .event_stream()
        .wait_for(T, |e| {
            e.conn == Some(conn) && matches!(e.kind, EventKind::Closed { .. })
        })
        .await
        .expect("closed event");
    match &e.kind {
        EventKind::Closed {
            by,
            how,
            cause,
            detail,
            ..
        } => (*by, *how, *cause, detail.clone().unwrap_or_default()),
        _ => unreachable!(),
    }
}

/// The connection id of the most recent accepted connection (waiting for it to be logged).
async fn last_conn(hub: &HubHandle) -> u64 {
    hub.event_stream()
        .wait_for(T, |e| matches!(e.kind, EventKind::Accepted { .. }))
        .await
        .expect("an accepted connection");
    hub.events()
        .snapshot()
        .iter()
        .rev()
        .find(|e| matches!(e.kind, EventKind::Accepted { .. }))
        .and_then(|e| e.conn)
        .expect("an accepted connection")
}

#[tokio::test]
async fn bytes_that_are_not_mqtt() {
    let hub = hub().await;
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    // 0x00 is not an MQTT packet type.
    c.send_bytes(&[0x00, 0x02, 0xde, 0xad]).await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    let (by, _, cause, detail) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!(
        (by, cause),
        (Closer::Hub, CloseCause::ProtocolViolation),
        "{detail}"
    );
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_instead_of_mqtt_is_closed_when_no_connect_arrives() {
    let hub = hub().await;
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    c.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    let (_, how, cause, _) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!((how, cause), (CloseHow::Timeout, CloseCause::NoConnect));
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_first_packet_that_is_not_connect() {
    let hub = hub().await;
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    c.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    let (_, _, cause, detail) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!(cause, CloseCause::NoConnect);
    assert!(detail.contains("PINGREQ"), "{detail}");
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_300_kb_password() {
    let hub = hub().await;
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    let password = "A".repeat(300 * 1024);
    let connect = connect_packet(hub.host_name(), &device("bad"), &password, true, 60);
    c.send(&Packet::Connect(connect)).await.ok();
    assert!(matches!(
        c.recv(T).await,
        Received::Closed | Received::Reset
    ));
    let (_, _, cause, detail) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!(cause, CloseCause::ProtocolViolation);
    assert!(detail.contains("over the"), "{detail}");
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_frame_claiming_200_mb() {
    let hub = hub().await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
        .await
        .unwrap();
    // PUBLISH with remaining length 200 * 2^20 (variable-length encoding), and nothing after it.
    let mut frame = vec![0x30];
    let mut n: u32 = 200 * 1024 * 1024;
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        frame.push(byte);
        if n == 0 {
            break;
        }
    }
    let started = Instant::now();
    c.send_bytes(&frame).await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed on the header, not after reading"
    );
    let e = closed_of_device(&hub, "bad").await;
    assert_eq!(e, CloseCause::ProtocolViolation);
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

async fn closed_of_device(hub: &HubHandle, dev: &str) -> CloseCause {
    let e = hub
        .event_stream()
        .wait_for(T, |e| {
            e.device.as_deref() == Some(dev) && matches!(e.kind, EventKind::Closed { .. })
        })
        .await
        .unwrap();
    match e.kind {
        EventKind::Closed { cause, .. } => cause,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_tcp_client_that_never_finishes_the_tls_handshake_blocks_nobody() {
    let hub = Hub::builder()
        .device("good")
        .tls_handshake_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut stalled = tokio::net::TcpStream::connect(hub.local_addr())
        .await
        .unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a ClientHello, then nothing
    let stalled_conn = {
        let e = hub
            .event_stream()
            .wait_for(T, |e| matches!(e.kind, EventKind::Accepted { .. }))
            .await
            .unwrap();
        e.conn.unwrap()
    };
    // Others connect and are served while it stalls: its connection is still open afterwards.
    for _ in 0..3 {
        still_serving(&hub).await;
    }
    let stalled_closed = hub
        .events()
        .snapshot()
        .iter()
        .any(|e| e.conn == Some(stalled_conn) && matches!(e.kind, EventKind::Closed { .. }));
    assert!(
        !stalled_closed,
        "the others were served while the handshake was still stalled"
    );
    let (by, how, cause, _) = closed(&hub, stalled_conn).await;
    assert_eq!(
        (by, how, cause),
        (Closer::Hub, CloseHow::Timeout, CloseCause::TlsFailed)
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_mqtt_on_the_tls_port_fails_the_handshake() {
    let hub = hub().await;
    let mut tcp = tokio::net::TcpStream::connect(hub.local_addr())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    Packet::Connect(mq::Connect::new("bad"))
        .write(&mut buf, usize::MAX)
        .unwrap();
    tcp.write_all(&buf).await.unwrap();
    let (_, _, cause, _) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!(cause, CloseCause::TlsFailed);
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_half_sent_frame() {
    let hub = hub().await;
    // Half a CONNECT, then silence: the CONNECT timeout ends it.
    let mut c = RawClient::connect_tls(&hub).await.unwrap();
    let mut buf = BytesMut::new();
    let connect = connect_packet(
        hub.host_name(),
        &device("bad"),
        "SharedAccessSignature sr=x&sig=y&se=1",
        true,
        60,
    );
    Packet::Connect(connect)
        .write(&mut buf, usize::MAX)
        .unwrap();
    c.send_bytes(&buf[..buf.len() / 2]).await.unwrap();
    assert!(matches!(c.recv(T).await, Received::Closed));
    let (_, how, cause, _) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!((how, cause), (CloseHow::Timeout, CloseCause::NoConnect));

    // Half a PUBLISH from a connected device, then its socket closes: the device left mid-packet.
    let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let p = mq::Publish::new(
        "devices/bad/messages/events/",
        QoS::AtLeastOnce,
        vec![7u8; 1000],
    );
    let mut p = p;
    p.pkid = 1;
    Packet::Publish(p).write(&mut buf, usize::MAX).unwrap();
    c.send_bytes(&buf[..500]).await.unwrap();
    c.close().await;
    let e = hub
        .event_stream()
        .wait_for(T, |e| {
            e.device.as_deref() == Some("bad")
                && matches!(
                    e.kind,
                    EventKind::Closed {
                        cause: CloseCause::DeviceClosed,
                        ..
                    }
                )
        })
        .await
        .unwrap();
    match &e.kind {
        EventKind::Closed { detail, .. } => {
            assert!(detail.as_deref().unwrap_or("").contains("into a packet"))
        }
        _ => unreachable!(),
    }
    let recs = hub.records();
    assert_eq!(recs.last().unwrap().code(), Some(404104));
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

// ---- Issue 14: what a hostile peer sends (each test reproduces one finding of the attack) ----

/// The bytes of a packet as rumqttc writes it.
fn bytes_of(p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, usize::MAX).unwrap();
    buf.to_vec()
}

/// Where the variable header starts (after the fixed header's type byte and remaining length).
fn body_start(frame: &[u8]) -> usize {
    1 + frame[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1
}

/// A CONNECT of device `bad` with this password.
fn bad_connect(hub: &HubHandle, password: &str) -> Packet {
    Packet::Connect(connect_packet(
        hub.host_name(),
        &device("bad"),
        password,
        true,
        60,
    ))
}

/// The CONNACK the hub answers to these bytes, or what it did instead.
async fn answer_to(hub: &HubHandle, frame: &[u8]) -> Received {
    let mut c = RawClient::connect_tls(hub).await.unwrap();
    c.send_bytes(frame).await.unwrap();
    c.recv(T).await
}

/// Every line of `events.jsonl` is one whole event.
fn every_line_parses(dir: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    for (n, line) in text.lines().enumerate() {
        serde_json::from_str::<fakehub::Event>(line)
            .unwrap_or_else(|e| panic!("line {}: {e}: {line}", n + 1));
    }
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines().count()
}

#[tokio::test]
async fn sas_expiry_past_the_year_9999_or_2_pow_63_is_refused_with_connack_5_and_logs_whole_lines()
{
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::builder()
        .device("good")
        .device("bad")
        .out_dir(dir.path())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let sr = format!("{}%2Fdevices%2Fbad", hub.host_name());
    for se in [
        "253402300800",
        "9223372036854775808",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        for _ in 0..5 {
            let token = format!("SharedAccessSignature sr={sr}&sig=AAAA&se={se}");
            match answer_to(&hub, &bytes_of(&bad_connect(&hub, &token))).await {
                Received::Packet(Packet::ConnAck(a)) => {
                    assert_eq!(a.code, mq::ConnectReturnCode::NotAuthorized, "se={se}")
                }
                other => panic!("se={se}: {other:?}"),
            }
        }
    }
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
    assert!(every_line_parses(dir.path()) > 20 * 4);
}

#[tokio::test]
async fn inband_delays_of_1e30_and_1e19_seconds_do_not_panic_and_the_connection_still_ends() {
    let hub = hub().await;
    for (i, delay) in ["1e30", "1e19", "inf", "-1", "NaN"].iter().enumerate() {
        let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
            .await
            .unwrap();
        let topic = format!(
            "devices/bad/messages/events/%24.mid=t{i}&AzIoTHub_FaultOperationType=KillTcp&AzIoTHub_FaultOperationDelayInSecs={delay}"
        );
        c.publish(&topic, QoS::AtLeastOnce, 1, b"x").await.unwrap();
        // The trigger is not acknowledged. A delay too long is cut to 24 h (the device leaves
        // first); one that is not a number is none (the connection is killed at once).
        match c.recv(Duration::from_millis(300)).await {
            Received::Silence => {
                assert!(delay.starts_with('1'), "delay {delay}");
                c.send(&Packet::Disconnect).await.unwrap();
            }
            other => {
                assert!(!delay.starts_with('1'), "delay {delay}: {other:?}");
                assert!(
                    matches!(other, Received::Closed | Received::Reset),
                    "{other:?}"
                );
            }
        }
        let e = hub
            .event_stream()
            .wait_for(T, |e| {
                e.device.as_deref() == Some("bad") && matches!(e.kind, EventKind::Closed { .. })
            })
            .await;
        assert!(
            e.is_some(),
            "delay {delay}: the connection's end is recorded"
        );
        let t0 = Instant::now();
        while hub.connected_count() != 0 {
            assert!(t0.elapsed() < T, "the connected count came back to 0");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let faults = hub
        .events()
        .snapshot()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Fault { fault, .. } if fault == "inband:KillTcp"))
        .count();
    assert!(faults >= 5, "each trigger started its fault: {faults}");
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_in_a_connection_task_still_records_its_close_and_keeps_the_counts_right() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::builder()
        .device("good")
        .device("bad")
        .out_dir(dir.path())
        .panic_on_topic("PANIC-HERE")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
        .await
        .unwrap();
    assert_eq!(hub.connected_count(), 1);
    c.publish(
        "devices/bad/messages/events/PANIC-HERE=1",
        QoS::AtLeastOnce,
        1,
        b"x",
    )
    .await
    .unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Closed | Received::Reset
    ));
    let e = hub
        .event_stream()
        .wait_for(T, |e| {
            e.device.as_deref() == Some("bad") && matches!(e.kind, EventKind::Closed { .. })
        })
        .await
        .expect("the closed event of the task that panicked");
    assert!(
        matches!(
            e.kind,
            EventKind::Closed {
                cause: CloseCause::Internal,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(hub.connected_count(), 0);
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
    every_line_parses(dir.path());
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_within_its_keepalive_window_and_can_be_taken_over() {
    let hub = hub().await;
    // Takeover while the hub is stuck writing to it: at once, not when the write gives up.
    let (stuck, _) = RawClient::connect_memory_as(&hub, &device("bad"), true, 60)
        .await
        .unwrap();
    let flood = tokio::spawn(flood_pings(stuck));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (_taker, ack) = RawClient::connect_as(&hub, &device("bad"), true, 60)
        .await
        .unwrap();
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "takeover took {:?}",
        started.elapsed()
    );
    flood.abort();

    // Alone, it is closed within its keep-alive window (1.5 × 60 s at 1000×: 90 ms) as its fault.
    let (stuck, _) = RawClient::connect_memory_as(&hub, &device("good"), true, 60)
        .await
        .unwrap();
    let flood = tokio::spawn(flood_pings(stuck));
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.clock().set_speed(1000.0);
    let e = hub
        .event_stream()
        .wait_for(T, |e| {
            e.device.as_deref() == Some("good") && matches!(e.kind, EventKind::Closed { .. })
        })
        .await
        .expect("closed within the window");
    match &e.kind {
        EventKind::Closed {
            by, cause, detail, ..
        } => {
            assert_eq!((*by, *cause), (Closer::Hub, CloseCause::KeepAliveTimeout));
            assert!(
                detail.as_deref().unwrap_or("").contains("read nothing"),
                "{detail:?}"
            );
        }
        _ => unreachable!(),
    }
    flood.abort();
    hub.shutdown().await.unwrap();
}

/// Send PINGREQs and never read (up to 8 MB).
async fn flood_pings(mut c: RawClient) {
    let pings = [0xc0u8, 0x00].repeat(64 * 1024);
    for _ in 0..64 {
        if c.send_bytes(&pings).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn protocol_levels_other_than_4_get_connack_1() {
    let hub = hub().await;
    let token = "SharedAccessSignature sr=x&sig=AAAA&se=1";
    let frame = bytes_of(&bad_connect(&hub, token));
    let level_at = body_start(&frame) + 6;
    assert_eq!(frame[level_at], 4);
    for level in [3u8, 5, 0, 255] {
        let mut f = frame.clone();
        f[level_at] = level;
        match answer_to(&hub, &f).await {
            Received::Packet(Packet::ConnAck(a)) => {
                assert_eq!(
                    a.code,
                    mq::ConnectReturnCode::RefusedProtocolVersion,
                    "level {level}"
                )
            }
            other => panic!("level {level}: {other:?}"),
        }
    }
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connect_with_the_reserved_flag_set_is_closed_without_connack() {
    let hub = hub().await;
    let frame = bytes_of(&bad_connect(
        &hub,
        "SharedAccessSignature sr=x&sig=AAAA&se=1",
    ));
    let flags_at = body_start(&frame) + 7;
    let mut f = frame.clone();
    f[flags_at] |= 0x01;
    // MQTT 3.1.1 §3.1.2.3: the server MUST disconnect.
    assert!(matches!(answer_to(&hub, &f).await, Received::Closed));
    let (by, _, cause, detail) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!(
        (by, cause),
        (Closer::Hub, CloseCause::ProtocolViolation),
        "{detail}"
    );
    assert!(detail.contains("reserved"), "{detail}");
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_non_utf8_password_gets_connack_5_with_a_reason() {
    let hub = hub().await;
    // The password is the last field: replace its two bytes.
    let mut f = bytes_of(&bad_connect(&hub, "XX"));
    let n = f.len();
    f[n - 2..].copy_from_slice(&[0xff, 0xfe]);
    match answer_to(&hub, &f).await {
        Received::Packet(Packet::ConnAck(a)) => {
            assert_eq!(a.code, mq::ConnectReturnCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
    let (_, _, cause, detail) = closed(&hub, last_conn(&hub).await).await;
    assert_eq!(cause, CloseCause::Refused, "{detail}");
    assert!(
        detail.contains("password") && !detail.contains("Topic"),
        "{detail}"
    );
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscribe_with_bad_header_flags_and_publish_with_wildcards_or_nul_are_closed() {
    let hub = hub().await;
    let subscribe = Packet::Subscribe(mq::Subscribe::new(
        "devices/bad/messages/devicebound/#",
        QoS::AtLeastOnce,
    ));
    let mut sub = bytes_of(&subscribe);
    assert_eq!(sub[0], 0x82);
    // MQTT 3.1.1 §3.8.1: bits 3..0 of a SUBSCRIBE MUST be 0010 (and 0010 for UNSUBSCRIBE).
    for first in [0x80u8, 0x83, 0x8a] {
        sub[0] = first;
        let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
            .await
            .unwrap();
        c.send_bytes(&sub).await.unwrap();
        assert!(matches!(c.recv(T).await, Received::Closed), "{first:#x}");
        assert_eq!(
            closed_of_device(&hub, "bad").await,
            CloseCause::ProtocolViolation
        );
    }
    for topic in [
        "devices/bad/messages/events/#",
        "devices/bad/messages/events/a\0b",
        "devices/bad/messages/events/+",
    ] {
        let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
            .await
            .unwrap();
        c.publish(topic, QoS::AtLeastOnce, 1, b"x").await.unwrap();
        assert!(matches!(c.recv(T).await, Received::Closed), "{topic:?}");
        assert_eq!(
            closed_of_device(&hub, "bad").await,
            CloseCause::ProtocolViolation
        );
    }
    still_serving(&hub).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn unsubscribe_of_an_unknown_filter_is_answered_and_an_unsolicited_puback_ignored() {
    let hub = hub().await;
    let (mut c, _) = RawClient::connect_as(&hub, &device("bad"), true, 60)
        .await
        .unwrap();
    c.send(&Packet::Unsubscribe(mq::Unsubscribe::new(
        "never/subscribed",
    )))
    .await
    .unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::UnsubAck(_))
    ));
    c.send(&Packet::PubAck(mq::PubAck::new(4242)))
        .await
        .unwrap();
    c.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        c.recv(T).await,
        Received::Packet(Packet::PingResp)
    ));
    assert_eq!(hub.connected_count(), 1);
    c.send(&Packet::Disconnect).await.unwrap();
    hub.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hub_with_an_output_directory_keeps_a_bounded_window_of_events_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::builder()
        .device("good")
        .memory_tls(false)
        .out_dir(dir.path())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let (mut c, _) = RawClient::connect_memory_as(&hub, &device("good"), true, 0)
        .await
        .unwrap();
    let mut events = hub.event_stream();
    let messages = 6000u16;
    for n in 1..=messages {
        let topic = format!("devices/good/messages/events/%24.mid=m{n}&site=north&temp=21.5");
        c.publish(&topic, QoS::AtLeastOnce, n, b"{\"t\":21.5}")
            .await
            .unwrap();
        assert!(matches!(
            c.recv(T).await,
            Received::Packet(Packet::PubAck(_))
        ));
    }
    let total = hub.events().len();
    assert!(total > 2 * usize::from(messages), "{total}");
    // However far the writer thread lags (CI machines are slow), memory stays bounded; once
    // flushed it holds the window alone.
    assert!(
        hub.events().in_memory() <= fakehub::events::log::HELD_AT_MOST,
        "{} events in memory",
        hub.events().in_memory()
    );
    hub.events().flush().unwrap();
    assert!(
        hub.events().in_memory() <= fakehub::events::log::WINDOW,
        "{} events in memory after a flush",
        hub.events().in_memory()
    );
    // Every reader still sees every event: a stream from the start, the snapshot, since(n).
    let mut seen = 0;
    while let Some(e) = events.try_next() {
        assert_eq!(e.seq, seen);
        seen += 1;
    }
    assert_eq!(seen as usize, total);
    assert_eq!(hub.events().snapshot().len(), total);
    assert_eq!(hub.events().since(10).first().map(|e| e.seq), Some(10));
    c.send(&Packet::Disconnect).await.unwrap();
    hub.shutdown().await.unwrap();
    every_line_parses(dir.path());
}
