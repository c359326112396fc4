//! Faults that end live connections on the wire: `reset`, `close`, `mass_drop`, `takeover`.

use fakehub_protocol::ResultCode;
use serde::{Deserialize, Serialize};

use super::unit::FaultUnit;
use super::{Context, Spec, Started};
use crate::events::CloseCause;
use crate::sessions::CloseRequest;
use crate::WireClose;

/// Close every selected live connection the way `wire` says.
pub(super) fn close_selected(
    ctx: &Context,
    fault: &Started<'_>,
    matches: &dyn Fn(&str) -> bool,
    wire: WireClose,
    cause: CloseCause,
    result: Option<ResultCode>,
) {
    let request = CloseRequest {
        wire,
        cause,
        detail: fault.detail(),
        result,
    };
    ctx.sessions.close_where(matches, &request);
}

/// TCP reset: zero linger, no DISCONNECT, no TLS close_notify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reset {
    /// The IoT Hub code to log before the 404104 (default: none, a plain 404104).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u32>")]
    pub result: Option<ResultCode>,
}

/// TLS close_notify then FIN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Close {
    /// The IoT Hub code to log before the 404104 (default: none, a plain 404104).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u32>")]
    pub result: Option<ResultCode>,
}

/// Drop the selected live connections at once (a transient fault of the hub).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MassDrop {
    /// Reset (true) instead of close.
    #[serde(default)]
    pub rst: bool,
}

/// A second connection with the same identity: the live one is closed (400027).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Takeover {}

macro_rules! one_shot_close {
    ($ty:ty, |$f:ident| ($wire:expr, $cause:expr, $result:expr)) => {
        impl Spec for $ty {
            fn build(&self) -> Box<dyn FaultUnit> {
                Box::new(self.clone())
            }
        }

        impl FaultUnit for $ty {
            fn one_shot(&self) -> bool {
                true
            }

            fn started(&self, ctx: &Context, fault: &Started<'_>, matches: &dyn Fn(&str) -> bool) {
                let $f = self;
                close_selected(ctx, fault, matches, $wire, $cause, $result);
            }
        }
    };
}

one_shot_close!(Reset, |f| (WireClose::Rst, CloseCause::Fault, f.result));
one_shot_close!(Close, |f| (WireClose::Fin, CloseCause::Fault, f.result));
one_shot_close!(MassDrop, |f| (
    if f.rst {
        WireClose::Rst
    } else {
        WireClose::Fin
    },
    CloseCause::Fault,
    None
));
one_shot_close!(Takeover, |_f| (WireClose::Fin, CloseCause::Takeover, None));
