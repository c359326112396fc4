//! `session_loss`: the hub loses session state (as in a failover). CONNECTs while it lasts start
//! clean (`sessionPresent=0`, no subscriptions, nothing in flight), whatever CleanSession says.

use serde::{Deserialize, Serialize};

use super::unit::FaultUnit;
use super::Spec;

/// CONNECTs start clean while it lasts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionLoss {}

impl Spec for SessionLoss {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for SessionLoss {
    fn forces_clean_session(&self) -> bool {
        true
    }
}
