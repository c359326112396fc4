//! `outage`: the hub refuses new connections for a while — TCP reset, CONNACK 3, or no answer.
//! With `mass_drop` it reproduces the third cause of 404104: a transient fault of the hub.

use fakehub_protocol::ResultCode;
use serde::{Deserialize, Serialize};

use super::unit::{ConnectAttempt, ConnectVerdict, FaultUnit};
use super::Spec;

/// How new connections are refused during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// TCP connections are reset at once (the device sees "connection refused/reset").
    RefuseTcp,
    /// CONNECT is answered with CONNACK 3 (server unavailable): record 500001.
    Connack3,
    /// CONNECT is never answered; the connection is held until the device gives up: record 500008.
    Hang,
}

/// Refuse new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outage {
    pub mode: OutageMode,
}

impl From<OutageMode> for Outage {
    fn from(mode: OutageMode) -> Outage {
        Outage { mode }
    }
}

impl Spec for Outage {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(*self)
    }
}

impl FaultUnit for Outage {
    fn refuses_tcp(&self) -> bool {
        self.mode == OutageMode::RefuseTcp
    }

    fn on_connect(&self, _attempt: &ConnectAttempt<'_>) -> ConnectVerdict {
        match self.mode {
            OutageMode::RefuseTcp => ConnectVerdict::Proceed,
            OutageMode::Connack3 => ConnectVerdict::Refuse {
                code: 3,
                result: ResultCode::ServerError,
                reason: "the hub is in an outage (server unavailable)".into(),
            },
            OutageMode::Hang => ConnectVerdict::Hang {
                result: ResultCode::GenericTimeout,
                reason: "the hub is in an outage: the CONNECT timed out".into(),
            },
        }
    }
}
