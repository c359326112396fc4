//! `connack`: how new CONNECTs are answered — late (IoT Hub's traffic shaping), never, or with a
//! refusal code.

use std::time::Duration;

use fakehub_protocol::ResultCode;
use serde::{Deserialize, Serialize};

use super::unit::{ConnectAttempt, ConnectVerdict, FaultUnit};
use super::Spec;

/// What a `connack` fault does to new CONNECTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Connack {
    /// Answer after a delay (virtual elapsed time).
    Delay {
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Never answer: record 500008 when the device gives up.
    Withhold,
    /// Answer with this return code (1–5): 3 → record 500001, 4/5 → 401003, unless `result` says.
    Refuse {
        code: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<u32>")]
        result: Option<ResultCode>,
    },
}

impl Spec for Connack {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(*self)
    }
}

impl FaultUnit for Connack {
    fn on_connect(&self, _attempt: &ConnectAttempt<'_>) -> ConnectVerdict {
        match *self {
            Connack::Delay { delay } => ConnectVerdict::Delay(delay),
            Connack::Withhold => ConnectVerdict::Hang {
                result: ResultCode::GenericTimeout,
                reason: "CONNACK withheld: the CONNECT timed out".into(),
            },
            Connack::Refuse { code, result } => ConnectVerdict::Refuse {
                code,
                result: result.unwrap_or(if code == 3 {
                    ResultCode::ServerError
                } else {
                    ResultCode::IoTHubUnauthorized
                }),
                reason: format!("CONNACK {code} by fault"),
            },
        }
    }
}
