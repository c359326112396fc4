//! Faults that withhold or hold back one kind of packet: `drop_pingresp`, `drop_puback`,
//! `delay_suback`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

use super::unit::{ConnectionHook, FaultUnit, PacketVerdict};
use super::Spec;

/// Withhold PINGRESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DropPingresp {}

struct NoPingresp;

impl ConnectionHook for NoPingresp {
    fn outbound(&mut self, packet: &mq::Packet) -> PacketVerdict {
        match packet {
            mq::Packet::PingResp => PacketVerdict::Withhold,
            _ => PacketVerdict::Pass,
        }
    }
}

impl Spec for DropPingresp {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for DropPingresp {
    fn attach(&self, _client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        Some(Box::new(NoPingresp))
    }
}

/// Which PUBACKs to withhold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DropPuback {
    /// Only the nth PUBACK (1-based) of each selected device after the fault starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u32>,
    /// Only PUBACKs for publishes whose topic contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// At most this many per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// PUBACKs seen and withheld, per device.
type Counts = Arc<Mutex<BTreeMap<String, (u32, u32)>>>;

struct DropPubackUnit {
    rule: DropPuback,
    counts: Counts,
}

struct PubackFilter {
    rule: DropPuback,
    counts: Counts,
    client_id: String,
    /// Topics of the device's QoS 1 publishes awaiting their PUBACK, by packet id.
    topics: BTreeMap<u16, String>,
}

impl ConnectionHook for PubackFilter {
    fn inbound(&mut self, packet: &mq::Packet) -> PacketVerdict {
        if let mq::Packet::Publish(p) = packet {
            if p.qos == QoS::AtLeastOnce && self.rule.topic.is_some() {
                self.topics.insert(p.pkid, p.topic.clone());
            }
        }
        PacketVerdict::Pass
    }

    fn outbound(&mut self, packet: &mq::Packet) -> PacketVerdict {
        let mq::Packet::PubAck(ack) = packet else {
            return PacketVerdict::Pass;
        };
        let topic = self.topics.remove(&ack.pkid).unwrap_or_default();
        if self
            .rule
            .topic
            .as_deref()
            .is_some_and(|t| !topic.contains(t))
        {
            return PacketVerdict::Pass;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, dropped) = counts.entry(self.client_id.clone()).or_default();
        *seen = seen.saturating_add(1);
        let hit = self.rule.nth.is_none_or(|n| *seen == n)
            && self.rule.count.is_none_or(|c| *dropped < c);
        if hit {
            *dropped = dropped.saturating_add(1);
            PacketVerdict::Withhold
        } else {
            PacketVerdict::Pass
        }
    }
}

impl Spec for DropPuback {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(DropPubackUnit {
            rule: self.clone(),
            counts: Counts::default(),
        })
    }
}

impl FaultUnit for DropPubackUnit {
    fn attach(&self, client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        Some(Box::new(PubackFilter {
            rule: self.rule.clone(),
            counts: self.counts.clone(),
            client_id: client_id.to_owned(),
            topics: BTreeMap::new(),
        }))
    }
}

/// Hold SUBACKs back for this long (virtual elapsed time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DelaySuback {
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

struct SlowSuback(Duration);

impl ConnectionHook for SlowSuback {
    fn outbound(&mut self, packet: &mq::Packet) -> PacketVerdict {
        match packet {
            mq::Packet::SubAck(_) => PacketVerdict::Delay(self.0),
            _ => PacketVerdict::Pass,
        }
    }
}

impl Spec for DelaySuback {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for DelaySuback {
    fn attach(&self, _client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        Some(Box::new(SlowSuback(self.delay)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puback(pkid: u16) -> mq::Packet {
        mq::Packet::PubAck(mq::PubAck::new(pkid))
    }

    fn publish(pkid: u16, topic: &str) -> mq::Packet {
        let mut p = mq::Publish::new(topic, QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        mq::Packet::Publish(p)
    }

    #[test]
    fn drop_puback_nth_topic_count() {
        let unit = DropPuback {
            nth: Some(2),
            topic: None,
            count: None,
        }
        .build();
        let mut hook = unit.attach("d1").expect("a hook");
        let drops: Vec<PacketVerdict> = (1..=4).map(|i| hook.outbound(&puback(i))).collect();
        use PacketVerdict::{Pass, Withhold};
        assert_eq!(drops, [Pass, Withhold, Pass, Pass]);

        let unit = DropPuback {
            nth: None,
            topic: Some("seq=".into()),
            count: Some(2),
        }
        .build();
        let mut hook = unit.attach("d1").expect("a hook");
        let drops: Vec<PacketVerdict> = ["a", "x seq=1", "x seq=2", "x seq=3"]
            .iter()
            .zip(1u16..)
            .map(|(t, pkid)| {
                hook.inbound(&publish(pkid, t));
                hook.outbound(&puback(pkid))
            })
            .collect();
        assert_eq!(drops, [Pass, Withhold, Withhold, Pass]);
        // The count is per device, across its connections.
        let mut again = unit.attach("d1").expect("a hook");
        again.inbound(&publish(9, "x seq=4"));
        assert_eq!(again.outbound(&puback(9)), Pass);
    }
}
