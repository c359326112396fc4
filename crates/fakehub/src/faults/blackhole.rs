//! `blackhole`: the hub stops reading and writing but keeps TCP open, so only its keep-alive
//! timeout can end the connection (the "network went quiet" cause of 404104).

use serde::{Deserialize, Serialize};

use super::unit::{ConnectionHook, FaultUnit};
use super::Spec;

/// Stop reading and writing, keep TCP open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Blackhole {}

struct Silent;

impl ConnectionHook for Silent {
    fn reads(&self) -> bool {
        false
    }

    fn writes(&self) -> bool {
        false
    }
}

impl Spec for Blackhole {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for Blackhole {
    fn attach(&self, _client_id: &str) -> Option<Box<dyn ConnectionHook>> {
        Some(Box::new(Silent))
    }
}
