//! The message core: an embedded rumqttd router, and the narrow boundary the front door talks through.
//!
//! The front door owns the device connection (TLS, codec, auth, keep-alive, faults). For each
//! authenticated connection it opens a [`CoreSession`]: a rumqttd *local link* registered with the
//! router under the device's client id. The router then provides what it is good at: QoS 1
//! acknowledgement, CleanSession=0 sessions kept across connections (`sessionPresent`), and
//! redelivery of unacknowledged messages after a reconnect. Hub services (twin, methods, C2D) are
//! in-process clients of the same router.
//!
//! rumqttd 0.20 pitfalls this module designs around (see `research/rumqttd-0.20.md`):
//! * Its `Publish` hides `qos`, `pkid` and `dup` (`pub(crate)`), so the device-facing codec is
//!   `rumqttc::mqttbytes::v4` and packets cross this boundary through rumqttd's public, MQTT-independent
//!   `Publish::serialize`/`deserialize` layout.
//! * `$`-prefixed topics never match and `$` filters disconnect the subscriber; client ids may not
//!   contain `+ $ # /`. So `$iothub/…` maps to `iothub/{escaped client id}/…` and client ids are
//!   percent-escaped on the way in, and both are mapped back on the way out.
//! * `LinkBuilder::build` blocks on a channel until the router answers: it runs on the blocking pool.
//! * There is no call to end a session from outside; sending the router a DISCONNECT packet on the link
//!   does the same (state is saved for CleanSession=0, the last will is discarded).
//! * The router runs on its own OS thread and never exits (rumqttd #771): one idle thread per hub
//!   stays behind after shutdown, with whatever the router still holds.
//! * The router's `RouterConfig::default()` refuses every connection; every field is set here.
//! * Device credentials never reach the core: the link carries only the client id.
//! * It delivers at the *subscription's* QoS whatever the publish's, and it drops a link that
//!   acknowledges QoS 1 deliveries out of order. IoT Hub sends everything on `$iothub/…` (twin
//!   responses, desired-property patches, method requests) at QoS 0, so those filters are subscribed
//!   in the router at QoS 0 (the SUBACK still shows the QoS the device was granted); only C2D
//!   travels at QoS 1.
//! * Its commit log keeps a fixed amount of history per filter and skips a lagging reader past what
//!   it dropped; C2D filters get room for a full device queue (50 messages of 64 KiB).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS as MqQoS;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol as rp;
use rumqttd::{Notification, RouterConfig};

/// Characters rumqttd refuses in a client id, and `%` itself so the escape is reversible.
const CLIENT_ID_ESCAPE: &AsciiSet = &CONTROLS.add(b'%').add(b'/').add(b'+').add(b'$').add(b'#');

/// The internal namespace `$iothub/…` topics map to.
const IOTHUB_NAMESPACE: &str = "iothub/";

/// The router name of the hub's own service link. Escaped client ids never contain `%` followed by
/// something other than two hex digits, so no device or module can take this name over.
const SERVICE_CLIENT_ID: &str = "%hub.services";

/// Errors at the core boundary.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// rumqttd's `LinkError` carries the router's whole event when a send fails; only its text is kept.
    #[error("the message core refused the session: {0}")]
    Link(String),
    #[error("the message core did not answer")]
    Unavailable,
    #[error("the message core ended the session")]
    Closed,
}

type OpenLink = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

impl From<LinkError> for CoreError {
    fn from(e: LinkError) -> Self {
        CoreError::Link(e.to_string())
    }
}

/// The embedded router, shared by every connection of one hub.
#[derive(Clone)]
pub struct Core {
    open: Arc<OpenLink>,
}

/// Router sizing.
#[derive(Debug, Clone, Copy)]
pub struct CoreLimits {
    pub max_connections: usize,
    pub max_inflight: u64,
}

impl Default for CoreLimits {
    fn default() -> Self {
        CoreLimits {
            max_connections: 10_000,
            max_inflight: 100,
        }
    }
}

impl Core {
    /// Start a router thread with explicit limits.
    pub fn start(id: usize, limits: CoreLimits) -> Core {
        let config = RouterConfig {
            // Each connection, including hub-service links, is one slot.
            max_connections: limits.max_connections,
            max_outgoing_packet_count: limits.max_inflight,
            // Per-filter in-memory log: 64 KiB segments, at most 16 (C2D and twin traffic is small).
            // Both must be non-zero or the router thread panics on the first subscription.
            max_segment_size: 64 * 1024,
            max_segment_count: 16,
            // C2D: at least 50 queued messages of 64 KiB must survive while a device is away. The
            // log is allocated as it fills, so this costs memory only for devices that get C2D.
            custom_segment: Some(HashMap::from([(
                "devices/+/messages/devicebound/#".to_owned(),
                rumqttd::SegmentConfig {
                    max_segment_size: 512 * 1024,
                    max_segment_count: 8,
                },
            )])),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = rumqttd::Router::new(id, config).spawn();
        let open = move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .build()
                .map_err(|e| e.to_string())
        };
        Core {
            open: Arc::new(open),
        }
    }

    /// Open the router session of one identity. Blocks a pool thread briefly; never the runtime.
    pub async fn open_session(
        &self,
        client_id: &str,
        clean: bool,
    ) -> Result<CoreSession, CoreError> {
        self.open_escaped(escape_client_id(client_id), clean).await
    }

    /// Open the hub services' own session (clean), under a name no device can claim. Its topics
    /// are used as they are: it reads and writes the internal `iothub/{escaped client id}/…` form.
    pub async fn open_service_session(&self) -> Result<CoreSession, CoreError> {
        self.open_escaped(SERVICE_CLIENT_ID.to_owned(), true).await
    }

    async fn open_escaped(&self, escaped: String, clean: bool) -> Result<CoreSession, CoreError> {
        let open = self.open.clone();
        let name = escaped.clone();
        let (tx, rx, ack) = tokio::task::spawn_blocking(move || open(&name, clean))
            .await
            .map_err(|_| CoreError::Unavailable)?
            .map_err(CoreError::Link)?;
        let session_present = match Option::<rp::Packet>::from(ack) {
            Some(rp::Packet::ConnAck(ack, _)) => ack.session_present,
            _ => false,
        };
        Ok(CoreSession {
            tx,
            rx,
            pending: VecDeque::new(),
            escaped,
            session_present,
            grants: HashMap::new(),
        })
    }
}

/// Escape a client id for the router: `device/module` → `device%2Fmodule`.
pub fn escape_client_id(client_id: &str) -> String {
    utf8_percent_encode(client_id, CLIENT_ID_ESCAPE).to_string()
}

/// The inverse of [`escape_client_id`].
pub fn unescape_client_id(escaped: &str) -> String {
    percent_decode_str(escaped).decode_utf8_lossy().into_owned()
}

/// Map a device-facing topic or filter into the router's namespace.
pub fn topic_to_core(escaped_client: &str, topic: &str) -> String {
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        return format!("{IOTHUB_NAMESPACE}{escaped_client}/{rest}");
    }
    // azure-sdk-for-c subscribes to C2D with a wildcard device id; a device only ever receives its
    // own C2D, so the filter becomes the device's own.
    if let Some(rest) = topic.strip_prefix("devices/+/messages/devicebound/") {
        let device = unescape_client_id(escaped_client);
        if !device.contains('/') {
            return format!("devices/{device}/messages/devicebound/{rest}");
        }
    }
    topic.to_owned()
}

/// The QoS a filter is subscribed with in the router: IoT Hub sends `$iothub/…` at QoS 0.
fn router_qos(device_filter: &str, granted: MqQoS) -> MqQoS {
    if device_filter.starts_with("$iothub/") {
        MqQoS::AtMostOnce
    } else {
        granted
    }
}

/// Map a router topic back to what the device expects.
pub fn topic_from_core(escaped_client: &str, topic: &str) -> String {
    topic
        .strip_prefix(IOTHUB_NAMESPACE)
        .and_then(|rest| rest.strip_prefix(escaped_client))
        .and_then(|rest| rest.strip_prefix('/'))
        .map(|rest| format!("$iothub/{rest}"))
        .unwrap_or_else(|| topic.to_owned())
}

fn qos_to_core(q: MqQoS) -> rp::QoS {
    match q {
        MqQoS::AtMostOnce => rp::QoS::AtMostOnce,
        MqQoS::AtLeastOnce => rp::QoS::AtLeastOnce,
        MqQoS::ExactlyOnce => rp::QoS::ExactlyOnce,
    }
}

fn qos_from_core(q: rp::QoS) -> MqQoS {
    match q {
        rp::QoS::AtMostOnce => MqQoS::AtMostOnce,
        rp::QoS::AtLeastOnce => MqQoS::AtLeastOnce,
        rp::QoS::ExactlyOnce => MqQoS::ExactlyOnce,
    }
}

/// The QoS a router SUBACK code grants, or `None` for a failure.
fn router_granted(code: &rp::SubscribeReasonCode) -> Option<MqQoS> {
    match code {
        rp::SubscribeReasonCode::QoS0 => Some(MqQoS::AtMostOnce),
        rp::SubscribeReasonCode::QoS1 => Some(MqQoS::AtLeastOnce),
        rp::SubscribeReasonCode::QoS2 => Some(MqQoS::ExactlyOnce),
        rp::SubscribeReasonCode::Success(q) => Some(qos_from_core(*q)),
        _ => None,
    }
}

/// Build a router publish through rumqttd's public serialized layout (its fields are crate-private):
/// flags byte, packet id, topic length, topic, payload.
fn publish_to_core(topic: &str, p: &mq::Publish) -> rp::Publish {
    let mut buf = BytesMut::with_capacity(5 + topic.len() + p.payload.len());
    let flags = 0b0011_0000u8 | (p.retain as u8) | ((p.qos as u8) << 1) | ((p.dup as u8) << 3);
    buf.put_u8(flags);
    buf.put_u16(p.pkid);
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic.as_bytes());
    buf.put_slice(&p.payload);
    rp::Publish::deserialize(buf.freeze())
}

/// Read a router publish back through the same layout.
fn publish_from_core(p: &rp::Publish) -> Option<(String, MqQoS, u16, bool, bool, Bytes)> {
    let mut raw = p.serialize();
    if raw.len() < 5 {
        return None;
    }
    let flags = raw[0];
    let qos = match (flags >> 1) & 0b11 {
        0 => MqQoS::AtMostOnce,
        1 => MqQoS::AtLeastOnce,
        _ => MqQoS::ExactlyOnce,
    };
    let dup = flags & 0b1000 != 0;
    let retain = flags & 1 != 0;
    let pkid = u16::from_be_bytes([raw[1], raw[2]]);
    let topic_len = u16::from_be_bytes([raw[3], raw[4]]) as usize;
    let body = raw.split_off(5);
    if body.len() < topic_len {
        return None;
    }
    let topic = String::from_utf8(body[..topic_len].to_vec()).ok()?;
    Some((topic, qos, pkid, dup, retain, body.slice(topic_len..)))
}

/// One identity's session in the router, for the life of one device connection.
pub struct CoreSession {
    tx: LinkTx,
    rx: LinkRx,
    pending: VecDeque<mq::Packet>,
    escaped: String,
    session_present: bool,
    /// QoS granted to the device per SUBSCRIBE packet id, for the SUBACK (see [`router_qos`]).
    grants: HashMap<u16, Vec<MqQoS>>,
}

impl CoreSession {
    /// Whether the router restored a CleanSession=0 session for this client id.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    async fn send(&mut self, packet: rp::Packet) -> Result<(), CoreError> {
        self.tx.send(packet).await?;
        Ok(())
    }

    /// Hand a device PUBLISH to the router (`$iothub` topics mapped). QoS 1 is acknowledged by a
    /// PUBACK from [`Self::next`].
    pub async fn publish(&mut self, p: &mq::Publish) -> Result<(), CoreError> {
        let topic = topic_to_core(&self.escaped, &p.topic);
        self.send(rp::Packet::Publish(publish_to_core(&topic, p), None))
            .await
    }

    /// The device acknowledged a QoS 1 delivery.
    pub async fn puback(&mut self, pkid: u16) -> Result<(), CoreError> {
        let ack = rp::PubAck {
            pkid,
            reason: rp::PubAckReason::Success,
        };
        self.send(rp::Packet::PubAck(ack, None)).await
    }

    /// Subscribe to filters (device-facing form), each at the given QoS.
    pub async fn subscribe(
        &mut self,
        pkid: u16,
        filters: &[(String, MqQoS)],
    ) -> Result<(), CoreError> {
        let routed = filters
            .iter()
            .map(|(path, qos)| rp::Filter {
                path: topic_to_core(&self.escaped, path),
                qos: qos_to_core(router_qos(path, *qos)),
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: rp::RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        self.grants
            .insert(pkid, filters.iter().map(|(_, qos)| *qos).collect());
        self.send(rp::Packet::Subscribe(
            rp::Subscribe {
                pkid,
                filters: routed,
            },
            None,
        ))
        .await
    }

    /// Unsubscribe from filters (device-facing form).
    pub async fn unsubscribe(&mut self, pkid: u16, filters: &[String]) -> Result<(), CoreError> {
        let filters = filters
            .iter()
            .map(|f| topic_to_core(&self.escaped, f))
            .collect();
        self.send(rp::Packet::Unsubscribe(
            rp::Unsubscribe { pkid, filters },
            None,
        ))
        .await
    }

    /// End the session in the router: a CleanSession=0 session is saved for the next connection.
    pub async fn close(mut self) {
        let _ = self
            .send(rp::Packet::Disconnect(
                rp::Disconnect {
                    reason_code: rp::DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ))
            .await;
    }

    /// The next packet for the device: a PUBLISH (topic mapped back), PUBACK, SUBACK or UNSUBACK.
    /// Cancel-safe: packets already taken from the router wait in a queue.
    pub async fn next(&mut self) -> Result<mq::Packet, CoreError> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(p);
            }
            let notification = self.rx.next().await?;
            let Some(notification) = notification else {
                continue;
            };
            match notification {
                Notification::Unschedule => {
                    // The router paused this link (e.g. inflight full) and asks to be told when
                    // it may send again.
                    self.rx.wake().await?;
                }
                Notification::Disconnect(..) => return Err(CoreError::Closed),
                other => {
                    if let Some(packet) = Option::<rp::Packet>::from(other) {
                        if let Some(p) = self.packet_from_core(packet) {
                            self.pending.push_back(p);
                        }
                    }
                }
            }
        }
    }

    fn packet_from_core(&mut self, packet: rp::Packet) -> Option<mq::Packet> {
        Some(match packet {
            rp::Packet::Publish(p, _) => {
                let (topic, qos, pkid, dup, retain, payload) = publish_from_core(&p)?;
                let mut out =
                    mq::Publish::new(topic_from_core(&self.escaped, &topic), qos, Vec::new());
                out.payload = payload;
                out.pkid = pkid;
                out.dup = dup;
                out.retain = retain;
                mq::Packet::Publish(out)
            }
            rp::Packet::PubAck(ack, _) => mq::Packet::PubAck(mq::PubAck::new(ack.pkid)),
            rp::Packet::SubAck(ack, _) => {
                // The router granted what it was asked for; the device is told what it was granted.
                let granted = self.grants.remove(&ack.pkid).unwrap_or_default();
                let codes = ack
                    .return_codes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match (router_granted(c), granted.get(i)) {
                        (Some(_), Some(q)) => mq::SubscribeReasonCode::Success(*q),
                        (Some(q), None) => mq::SubscribeReasonCode::Success(q),
                        (None, _) => mq::SubscribeReasonCode::Failure,
                    })
                    .collect();
                mq::Packet::SubAck(mq::SubAck::new(ack.pkid, codes))
            }
            rp::Packet::UnsubAck(ack, _) => mq::Packet::UnsubAck(mq::UnsubAck::new(ack.pkid)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_and_iothub_topics_round_trip() {
        let esc = escape_client_id("dev$1/mod+%");
        assert!(!esc.contains(['/', '+', '$', '#']), "{esc}");
        assert_eq!(unescape_client_id(&esc), "dev$1/mod+%");
        let t = topic_to_core(&esc, "$iothub/twin/res/200/?$rid=4");
        assert!(t.starts_with("iothub/"));
        assert_eq!(topic_from_core(&esc, &t), "$iothub/twin/res/200/?$rid=4");
        assert_eq!(
            topic_to_core(&esc, "devices/d/messages/events/"),
            "devices/d/messages/events/"
        );
        assert_eq!(
            topic_from_core(&esc, "devices/d/messages/devicebound/x"),
            "devices/d/messages/devicebound/x"
        );
    }

    #[test]
    fn publish_layout_round_trips() {
        let mut p = mq::Publish::new("ignored", MqQoS::AtLeastOnce, b"payload".to_vec());
        p.pkid = 0x1234;
        p.dup = true;
        let core = publish_to_core("a/b", &p);
        let (topic, qos, pkid, dup, retain, payload) = publish_from_core(&core).unwrap();
        assert_eq!(
            (topic.as_str(), qos, pkid, dup, retain),
            ("a/b", MqQoS::AtLeastOnce, 0x1234, true, false)
        );
        assert_eq!(&payload[..], b"payload");
    }

    async fn next_packet(session: &mut CoreSession) -> mq::Packet {
        tokio::time::timeout(std::time::Duration::from_secs(2), session.next())
            .await
            .expect("a packet from the core in time")
            .expect("the core session is open")
    }

    async fn publish_as_service(svc: &mut CoreSession, topic: String, pkid: u16, payload: Vec<u8>) {
        let mut p = mq::Publish::new(topic, MqQoS::AtLeastOnce, payload);
        p.pkid = pkid;
        svc.publish(&p).await.unwrap();
        assert!(matches!(next_packet(svc).await, mq::Packet::PubAck(_)));
    }

    #[tokio::test]
    async fn persistent_session_survives_and_redelivers() {
        let core = Core::start(0, CoreLimits::default());
        let mut dev = core.open_session("dev/mod", false).await.unwrap();
        assert!(!dev.session_present());
        dev.subscribe(1, &[("$iothub/methods/POST/#".into(), MqQoS::AtLeastOnce)])
            .await
            .unwrap();
        match next_packet(&mut dev).await {
            // The device is told it got QoS 1, though the router delivers `$iothub` at QoS 0.
            mq::Packet::SubAck(ack) => assert_eq!(
                ack.return_codes,
                [mq::SubscribeReasonCode::Success(MqQoS::AtLeastOnce)]
            ),
            other => panic!("{other:?}"),
        }
        dev.close().await;

        // A service publishes while the device is away.
        let mut svc = core.open_service_session().await.unwrap();
        let topic = topic_to_core(
            &escape_client_id("dev/mod"),
            "$iothub/methods/POST/reboot/?$rid=1",
        );
        publish_as_service(&mut svc, topic, 1, b"{}".to_vec()).await;

        let mut dev = core.open_session("dev/mod", false).await.unwrap();
        assert!(dev.session_present());
        match next_packet(&mut dev).await {
            mq::Packet::Publish(p) => {
                assert_eq!(p.topic, "$iothub/methods/POST/reboot/?$rid=1");
                assert_eq!(p.qos, MqQoS::AtMostOnce, "IoT Hub sends $iothub at QoS 0");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Measured: a full C2D queue (50 messages of 64 KiB) published while the device is away is
    /// delivered complete and in order after it reconnects, and the unacknowledged tail again
    /// after a second reconnect. The wildcard filter of azure-sdk-for-c gets the device's own C2D.
    #[tokio::test]
    async fn a_full_c2d_queue_survives_two_reconnects_in_order() {
        let core = Core::start(1, CoreLimits::default());
        let mut dev = core.open_session("d1", false).await.unwrap();
        dev.subscribe(
            1,
            &[(
                "devices/+/messages/devicebound/#".into(),
                MqQoS::AtLeastOnce,
            )],
        )
        .await
        .unwrap();
        assert!(matches!(next_packet(&mut dev).await, mq::Packet::SubAck(_)));
        dev.close().await;
        let mut other = core.open_session("d2", false).await.unwrap();
        other
            .subscribe(
                1,
                &[(
                    "devices/+/messages/devicebound/#".into(),
                    MqQoS::AtLeastOnce,
                )],
            )
            .await
            .unwrap();
        assert!(matches!(
            next_packet(&mut other).await,
            mq::Packet::SubAck(_)
        ));

        let mut svc = core.open_service_session().await.unwrap();
        for i in 0..50u16 {
            let mut body = vec![b'x'; 64 * 1024];
            body[..2].copy_from_slice(&i.to_be_bytes());
            let topic = format!("devices/d1/messages/devicebound/%24.mid=m-{i}");
            publish_as_service(&mut svc, topic, i + 1, body).await;
        }

        let mut dev = core.open_session("d1", false).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 50 {
            if let mq::Packet::Publish(p) = next_packet(&mut dev).await {
                assert_eq!(p.qos, MqQoS::AtLeastOnce);
                assert_eq!(p.payload.len(), 64 * 1024);
                got.push((p.topic.clone(), p.pkid));
            }
        }
        let expected: Vec<String> = (0..50)
            .map(|i| format!("devices/d1/messages/devicebound/%24.mid=m-{i}"))
            .collect();
        assert_eq!(
            got.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
            expected
        );
        // Acknowledge the first 20, leave the rest, go away again.
        for (_, pkid) in &got[..20] {
            dev.puback(*pkid).await.unwrap();
        }
        dev.close().await;
        let mut dev = core.open_session("d1", false).await.unwrap();
        let mut again = Vec::new();
        while again.len() < 30 {
            if let mq::Packet::Publish(p) = next_packet(&mut dev).await {
                again.push(p.topic.clone());
            }
        }
        assert_eq!(again, expected[20..]);
        // The other device saw none of it.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), other.next())
                .await
                .is_err()
        );
    }
}
