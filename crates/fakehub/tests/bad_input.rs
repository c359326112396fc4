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
