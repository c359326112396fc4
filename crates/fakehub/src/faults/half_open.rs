//! `half_open`: the hub stops reading from the device but keeps writing to it. The kernel still
//! acknowledges the device's bytes until its receive buffer fills, so the device sees a healthy
//! TCP connection and whatever the hub sends (C2D, methods), yet none of its PUBLISHes or
//! PINGREQs are answered: a client that only trusts TCP never notices; one that waits for its
//! PINGRESP does, and the hub's keep-alive ends it otherwise.

use serde::{Deserialize, Serialize};

use super::unit::{ConnectionHook, FaultUnit};
use super::Spec;

/// Stop reading, keep writing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HalfOpen {}

struct Deaf;

impl ConnectionHook for Deaf {
    fn reads(&self) -> bool {
        false
    }
}

impl Spec for HalfOpen {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for HalfOpen {
    fn attach(&self, _client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        Some(Box::new(Deaf))
    }
}
