//! Cloud-to-device messages: what the service side sends, how the hub writes it onto the device's
//! topic, and each device's queue.
//!
//! The hub delivers C2D on `devices/{id}/messages/devicebound/{property bag}` at QoS 1. The bag holds
//! the system properties in the order real hubs write them (`$.mid`, `$.to`, `$.cid`, `$.uid`,
//! `$.ct`, `$.ce`, `iothub-ack`; captures in research §4.2 and Microsoft's mosquitto walkthrough),
//! then the application properties, all percent-encoded.
//!
//! A device's queue (kept by `crate::sessions`) holds every message it has not acknowledged, at
//! most [`MAX_QUEUE_DEPTH`]; one more is refused with 403004 DeviceMaximumQueueDepthExceeded.

use std::collections::BTreeMap;

use fakehub_protocol::properties::encode_pairs;
use rand::Rng;

pub use crate::sessions::MAX_QUEUE_DEPTH;
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

/// A message id in the form IoT Hub generates them (a random UUID, drawn from `rng`).
pub fn new_message_id(rng: &mut impl Rng) -> String {
    let b: [u8; 16] = rng.random();
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

#[cfg(test)]
mod tests {
    use super::*;
    use fakehub_protocol::properties::PropertyBag;

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
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = new_message_id(&mut rng);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_message_id(&mut rng));
        let mut again = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(a, new_message_id(&mut again), "the same seed, the same ids");
    }
}
