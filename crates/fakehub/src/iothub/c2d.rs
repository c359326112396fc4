//! Cloud-to-device messages: what the service side sends, how the hub writes it onto the device's
//! topic, and each device's queue.
//!
//! The hub delivers C2D on `devices/{id}/messages/devicebound/{property bag}` at QoS 1. The bag holds
//! the system properties in the order real hubs write them (`$.mid`, `$.to`, `$.cid`, `$.uid`,
//! `$.ct`, `$.ce`, `iothub-ack`; captures in research §4.2 and Microsoft's mosquitto walkthrough),
//! then the application properties, all percent-encoded.
//!
//! A device's queue holds every message it has not acknowledged, at most
//! [`MAX_QUEUE_DEPTH`]; one more is refused with 403004 DeviceMaximumQueueDepthExceeded. A message
//! waits in the hub while the device's session has no C2D subscription (IoT Hub keeps C2D messages
//! whether or not the device is subscribed), and goes to the message core once it has one: the core
//! then delivers it, keeps it for an offline CleanSession=0 session and redelivers what was not
//! acknowledged. A CleanSession=1 connection discards the core's session, so its unacknowledged
//! messages wait in the hub again.

use std::collections::{BTreeMap, VecDeque};

use crate::iothub::properties::encode_pairs;

/// The most messages a device may have waiting (IoT Hub: 50).
pub const MAX_QUEUE_DEPTH: usize = 50;
/// The largest C2D message body (IoT Hub: 64 KB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A cloud-to-device message as the service side sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudMessage {
    pub payload: Vec<u8>,
    /// `$.mid`; the hub makes one up when absent.
    pub message_id: Option<String>,
    /// `$.cid`
    pub correlation_id: Option<String>,
    /// `$.uid`
    pub user_id: Option<String>,
    /// `$.ct`
    pub content_type: Option<String>,
    /// `$.ce`
    pub content_encoding: Option<String>,
    /// `iothub-ack`: `none`, `positive`, `negative` or `full` (fakehub sends no feedback messages).
    pub ack: Option<String>,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
}

impl CloudMessage {
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        CloudMessage {
            payload: payload.into(),
            ..Default::default()
        }
    }

    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = Some(ct.into());
        self
    }

    pub fn content_encoding(mut self, ce: impl Into<String>) -> Self {
        self.content_encoding = Some(ce.into());
        self
    }

    pub fn ack(mut self, ack: impl Into<String>) -> Self {
        self.ack = Some(ack.into());
        self
    }

    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The device-bound topic of this message for `device_id`, with message id `message_id`.
    pub fn topic(&self, device_id: &str, message_id: &str) -> String {
        let to = format!("/devices/{device_id}/messages/devicebound");
        let system = [
            ("$.mid", Some(message_id)),
            ("$.to", Some(to.as_str())),
            ("$.cid", self.correlation_id.as_deref()),
            ("$.uid", self.user_id.as_deref()),
            ("$.ct", self.content_type.as_deref()),
            ("$.ce", self.content_encoding.as_deref()),
            ("iothub-ack", self.ack.as_deref()),
        ];
        let system = system.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        let application = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        format!(
            "devices/{device_id}/messages/devicebound/{}",
            encode_pairs(system.chain(application))
        )
    }
}

/// A message id in the form IoT Hub generates them (a random UUID).
pub fn new_message_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (b[8] & 0x3),
        &hex[17..20],
        &hex[20..32]
    )
}

/// A message in a device's queue: ready to publish into the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub message_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// One device's undelivered C2D messages.
#[derive(Debug, Default)]
pub struct DeviceQueue {
    /// Waiting in the hub: the device's session has no C2D subscription.
    held: VecDeque<Queued>,
    /// In the core, not yet acknowledged by the device.
    routed: VecDeque<Queued>,
    /// Whether the device's session in the core has a C2D subscription.
    subscribed: bool,
}

/// What the queue says about a new message.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Publish it into the core now.
    Route(Queued),
    /// It waits in the hub until the device subscribes.
    Held,
}

impl DeviceQueue {
    /// Messages not yet acknowledged by the device.
    pub fn depth(&self) -> usize {
        self.held.len() + self.routed.len()
    }

    /// Take a new message, or refuse it (the queue is full) and give it back.
    pub fn admit(&mut self, message: Queued) -> Result<Admit, Queued> {
        if self.depth() >= MAX_QUEUE_DEPTH {
            return Err(message);
        }
        if self.subscribed {
            self.routed.push_back(message.clone());
            Ok(Admit::Route(message))
        } else {
            self.held.push_back(message);
            Ok(Admit::Held)
        }
    }

    /// The device acknowledged `message_id`; true if it was waiting.
    pub fn complete(&mut self, message_id: &str) -> bool {
        match self.routed.iter().position(|m| m.message_id == message_id) {
            Some(i) => {
                self.routed.remove(i);
                true
            }
            None => false,
        }
    }

    /// The session now has a C2D subscription: everything held goes to the core, in order.
    pub fn subscribed(&mut self) -> Vec<Queued> {
        self.subscribed = true;
        let flushed: Vec<Queued> = self.held.drain(..).collect();
        self.routed.extend(flushed.iter().cloned());
        flushed
    }

    /// The core forgot the session's C2D subscription and what it held (CleanSession=1, or an
    /// UNSUBSCRIBE): unacknowledged messages wait in the hub again, oldest first.
    pub fn session_lost(&mut self) {
        self.subscribed = false;
        let routed = std::mem::take(&mut self.routed);
        for m in routed.into_iter().rev() {
            self.held.push_front(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::properties::PropertyBag;

    fn q(id: &str) -> Queued {
        Queued {
            message_id: id.to_owned(),
            topic: format!("t/{id}"),
            payload: Vec::new(),
        }
    }

    #[test]
    fn topic_in_the_hubs_order_and_encoding() {
        let m = CloudMessage::new("hi")
            .correlation_id("c 1")
            .content_type("application/json")
            .content_encoding("utf-8")
            .ack("full")
            .property("b", "x/y")
            .property("a", "");
        let t = m.topic("dev-1", "m-1");
        assert_eq!(
            t,
            "devices/dev-1/messages/devicebound/%24.mid=m-1&%24.to=%2Fdevices%2Fdev-1%2Fmessages%2Fdevicebound&%24.cid=c%201&%24.ct=application%2Fjson&%24.ce=utf-8&iothub-ack=full&a=&b=x%2Fy"
        );
        let bag = PropertyBag::parse(t.rsplit_once('/').unwrap().1);
        assert_eq!(bag.message_id(), Some("m-1"));
        assert_eq!(bag.application["b"], "x/y");
    }

    #[test]
    fn generated_ids_look_like_uuids() {
        let a = new_message_id();
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_message_id());
    }

    #[test]
    fn held_until_subscribed_then_routed_in_order() {
        let mut d = DeviceQueue::default();
        assert_eq!(d.admit(q("1")), Ok(Admit::Held));
        assert_eq!(d.admit(q("2")), Ok(Admit::Held));
        assert_eq!(d.subscribed(), vec![q("1"), q("2")]);
        assert_eq!(d.admit(q("3")), Ok(Admit::Route(q("3"))));
        assert!(d.complete("1"));
        assert!(!d.complete("1"), "once");
        assert_eq!(d.depth(), 2);
        d.session_lost();
        assert_eq!(d.admit(q("4")), Ok(Admit::Held));
        assert_eq!(d.subscribed(), vec![q("2"), q("3"), q("4")]);
    }

    #[test]
    fn the_51st_is_refused_and_space_comes_back_with_acks() {
        let mut d = DeviceQueue::default();
        d.subscribed();
        for i in 0..MAX_QUEUE_DEPTH {
            assert!(d.admit(q(&i.to_string())).is_ok());
        }
        assert_eq!(d.admit(q("x")), Err(q("x")));
        assert!(d.complete("0"));
        assert!(d.admit(q("x")).is_ok());
    }
}
