//! `hub_down`: a hub fails after devices were assigned to it. Its live device connections are
//! dropped, new CONNECTs are refused as in an `outage` (`mode`), and the provisioning service
//! takes the hub out of rotation: hashed allocation assigns no device there until the fault ends
//! (an operator failing the hub over; DPS itself does not watch hub health, and `static`
//! allocation keeps assigning it). A device must retry, or re-provision to get another hub, as its
//! policy says.

use serde::{Deserialize, Serialize};

use super::outage::{Outage, OutageMode};
use super::unit::{ConnectAttempt, ConnectVerdict, FaultUnit};
use super::wire::close_selected;
use super::{Context, Spec, Started};
use crate::events::CloseCause;
use crate::sessions::WireClose;

fn connack3() -> OutageMode {
    OutageMode::Connack3
}

/// The hub fails: drop its connections, refuse new ones, leave DPS's rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HubDown {
    /// How new connections are refused (default `connack3`; `refuse_tcp` also refuses the
    /// provisioning connections that come to this hub's listener).
    #[serde(default = "connack3")]
    pub mode: OutageMode,
}

impl Default for HubDown {
    fn default() -> Self {
        HubDown { mode: connack3() }
    }
}

impl Spec for HubDown {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(*self)
    }
}

impl FaultUnit for HubDown {
    fn started(&self, ctx: &Context, fault: &Started<'_>, matches: &dyn Fn(&str) -> bool) {
        close_selected(ctx, fault, matches, WireClose::Rst, CloseCause::Fault, None);
    }

    fn refuses_tcp(&self) -> bool {
        Outage::from(self.mode).refuses_tcp()
    }

    fn on_connect(&self, attempt: &ConnectAttempt<'_>) -> ConnectVerdict {
        Outage::from(self.mode).on_connect(attempt)
    }

    fn unlinks_hub(&self) -> bool {
        true
    }
}
