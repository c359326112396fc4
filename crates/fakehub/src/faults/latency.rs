//! `latency`: every packet waits, in each direction, before it is handled or sent.

use std::time::Duration;

use rumqttc::mqttbytes::v4 as mq;
use serde::{Deserialize, Serialize};

use super::unit::{ConnectionHook, FaultUnit, PacketVerdict};
use super::Spec;

/// Delay each packet in each direction (virtual elapsed time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Latency {
    #[schemars(with = "String")]
    #[serde(default, with = "humantime_serde")]
    pub inbound: Duration,
    #[schemars(with = "String")]
    #[serde(default, with = "humantime_serde")]
    pub outbound: Duration,
}

fn delay(d: Duration) -> PacketVerdict {
    if d.is_zero() {
        PacketVerdict::Pass
    } else {
        PacketVerdict::Delay(d)
    }
}

impl ConnectionHook for Latency {
    fn inbound(&mut self, _packet: &mq::Packet) -> PacketVerdict {
        delay(self.inbound)
    }

    fn outbound(&mut self, _packet: &mq::Packet) -> PacketVerdict {
        delay(self.outbound)
    }
}

impl Spec for Latency {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for Latency {
    fn attach(&self, _client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        Some(Box::new(self.clone()))
    }
}
