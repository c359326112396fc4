//! Faults that change an identity in the registry: `disable`, `rotate_key`, and `clock_skew` (the
//! device's clock, as its tokens show it).

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::unit::FaultUnit;
use super::{Context, Spec, Started};
use crate::registry::{IdentityRef, SymmetricKeys};

/// Disable the identity: live connections close, new ones get CONNACK 3 until the fault ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Disable {}

struct DisableUnit {
    /// The identities this fault disabled (and so re-enables at its end).
    disabled: Mutex<Vec<IdentityRef>>,
}

impl Spec for Disable {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(DisableUnit {
            disabled: Mutex::new(Vec::new()),
        })
    }
}

impl FaultUnit for DisableUnit {
    fn started(&self, ctx: &Context, _fault: &Started<'_>, matches: &dyn Fn(&str) -> bool) {
        let mut disabled = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        for client in ctx.registry.client_ids().iter().filter(|c| matches(c)) {
            let who = IdentityRef::from_client_id(client);
            // Only what was enabled: a device disabled before the fault stays disabled after it.
            if ctx.registry.identity(&who).is_some_and(|i| i.enabled)
                && ctx.services.set_enabled(&who, false)
            {
                disabled.push(who);
            }
        }
    }

    fn ended(&self, ctx: &Context) {
        let disabled =
            std::mem::take(&mut *self.disabled.lock().unwrap_or_else(|p| p.into_inner()));
        for who in disabled {
            ctx.services.set_enabled(&who, true);
        }
    }
}

/// Replace the identity's keys: tokens signed with the old key are refused from now on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RotateKey {}

impl Spec for RotateKey {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for RotateKey {
    fn one_shot(&self) -> bool {
        true
    }

    fn started(&self, ctx: &Context, _fault: &Started<'_>, matches: &dyn Fn(&str) -> bool) {
        for client in ctx.registry.client_ids().iter().filter(|c| matches(c)) {
            ctx.registry
                .update(&IdentityRef::from_client_id(client), |i| {
                    i.keys = SymmetricKeys::generate()
                });
        }
    }
}

/// The device's clock is this much behind the hub: its tokens are judged as if minted on that
/// clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClockSkew {
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub behind: Duration,
}

impl Spec for ClockSkew {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for ClockSkew {
    fn clock_behind(&self) -> Option<Duration> {
        Some(self.behind)
    }
}
